"""The exit codes the man page and the README document (docs.EXIT_STATUS) against what the commands do: every
documented cause is either run here, against a private D-Bus daemon or no bus at all, or named with the lab
test that runs it; a cause without either, or a run ending otherwise, fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nmfailover import cli, docs, manpage, system_files
from nmfailover.control import BUS_NAME
from nmfailover.notify import AGENT_NAME

# Owns the names given and then never answers: its event loop is blocked.
_SQUATTER = r"""
import asyncio, sys, time
from dbus_fast.aio import MessageBus

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    for name in sys.argv[2:]:
        await bus.request_name(name)
    print("owned", flush=True)
    time.sleep(120)

asyncio.run(main())
"""

# Causes only a real NetworkManager can stage: the lab test that ends the command with that code.
# (1, "") is also the output's reader gone: tests/test_cli.py::test_a_closed_pipe_ends_the_output_*.
IN_THE_LAB = {
    (0, "`check`"): "tests/test_cli.py::test_check_prints_a_table_and_exits_by_the_primary",
    (0, "`doctor`"): "tests/test_doctor.py::test_doctor_passes_on_a_complete_installation",
    (1, "`check`"): "tests/test_cli.py::test_check_prints_a_table_and_exits_by_the_primary",
    (1, "`run`"): "tests/test_control.py::test_second_instance_and_bad_calls_are_refused, "
    "tests/test_supervision.py::test_a_probe_loop_that_keeps_crashing_ends_the_daemon_non_zero_after_restoring",
    (2, "`prefer`"): "tests/test_control.py::test_prefer_pins_and_clear_releases",
    (4, ""): "tests/test_control.py::test_non_root_may_read_but_not_change",
    (0, "`status --follow`"): "tests/test_status_follow.py::test_the_stream_follows_a_real_failover",
}


def _documented() -> set[tuple[int, str]]:
    found = set()
    for status in docs.EXIT_STATUS:
        found |= {(status.code, commands) for commands, _ in status.causes} or {(status.code, "")}
    return found


@pytest.fixture(scope="module")
def private_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    socket = tmp_path_factory.mktemp("bus") / "socket"
    daemon = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address=unix:path={socket}"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert socket.exists(), "the private dbus-daemon did not start"
        yield f"unix:path={socket}"
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture()
def squatter(private_bus: str) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SQUATTER, private_bus, BUS_NAME, AGENT_NAME],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "owned\n"
        yield
    finally:
        proc.kill()
        proc.wait(10)


def _nmfailover(
    *argv: str, bus: str = "unix:path=/nonexistent/bus", path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": os.environ.get("PATH", "") if path is None else path,
        "NMFAILOVER_ENV_FILE": "",
        "NMFAILOVER_UPLINKS": "Fiber,Hotspot",
        "DBUS_SYSTEM_BUS_ADDRESS": bus,
        "DBUS_SESSION_BUS_ADDRESS": bus,
    }
    return subprocess.run(
        [sys.executable, "-m", "nmfailover", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_every_documented_cause_is_run_here_or_in_the_lab() -> None:
    run_here = {(code, commands) for code, commands, *_ in RUNS}
    assert run_here | set(IN_THE_LAB) == _documented()
    assert not run_here & set(IN_THE_LAB)
    for where in IN_THE_LAB.values():
        for test in where.split(", "):
            path, name = test.split("::")
            assert f"def {name}(" in (Path(__file__).parent.parent / path).read_text(), test


def test_the_man_page_names_each_code_and_its_commands() -> None:
    page = manpage.render_man()
    section = page.split(".SH EXIT STATUS\n")[1].split(".SH ")[0]
    entries = {int(e.split("\\fR", 1)[0].removeprefix("\\fB")): e for e in section.split(".TP\n")[1:]}
    assert sorted(entries) == sorted(v for k, v in vars(cli).items() if k.startswith("EXIT_"))
    for code, commands in _documented():
        for command in filter(None, commands.replace("`", "").split(", ")):
            assert f"\\fB{manpage.roff(command)}\\fR" in entries[code], (code, command)


# (code, the documented commands, the bus: "none", "empty" or "squatted" (its names owned, calls never
# answered), argv, what the run says).
RUNS = [
    (1, "", "none", ("check",), "cannot connect to the system bus"),
    (1, "`status`, `recheck`, `test-failover`, `prefer`", "squatted", ("status",), "no answer within 5 s"),
    (1, "`doctor`", "none", ("doctor", "--root", "{empty}"), "FAIL  dispatcher hook"),
    (
        1,
        "`install-system-files`",
        "none",
        ("install-system-files", "--root", "{changed}"),
        "--force replaces it",
    ),
    (1, "`notify`", "none", ("notify", "--no-tray"), "cannot connect to the session bus"),
    (0, "`notify`", "squatted", ("notify", "--no-tray"), "another agent owns net.nmfailover.Notify"),
    (2, "`demo`", "none", ("demo",), "the lab needs"),
    (3, "", "empty", ("status",), "the daemon is not running"),
]


@pytest.mark.parametrize(
    ("code", "commands", "bus", "argv", "says"),
    RUNS,
    ids=[f"{c}-{b}-{' '.join(a)}" for c, _, b, a, _ in RUNS],
)
def test_the_documented_runs(
    code: int,
    commands: str,
    bus: str,
    argv: tuple[str, ...],
    says: str,
    tmp_path: Path,
    private_bus: str,
    request: pytest.FixtureRequest,
) -> None:
    if bus == "squatted":
        request.getfixturevalue("squatter")
    empty, changed = tmp_path / "empty", tmp_path / "changed"
    empty.mkdir()
    changed.mkdir()
    if "{changed}" in argv:
        assert _nmfailover("install-system-files", "--root", str(changed)).returncode == 0
        policy = system_files.under_root(changed, system_files.DBUS_POLICY)
        policy.write_text(policy.read_text() + "<!-- a local change -->\n")
    argv = tuple(a.format(empty=empty, changed=changed) for a in argv)
    # No tools on PATH: the demo refuses (root or not) before building anything.
    done = _nmfailover(
        *argv, bus="unix:path=/nonexistent/bus" if bus == "none" else private_bus, path="/nonexistent"
    )
    assert done.returncode == code, done.stderr
    assert says in done.stdout + done.stderr
