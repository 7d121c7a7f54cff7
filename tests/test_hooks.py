"""Switch hooks, the failback guard and the webhook: the contract on its own, then end to end in the sandbox
(hooks recording what they get, a hung hook, a vetoing guard, webhook receivers in the upstream namespaces)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from nmfailover.config import EVENT_VARIABLES
from nmfailover.engine import SwitchEvent, UplinkView
from nmfailover.hooks import execute, hook_args, hook_env, untrusted
from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab, Upstream
from tests.daemon import running_daemon
from tests.operate import ROOT, cli, policed_lab

RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(sys.argv[0] + ".out", "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:],
                          "env": {{k: v for k, v in os.environ.items() if k.startswith("NMFAILOVER_")}}}}) + "\\n")
"""


def write_script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def records(path: Path) -> list[dict[str, object]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# -- the contract, without a lab ---------------------------------------------------------------------


UPLINKS = (
    UplinkView("primary", "fiber", "eth0", "192.0.2.1", "", ()),
    UplinkView("backup", "lte", "wwan0", "192.0.2.65", "2001:db8:b::1", ()),
    UplinkView("fallback", "phone", "wlan0", "192.0.2.129", "2001:db8:c::1", ()),
)


def _event(action: str, state: str, old: str, new: str) -> SwitchEvent:
    return SwitchEvent(action, state, old, new, "", "", "", "", "why", 0.0, UPLINKS)


@pytest.mark.parametrize(
    ("event", "args"),
    [
        (
            _event("failover", "BACKUP", "fiber", "lte"),
            ["BACKUP", "eth0", "192.0.2.1", "wwan0", "192.0.2.65", "2001:db8:b::1"],
        ),
        (
            _event("failback", "PRIMARY", "lte", "fiber"),
            ["PRIMARY", "eth0", "192.0.2.1", "wwan0", "192.0.2.65", "2001:db8:b::1"],
        ),
        (
            _event("failover", "FALLBACK", "lte", "phone"),
            ["FALLBACK", "eth0", "192.0.2.1", "wlan0", "192.0.2.129", "2001:db8:c::1"],
        ),
        (
            _event("failback", "PRIMARY", "phone", "fiber"),
            ["PRIMARY", "eth0", "192.0.2.1", "wlan0", "192.0.2.129", "2001:db8:c::1"],
        ),
        (
            _event("initial", "PRIMARY", "", "fiber"),
            ["PRIMARY", "eth0", "192.0.2.1", "wwan0", "192.0.2.65", "2001:db8:b::1"],
        ),
    ],
    ids=["failover", "failback", "to-fallback", "fallback-to-primary", "start-up"],
)
def test_astlinux_arguments(event: SwitchEvent, args: list[str]) -> None:
    assert hook_args(event.state, event) == args


def test_environment_names_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMFAILOVER_UPLINKS", "a,b")  # a setting: must not reach hooks
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    env = hook_env(_event("failover", "BACKUP", "fiber", "lte"))
    assert {k for k in env if k.startswith("NMFAILOVER_")} == EVENT_VARIABLES
    assert "NOTIFY_SOCKET" not in env and env["NMFAILOVER_AT"] == "1970-01-01T00:00:00.000+00:00"
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in EVENT_VARIABLES)


def test_untrusted_files_are_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a file to another owner")
    assert untrusted(write_script(tmp_path / "ok", "#!/bin/sh\n")) is None
    assert untrusted(write_script(tmp_path / "plain", "#!/bin/sh\n", 0o644)) == "not executable"
    assert untrusted(write_script(tmp_path / "open", "#!/bin/sh\n", 0o757)) == "writable by group or others"
    foreign = write_script(tmp_path / "foreign", "#!/bin/sh\n")
    os.chown(foreign, 65534, 65534)
    assert untrusted(foreign) == "owned by uid 65534, not root"
    assert untrusted(tmp_path) == "not a regular file"


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    script = write_script(
        tmp_path / "hang", f"#!/bin/sh\necho started\nsleep 300 &\necho $! > {tmp_path}/child\nwait\n"
    )
    started = time.monotonic()
    code, output = await execute(script, [], dict(os.environ), 0.5)
    assert code is None and output == "started\n" and time.monotonic() - started < 2
    child = int((tmp_path / "child").read_text())
    wait_for(lambda: not alive(child), 5, "the hook's child to die")


async def test_a_background_child_does_not_make_a_hook_look_hung(tmp_path: Path) -> None:
    script = write_script(tmp_path / "forks", "#!/bin/sh\nsleep 5 &\necho done\n")
    started = time.monotonic()
    assert await execute(script, [], dict(os.environ), 3) == (0, "done\n")
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "script",
    sorted((ROOT / "packaging" / "hooks.d").iterdir()) + [ROOT / "dispatcher.d" / "90-nmfailover"],
    ids=lambda p: p.name,
)
def test_shipped_scripts_are_valid_and_runnable(script: Path) -> None:
    mode = script.stat().st_mode
    assert mode & 0o111 and not mode & 0o022, oct(mode)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


# -- end to end ---------------------------------------------------------------------------------------


@pytest.fixture
def lab(lab_machine: None) -> Iterator[NMLab]:
    with policed_lab() as lab:
        yield lab


def test_hooks_get_the_documented_contract_and_a_hung_one_is_killed(lab: NMLab, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    hang = write_script(
        hooks / "10-hang",
        f"#!/bin/sh\necho $$ >> {tmp_path}/hang.pids\nsleep 300 &\necho $! >> {tmp_path}/hang.pids\nwait\n",
    )
    recorder = write_script(hooks / "20-record", RECORDER)
    canaries = []
    for name, mode in (("30-plain", 0o644), ("40-open", 0o757), ("50-foreign", 0o755)):
        canaries.append(tmp_path / f"{name}.ran")
        write_script(hooks / name, f"#!/bin/sh\ntouch {canaries[-1]}\n", mode)
    os.chown(hooks / "50-foreign", 65534, 65534)
    write_script(hooks / "20-record~", f"#!/bin/sh\ntouch {tmp_path}/backup-file.ran\n")

    with running_daemon(
        lab, tmp_path / "daemon.log", hooks_dir=str(hooks), hook_timeout="3", failback_hold_down="1"
    ) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        assert cli(lab, "test-failover", "--seconds", "1").returncode == 0
        started = time.monotonic()
        daemon.wait_route("wanb", timeout=3)
        # Switching goes on while the first switch's hook hangs (it is killed only at 3 s).
        daemon.wait_route("wana", timeout=3)
        assert time.monotonic() - started < 2.5
        wait_for(lambda: len(records(Path(f"{recorder}.out"))) == 2, 15, "both switches' hooks")
        daemon.wait_log(r"(?s)timed out after 3 s.*timed out after 3 s")

    first, second = records(Path(f"{recorder}.out"))
    assert first["argv"] == ["BACKUP", "wana", "192.0.2.1", "wanb", "192.0.2.65", "2001:db8:b::1"]
    env = first["env"]
    assert isinstance(env, dict)
    assert datetime.fromisoformat(env.pop("NMFAILOVER_AT")).timestamp() == pytest.approx(time.time(), abs=30)
    assert env == {
        "NMFAILOVER_STATE": "BACKUP",
        "NMFAILOVER_ACTION": "avoid",
        "NMFAILOVER_FROM": "primary",
        "NMFAILOVER_TO": "backup",
        "NMFAILOVER_FROM_DEVICE": "wana",
        "NMFAILOVER_DEVICE": "wanb",
        "NMFAILOVER_GATEWAY4": "192.0.2.65",
        "NMFAILOVER_GATEWAY6": "2001:db8:b::1",
        "NMFAILOVER_REASON": "avoiding primary (wana); moving to backup (wanb)",
    }
    assert second["argv"] == ["PRIMARY", "wana", "192.0.2.1", "wanb", "192.0.2.65", "2001:db8:b::1"]
    assert isinstance(second["env"], dict) and second["env"]["NMFAILOVER_ACTION"] == "failback"
    assert second["env"]["NMFAILOVER_GATEWAY6"] == "2001:db8:a::1"

    text = daemon.text()
    assert f"hook {hang} timed out after 3 s; killed it and its process group" in text
    pids = [int(p) for p in (tmp_path / "hang.pids").read_text().split()]
    assert len(pids) == 4 and not any(alive(pid) for pid in pids)
    for problem, name in (
        ("not executable", "30-plain"),
        ("writable by group or others", "40-open"),
        ("owned by uid 65534, not root", "50-foreign"),
    ):
        assert f"hook {hooks / name} skipped: {problem}" in text
    assert not any(c.exists() for c in canaries) and not (tmp_path / "backup-file.ran").exists()


def test_guard_keeps_the_backup_until_it_allows(lab: NMLab, tmp_path: Path) -> None:
    guard = write_script(
        tmp_path / "guard",
        f'#!/bin/sh\necho "$*" >> {tmp_path}/guard.log\n'
        f"[ -e {tmp_path}/hang ] && sleep 300\n[ -e {tmp_path}/allow ]\n",
    )
    (tmp_path / "hang").touch()
    with running_daemon(
        lab,
        tmp_path / "daemon.log",
        failback_guard=str(guard),
        failback_guard_timeout="1",
        failback_hold_down="1",
    ) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        lab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        assert not (tmp_path / "guard.log").exists(), "the guard is asked only before a failback"
        lab.upstreams[0].heal()
        daemon.wait_log(r"failback guard \S+ timed out after 1 s; that vetoes the failback for now", 20)
        assert lab.default_route(4) == "wanb"

        (tmp_path / "hang").unlink()
        daemon.wait_log(r"failback guard \S+ exited 1: failback to primary vetoed", 10)
        # Asked again a round (2 s) later, and vetoed again each time.
        wait_for(
            lambda: len((tmp_path / "guard.log").read_text().splitlines()) >= 3, 10, "the guard asked again"
        )
        assert lab.default_route(4) == "wanb"
        asked = (tmp_path / "guard.log").read_text().splitlines()
        assert len(asked) >= 3 and set(asked) == {"FAILBACK wana 192.0.2.1 wanb 192.0.2.65 2001:db8:b::1"}

        (tmp_path / "allow").touch()
        assert daemon.wait_route("wana", timeout=6) < 4
        assert daemon.proc.poll() is None


def _sink(lab: NMLab, up: Upstream, out: Path, port: int, *mode: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            up.netns,
            sys.executable,
            str(ROOT / "tests" / "webhook_sink.py"),
            str(out),
            str(port),
            *mode,
        ],
        stdin=subprocess.DEVNULL,
    )
    wait_for(lambda: Path(f"{out}.ready").exists() or proc.poll() is not None, 10, "the webhook sink")
    assert proc.poll() is None
    return proc


def test_webhook_posts_through_the_new_uplink_and_never_delays_a_switch(lab: NMLab, tmp_path: Path) -> None:
    primary, backup = lab.upstreams
    sinks = [
        _sink(lab, primary, tmp_path / "a.posts", 8080),
        _sink(lab, backup, tmp_path / "b.posts", 8080),
        _sink(lab, backup, tmp_path / "hung.posts", 8081, "hang"),
    ]
    try:
        with running_daemon(
            lab,
            tmp_path / "daemon.log",
            webhook_url="http://target1.test:8080/switch",
            failback_hold_down="1",
        ) as daemon:
            daemon.wait_log(r"ready: traffic on primary")
            assert cli(lab, "test-failover", "--seconds", "1").returncode == 0
            daemon.wait_route("wanb", timeout=3)
            daemon.wait_route("wana", timeout=4)
            wait_for(lambda: (tmp_path / "a.posts").exists(), 10, "the failback's webhook")
        # Both sinks answer at the same name and address; which one heard a switch shows its path.
        ((peer_b, body_b),) = (
            line.split("\t", 1) for line in (tmp_path / "b.posts").read_text().splitlines()
        )
        ((peer_a, body_a),) = (
            line.split("\t", 1) for line in (tmp_path / "a.posts").read_text().splitlines()
        )
        assert (peer_b, peer_a) == (backup.address4, primary.address4)
        posted = json.loads(body_b)
        assert {
            k: posted[k] for k in ("event", "action", "state", "from", "to", "device", "from_device")
        } == {
            "event": "switch",
            "action": "avoid",
            "state": "BACKUP",
            "from": "primary",
            "to": "backup",
            "device": "wanb",
            "from_device": "wana",
        }
        assert "avoiding primary" in posted["reason"] and posted["host"]
        assert datetime.fromisoformat(posted["at"]) <= datetime.fromisoformat(posted["sent_at"])
        assert json.loads(body_a)["action"] == "failback"

        with running_daemon(
            lab,
            tmp_path / "daemon2.log",
            webhook_url="http://203.0.113.10:8081/switch",
            failback_hold_down="1",
        ) as daemon:
            daemon.wait_log(r"ready: traffic on primary")
            assert cli(lab, "test-failover", "--seconds", "1").returncode == 0
            assert daemon.wait_route("wanb", timeout=3) < 1
            started = time.monotonic()
            daemon.wait_route("wana", timeout=4)
            assert time.monotonic() - started < 2, "a hung webhook delayed the failback"
            daemon.wait_log(
                r"webhook attempt 1 failed: no answer within 2 s \(via wanb\); retrying in 1 s", 5
            )
            assert daemon.proc.poll() is None
    finally:
        for sink in sinks:
            sink.kill()
            sink.wait(5)
