"""`nmfailover check` and the exit codes, run as a subprocess in the sandbox's host namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmfailover import __version__
from nmfailover import cli as nmfailover_cli
from nmfailover.bus import system_bus_location
from nmfailover.lab.demo import daemon_env
from nmfailover.lab.sandbox import NMLab


def cli(lab: NMLab, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    return lab.host(sys.executable, "-m", "nmfailover", *args, env=daemon_env(lab, **overrides), check=False)


def test_version_and_usage_errors() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nmfailover", "--version"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and run.stdout.strip() == f"nmfailover {__version__}"
    bad = subprocess.run(
        [sys.executable, "-m", "nmfailover", "frobnicate"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith(
        "nmfailover: unknown command 'frobnicate'; usage: nmfailover [-h] [--version] {run,"
    )
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("stauts", "status"),
        ("statsu", "status"),
        ("chekc", "check"),
        ("doctr", "doctor"),
        ("install", "install-system-files"),  # a prefix of exactly one command
        ("test-failvoer", "test-failover"),
        ("perfer", "prefer"),
    ],
)
def test_a_mistyped_command_gets_the_closest_one(
    typed: str, meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nmfailover_cli.main([typed]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"nmfailover: unknown command {typed!r}; did you mean {meant!r}? usage: nmfailover "
    )
    assert lines[0].endswith("...")


@pytest.mark.parametrize("typed", ["frobnicate", "x", "", "a\nb", "$(reboot)"])
def test_no_close_command_gets_the_usage_only(typed: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert nmfailover_cli.main([typed]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"nmfailover: unknown command {typed!r}; usage: nmfailover [-h] [--version] {{"
    )


def test_cannot_reach_the_bus_names_the_socket(tmp_path: Path) -> None:
    socket = tmp_path / "system_bus_socket"
    env = {
        **os.environ,
        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket},guid=0123",
        "NMFAILOVER_ENV_FILE": "",
    }
    for argv in (["status"], ["check"]):
        done = subprocess.run(
            [sys.executable, "-m", "nmfailover", *argv],
            env={**env, "NMFAILOVER_UPLINKS": "primary,backup"},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 1, argv
        assert done.stderr.strip() == (
            f"nmfailover: cannot connect to the system bus at {socket} (DBUS_SYSTEM_BUS_ADDRESS): [Errno 2] "
            "No such file or directory; is dbus running? check `systemctl status dbus`"
        ), argv


@pytest.mark.parametrize(
    ("address", "where"),
    [
        (None, "/run/dbus/system_bus_socket"),
        ("", "/run/dbus/system_bus_socket"),
        ("unix:path=/run/x/bus", "/run/x/bus (DBUS_SYSTEM_BUS_ADDRESS)"),
        ("unix:guid=ab,path=/run/a%20b", "/run/a b (DBUS_SYSTEM_BUS_ADDRESS)"),
        ("tcp:host=h,port=1;unix:path=/s", "/s (DBUS_SYSTEM_BUS_ADDRESS)"),
        ("unix:abstract=/tmp/dbus-x", "'unix:abstract=/tmp/dbus-x' (DBUS_SYSTEM_BUS_ADDRESS)"),
    ],
)
def test_where_the_system_bus_is_looked_for(address: str | None, where: str) -> None:
    environ = {} if address is None else {"DBUS_SYSTEM_BUS_ADDRESS": address}
    assert system_bus_location(environ) == where


def test_check_prints_a_table_and_exits_by_the_primary(nmlab: NMLab) -> None:
    healthy = cli(nmlab, "check")
    assert healthy.returncode == 0, healthy.stderr
    lines = healthy.stdout.splitlines()
    assert lines[0].split()[:5] == ["UPLINK", "DEVICE", "RESULT", "LATENCY_MS", "REASON"]
    assert sum(line.startswith("primary  wana    ok") for line in lines) == 3
    assert "primary (primary): healthy: 3/3 targets answered" in healthy.stdout

    nmlab.upstreams[0].refuse()
    report = json.loads(cli(nmlab, "check", "--json").stdout)
    assert [u["healthy"] for u in report["uplinks"]] == [False, True]
    assert {p["reason"] for p in report["probes"] if p["uplink"] == "primary"} == {"connect"}
    assert cli(nmlab, "check").returncode == 1


def test_unknown_profile_exits_2_before_touching_networkmanager(nmlab: NMLab) -> None:
    routes = nmlab.default_routes(4), nmlab.default_routes(6)
    for command in ("run", "check"):
        result = cli(nmlab, command, uplinks="primary,nosuch")
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "nmfailover: NMFAILOVER_UPLINKS: 'nosuch': no NetworkManager profile "
            "has this id, UUID or interface name; existing profiles: 'backup', 'lo', 'primary'"
        )
    assert (nmlab.default_routes(4), nmlab.default_routes(6)) == routes


def test_an_unknown_profile_lists_at_most_ten_existing_ones(nmlab: NMLab) -> None:
    for n in range(12):
        nmlab.nmcli("connection", "add", "type", "dummy", "ifname", f"dummy{n}", "con-name", f"spare {n:02}",
                    "autoconnect", "no", "ipv4.method", "disabled", "ipv6.method", "disabled")  # fmt: skip
    nmlab.nmcli("connection", "add", "type", "dummy", "ifname", "dummyx", "con-name", "it's\nodd",
                "autoconnect", "no", "ipv4.method", "disabled", "ipv6.method", "disabled")  # fmt: skip
    result = cli(nmlab, "check", uplinks="primary,nosuch")
    assert result.returncode == 2
    shown = ", ".join(
        repr(name) for name in ["backup", "it's\nodd", "lo", "primary"] + [f"spare {n:02}" for n in range(6)]
    )
    assert result.stderr == (
        "nmfailover: NMFAILOVER_UPLINKS: 'nosuch': no NetworkManager profile has this id, UUID or interface "
        f"name; existing profiles: {shown} and 6 more\n"
    )


# -- the output's reader going away (`| head`) ------------------------------------------------------------


def _with_a_closed_pipe(*args: str) -> tuple[int, str]:
    """Run nmfailover with stdout a real pipe whose reading end is closed before it writes anything."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nmfailover", *args], stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def test_a_closed_pipe_ends_the_output_without_a_traceback(tmp_path: Path) -> None:
    # Issue 19: `install-system-files | head` and `status | head` ended in a BrokenPipeError traceback.
    code, stderr = _with_a_closed_pipe("install-system-files", "--root", str(tmp_path))
    assert (code, stderr) == (nmfailover_cli.EXIT_FAILURE, "")
    # The work is done; only what it says about it is lost.
    assert (tmp_path / "etc/systemd/system/nmfailover.service").is_file()


def test_a_broken_pipe_that_is_not_the_output_still_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_argv: object) -> int:
        raise BrokenPipeError("a socket's")

    monkeypatch.setattr(nmfailover_cli, "_main", broken)
    with pytest.raises(BrokenPipeError, match="a socket's"):
        nmfailover_cli.main([])


@pytest.mark.lab
def test_status_into_a_pipe_closed_early(nmlab: NMLab, tmp_path: Path) -> None:
    from tests.daemon import running_daemon

    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        # `true` has exited long before status has its answer to print: the pipe is closed by then.
        done = nmlab.host(
            "bash",
            "-c",
            f"{sys.executable} -m nmfailover status | true; echo exit ${{PIPESTATUS[0]}}",
            env=daemon_env(nmlab),
            check=False,
        )
    assert (done.stdout, done.stderr) == (f"exit {nmfailover_cli.EXIT_FAILURE}\n", "")
