"""dispatcher.d/90-nmfailover under the real nm-dispatcher of the sandbox: link events reach the daemon as
re-checks within a second, hostile profile names stay data, and the hook returns at once when the daemon is
stopped or the bus hangs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon
from tests.operate import HOOK, first_line, log_time, policed_lab


class Stamps:
    """Scripts around the hook that note when the dispatcher ran it: `before`/`after` ACTION IFACE [ID]."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.log = log
        for name, when in (("00-stamp", "before"), ("99-stamp", "after")):
            script = directory / name
            script.write_text(f'#!/bin/sh\necho "$(date +%s.%N) {when} $2 $1 [$CONNECTION_ID]" >> {log}\n')
            script.chmod(0o755)

    def lines(self) -> list[tuple[float, str]]:
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return []
        return [(float(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in text.splitlines()]

    def at(self, entry: str, after: float = 0.0) -> float:
        """When the dispatcher reached `entry` (e.g. "before down wanb [backup]") after time `after`."""
        found: list[float] = []

        def seen() -> bool:
            found[:] = [t for t, line in self.lines() if line == entry and t >= after]
            return bool(found)

        wait_for(seen, 20, f"dispatcher event {entry!r}")
        return found[0]


@pytest.fixture
def dispatched(lab_machine: None) -> Iterator[tuple[NMLab, Stamps]]:
    # Root-owned and not writable by others, or nm-dispatcher refuses to run it.
    directory = Path(tempfile.mkdtemp(prefix=f"nmfo-{os.getpid()}-dispatcher-"))
    try:
        directory.chmod(0o755)
        shutil.copy(HOOK, directory / "90-nmfailover")
        (directory / "90-nmfailover").chmod(0o755)
        stamps = Stamps(directory, directory.with_name(directory.name + ".stamps"))
        with policed_lab(dispatcher_dir=directory) as lab:
            yield lab, stamps
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        Path(str(directory) + ".stamps").unlink(missing_ok=True)


def test_link_events_trigger_a_recheck_within_a_second(
    dispatched: tuple[NMLab, Stamps], tmp_path: Path
) -> None:
    lab, stamps = dispatched
    with running_daemon(lab, tmp_path / "daemon.log", failback_hold_down="1") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        latencies = {}
        for action, nmcli_verb in (("down", "down"), ("up", "up")):
            begun = time.time()
            lab.nmcli("connection", nmcli_verb, "backup")
            event = stamps.at(f"before {action} wanb [backup]", begun)
            daemon.wait_log(rf"re-check requested for wanb \({action} \(backup\)\)", 5)
            line = first_line(daemon.text(), rf"re-check requested for wanb \({action} \(backup\)\)")
            latencies[action] = log_time(line) - event
        lab.wait_activated()

        begun = time.time()
        lab.upstreams[0].cut_cable()  # NetworkManager notices the lost carrier only seconds later
        event = stamps.at("before down wana [primary]", begun)
        daemon.wait_log(r"re-check requested for wana \(down \(primary\)\)", 5)
        latencies["cable"] = log_time(first_line(daemon.text(), r"wana \(down \(primary\)\)")) - event
        print(f"dispatcher event -> daemon re-check: {latencies}")
        assert all(-0.01 < latency < 1 for latency in latencies.values()), latencies

        # The daemon's own switches cause `reapply` events; the hook must leave those alone.
        assert any(" reapply " in line for _, line in stamps.lines())
        assert "reapply" not in "".join(re.findall(r"re-check requested.*", daemon.text()))


def test_hostile_profile_names_are_only_data(dispatched: tuple[NMLab, Stamps], tmp_path: Path) -> None:
    lab, stamps = dispatched
    canary = tmp_path / "pwned"
    names = [
        f"$(touch {canary}1)",
        f"eth0; touch {canary}2",
        f"`touch {canary}3`",
        f"x' \"; touch {canary}4 #",
    ]
    with running_daemon(lab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        current = "backup"
        for name in names:
            lab.nmcli("connection", "modify", current, "connection.id", name)
            current = name
            begun = time.time()
            lab.nmcli("connection", "down", name)
            lab.nmcli("connection", "up", name)
            stamps.at(f"after up wanb [{name}]", begun)
            daemon.wait_log(re.escape(f"re-check requested for wanb (up ({name}))"), 5)
        assert not list(tmp_path.glob("pwned*")), "a profile name was run as a command"
        assert daemon.proc.poll() is None


def _bus_daemon_pid(lab: NMLab) -> int:
    config = str(lab.workdir / "nm" / "bus.conf")
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if argv[0].endswith(b"dbus-daemon") and f"--config-file={config}".encode() in argv:
            return int(proc.name)
    raise AssertionError("the lab's dbus-daemon is not running")


def test_the_hook_returns_at_once_without_a_daemon_or_with_a_hung_bus(
    dispatched: tuple[NMLab, Stamps],
) -> None:
    lab, stamps = dispatched
    # Through the real dispatcher with no daemon running: the event's scripts finish at once.
    begun = time.time()
    lab.nmcli("connection", "down", "backup")
    took = stamps.at("after down wanb [backup]", begun) - stamps.at("before down wanb [backup]", begun)
    assert took < 0.5, f"the dispatcher spent {took:.2f} s on the hook"

    env = dict(lab.env, CONNECTION_ID="backup", DEVICE_IP_IFACE="wanb")
    started = time.monotonic()
    result = lab.host(str(HOOK), "wanb", "up", env=env, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert time.monotonic() - started < 0.5

    # A bus that accepts connections but never answers: the hook gives up at its 2 s bound, still exit 0.
    bus = _bus_daemon_pid(lab)
    os.kill(bus, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = lab.host(str(HOOK), "wanb", "up", env=env, check=False, timeout=10)
        took = time.monotonic() - started
    finally:
        os.kill(bus, signal.SIGCONT)
    assert result.returncode == 0 and took < 3.5, f"exit {result.returncode} after {took:.1f} s"
    assert lab.host(str(HOOK), "wanb", "reapply", env=env, check=False).returncode == 0
