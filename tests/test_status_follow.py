"""`nmfailover status --follow`: the line a status bar reads (a pure table), and the stream end to end
against the real daemon in the lab: waiting for a daemon that is not there yet, a line at start, the line
after a failover naming the backup, no line repeated, SIGINT and a closed pipe ending it cleanly."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from nmfailover.follow import StatusLine
from nmfailover.lab.sandbox import NMLab
from nmfailover.status import LastSwitch, Status, UplinkStatus
from tests import status_samples as samples
from tests.daemon import running_daemon


def uplink(role: str, health: str = "up", carrying: bool = False, metered: str | None = "no") -> UplinkStatus:
    # latency_ms changes every round: never part of the line
    return samples.uplink(role, health=health, carrying_traffic=carrying, metered=metered, latency_ms=12.5)


def status(*uplinks: UplinkStatus, last: LastSwitch | None = None, at: float | None = None) -> Status:
    return samples.status(*uplinks, last_switch_at=at, last_switch=last, hold_down_remaining=12.3)


FAILOVER = LastSwitch(action="failover", from_role="primary", to="backup", reason="primary (eth0) is down")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            status(uplink("primary", carrying=True), uplink("backup", metered="yes")),
            {"carrying": "primary", "device": "wan-primary", "metered": False, "last_switch": None},
            id="on-primary",
        ),
        pytest.param(
            status(
                uplink("primary", "down"),
                uplink("backup", carrying=True, metered="guess-yes"),
                last=FAILOVER,
                at=1.5,
            ),
            {
                "carrying": "backup",
                "device": "wan-backup",
                "metered": True,
                "last_switch": {
                    "at": 1.5,
                    "action": "failover",
                    "from": "primary",
                    "to": "backup",
                    "reason": FAILOVER.reason,
                },
            },
            id="failed-over-to-metered",
        ),
        pytest.param(
            status(uplink("primary", "unknown"), uplink("backup", "unknown", metered=None)),
            {"carrying": None, "device": None, "metered": False, "last_switch": None},
            id="starting",
        ),
        pytest.param(
            # A daemon from before `last_switch`: the time alone.
            status(uplink("primary", carrying=True), uplink("backup"), at=2.0),
            {
                "carrying": "primary",
                "device": "wan-primary",
                "metered": False,
                "last_switch": {"at": 2.0, "action": None, "from": None, "to": None, "reason": None},
            },
            id="older-daemon",
        ),
    ],
)
def test_the_line_holds_what_a_bar_shows(document: Status, expected: dict[str, Any]) -> None:
    line = json.loads(StatusLine.from_status(document).to_json())
    assert {key: line[key] for key in expected} == expected
    assert [u["role"] for u in line["uplinks"]] == ["primary", "backup"]
    assert set(line["uplinks"][0]) == {"role", "profile", "device", "health", "carrying_traffic", "metered"}


@pytest.mark.parametrize(
    ("document", "text", "css"),
    [
        (status(uplink("primary", carrying=True), uplink("backup")), "primary (wan-primary)", ["primary"]),
        (
            status(uplink("primary", "down"), uplink("backup", carrying=True, metered="yes")),
            "backup (wan-backup), metered",
            ["backup", "metered", "trouble"],
        ),
        (status(uplink("primary", "down"), uplink("backup", "portal")), "no uplink", ["none", "trouble"]),
    ],
)
def test_waybar_fields(document: Status, text: str, css: list[str]) -> None:
    line = json.loads(StatusLine.from_status(document).to_json())
    assert (line["text"], line["class"]) == (text, css)
    assert line["tooltip"].splitlines()[0].startswith("primary (wan-primary): ")


def test_what_changes_by_itself_never_makes_a_new_line() -> None:
    before = status(uplink("primary", carrying=True), uplink("backup"))
    later = status(uplink("primary", carrying=True), uplink("backup"))
    primary, backup = later.uplinks
    later = later.model_copy(
        update={
            "uplinks": (primary.model_copy(update={"latency_ms": 99.0}), backup),
            "hold_down_remaining": 0.0,
        }
    )
    assert StatusLine.from_status(before).to_json() == StatusLine.from_status(later).to_json()
    later = later.model_copy(
        update={"uplinks": (later.uplinks[0], backup.model_copy(update={"health": "down"}))}
    )
    assert StatusLine.from_status(before).to_json() != StatusLine.from_status(later).to_json()


BARS = Path(__file__).resolve().parent.parent / "packaging" / "bars"


def example_command(path: Path, key: str) -> str:
    return next(line.removeprefix(key) for line in path.read_text().splitlines() if line.startswith(key))


def test_bar_examples_run_the_stream() -> None:
    assert example_command(BARS / "i3blocks.conf", "command=").startswith("nmfailover status --follow |")
    assert example_command(BARS / "polybar.ini", "exec = ") == example_command(
        BARS / "i3blocks.conf", "command="
    )
    # Waybar reads JSON with comments: take them out, then it must be the module Waybar expects.
    text = "\n".join(
        line for line in (BARS / "waybar-config.jsonc").read_text().splitlines() if "//" not in line
    )
    module = json.loads(text)["custom/nmfailover"]
    assert (module["exec"], module["return-type"]) == ("nmfailover status --follow", "json")
    # Every class the style sheet names is one the line can carry.
    css = (BARS / "waybar-style.css").read_text()
    line = StatusLine.from_status(
        status(uplink("primary", "down"), uplink("backup", carrying=True, metered="yes"))
    )
    for name in re.findall(r"#custom-nmfailover\.([\w-]+)", css):
        assert name in (*line.css_class, "none", "fallback"), name


# -- the real daemon ---------------------------------------------------------------------------------------


class Stream:
    """A pipe of a subprocess read line by line on a thread of its own, so the test can wait with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.put(line)

    def next(self, timeout: float) -> str:
        line = self.lines.get(timeout=timeout)
        self.seen.append(line)
        return line


def follower(lab: NMLab, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "nmfailover", "status", "--follow", *args]
    return lab.popen_host(argv, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_stream_follows_a_real_failover(nmlab: NMLab, tmp_path: Path) -> None:
    # A minute between re-reads: every line here comes from the daemon's signals.
    bar = follower(nmlab, "--interval", "60")
    assert bar.stdout is not None and bar.stderr is not None
    out, err = Stream(bar.stdout), Stream(bar.stderr)
    waiting = err.next(timeout=15)
    assert "the daemon is not running" in waiting and "waiting for it" in waiting

    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        # The name is owned before the uplinks are probed: a line for that moment, then one for the first
        # rounds (looked for every second while the daemon starts, no signal needed).
        line = json.loads(out.next(timeout=10))
        while line["carrying"] != "primary":
            line = json.loads(out.next(timeout=5))
        assert [u["health"] for u in line["uplinks"]] == ["up", "up"] and line["class"] == ["primary"]

        # The i3blocks and polybar example, as shipped: the line's text through jq.
        i3blocks = nmlab.popen_host(
            ["sh", "-c", example_command(BARS / "i3blocks.conf", "command=")],
            env={**nmlab.env, "PATH": f"{Path(sys.executable).parent}:{nmlab.env['PATH']}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert i3blocks.stdout is not None
        texts = Stream(i3blocks.stdout)
        assert texts.next(timeout=10) == "primary (wana)\n"
        # A second bar that goes away: the next change ends it cleanly (a closed pipe).
        gone = follower(nmlab)
        assert gone.stdout is not None
        assert json.loads(gone.stdout.readline())["carrying"] == "primary"
        gone.stdout.close()

        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        moved = time.monotonic()
        while line["carrying"] == "primary":
            line = json.loads(out.next(timeout=5))
        print(f"line naming the backup {time.monotonic() - moved:.2f} s after the route moved")
        assert line["carrying"] == "backup" and line["device"] == "wanb"
        assert line["last_switch"]["action"] == "failover"
        assert (line["last_switch"]["from"], line["last_switch"]["to"]) == ("primary", "backup")
        assert [u["health"] for u in line["uplinks"]][0] == "down"
        assert gone.wait(timeout=15) == 0, gone.stderr.read() if gone.stderr else ""

        assert texts.next(timeout=5) == "backup (wanb)\n"
        i3blocks.terminate()
        i3blocks.wait(timeout=10)

        bar.send_signal(signal.SIGINT)
        assert bar.wait(timeout=10) == 0
    time.sleep(0.2)  # the reader threads take the rest
    lines = out.seen + list(out.lines.queue)
    print("".join(lines))
    assert all(a != b for a, b in zip(lines, lines[1:], strict=False)), "a line repeated"
    assert len(err.seen + list(err.lines.queue)) == 1, "the wait said more than once"
