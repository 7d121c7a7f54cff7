"""The control interface end to end: `nmfailover run` in the sandbox on a bus that enforces the shipped
D-Bus policy, driven by the CLI (as root and as nobody) and watched through the Switched signal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from nmfailover import cli as nmfailover_cli
from nmfailover.control import INTERFACE, POLKIT_ACTIONS, Caller, access
from nmfailover.lab.demo import DaemonProcess, daemon_env, wait_for
from nmfailover.lab.sandbox import NMLab
from nmfailover.status import Status
from tests.daemon import running_daemon
from tests.desktop import POLKIT, polkit_authority, require_desktop_tools
from tests.operate import POLICY, SignalRecorder, cli, policed_lab, status

NOT_RUNNING = "nmfailover: the daemon is not running (no net.nmfailover.Failover1 on the system bus)\n"
NOBODY = 65534


@pytest.fixture
def lab(lab_machine: None) -> Iterator[NMLab]:
    with policed_lab() as lab:
        yield lab


def test_status_and_signal_follow_a_real_failover(lab: NMLab, tmp_path: Path) -> None:
    stopped = cli(lab, "status")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (3, "", NOT_RUNNING)

    with (
        running_daemon(lab, tmp_path / "daemon.log", failback_hold_down="2") as daemon,
        SignalRecorder(lab.bus_address) as recorder,
    ):
        daemon.wait_log(r"ready: traffic on primary")
        before = status(lab)
        assert before["preferred"] == "primary" and before["switches"] == 0
        assert [u["health"] for u in before["uplinks"]] == ["up", "up"]

        lab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        after = status(lab)
        # The real daemon's document is the model's, field for field and in the same order.
        assert json.dumps(Status.model_validate(after).model_dump(mode="json")) == json.dumps(after)
        primary, backup = after["uplinks"]
        assert after["preferred"] == "backup" and after["switches"] == 1
        assert abs(after["last_switch_at"] - time.time()) < 10
        assert (primary["health"], primary["carrying_traffic"], backup["carrying_traffic"]) == (
            "down",
            False,
            True,
        )
        assert primary["consecutive_failures"] >= 2 and "failed" in primary["reason"]
        assert backup["latency_ms"] > 0 and backup["device"] == "wanb"
        table = cli(lab, "status").stdout
        assert "traffic on: backup (wanb); 1 switch(es)" in table
        assert re.search(r"^\s+primary\s+primary\s+wana\s+activated\s+down\s", table, re.MULTILINE), table
        assert re.search(r"^\*\s+backup\s+backup\s+wanb\s+activated\s+up\s", table, re.MULTILINE), table

        wait_for(lambda: len(recorder.signals) >= 1, 5, "the Switched signal")
        member, from_, to, reason, details_json = recorder.signals[0]
        assert (member, from_, to) == ("Switched", "primary", "backup")
        assert "primary (wana) is down" in reason
        details = json.loads(details_json)
        assert details.pop("metered_budget")["outage"] is None  # nothing metered here
        assert details | {"at": 0} == {
            "action": "failover",
            "state": "BACKUP",
            "from_profile": "primary",
            "to_profile": "backup",
            "from_device": "wana",
            "device": "wanb",
            "gateway4": "192.0.2.65",
            "gateway6": "2001:db8:b::1",
            "reason": reason,
            "at": 0,
        }

        lab.upstreams[0].heal()
        daemon.wait_route("wana", timeout=20)
        wait_for(lambda: len(recorder.signals) >= 2, 5, "the second Switched signal")
        assert recorder.signals[1][1:3] == ["backup", "primary"]
        assert json.loads(recorder.signals[1][4])["action"] == "failback"
        assert status(lab)["switches"] == 2


def test_failover_test_moves_traffic_and_returns_by_itself(lab: NMLab, tmp_path: Path) -> None:
    with running_daemon(lab, tmp_path / "daemon.log", failback_hold_down="1") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        started = time.monotonic()
        result = cli(lab, "test-failover", "--seconds", "4")
        assert result.returncode == 0, result.stderr
        assert daemon.wait_route("wanb", timeout=3) < 2
        # The primary itself is left alone: still activated, still routed, just ranked second.
        assert lab.nmcli("-g", "GENERAL.STATE", "device", "show", "wana").strip() == "100 (connected)"
        assert ("wana", 200) in lab.default_routes(4)
        assert 0 < status(lab)["forced_failover_remaining"] <= 4
        daemon.wait_route("wana", timeout=10)
        took = time.monotonic() - started
        assert 4 <= took < 7, f"back on the primary after {took:.1f} s"
        assert lab.nmcli("-g", "GENERAL.STATE", "device", "show", "wana").strip() == "100 (connected)"

        assert cli(lab, "test-failover").returncode == 0  # default 60 s
        daemon.wait_route("wanb", timeout=3)
        assert status(lab)["forced_failover_remaining"] > 50
        assert cli(lab, "test-failover", "--end").returncode == 0
        daemon.wait_route("wana", timeout=3)
        assert "forced failover ended early" in daemon.text()


def test_prefer_pins_and_clear_releases(lab: NMLab, tmp_path: Path) -> None:
    with running_daemon(lab, tmp_path / "daemon.log", failback_hold_down="1") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        unknown = cli(lab, "prefer", "nosuch")
        assert unknown.returncode == 2
        assert unknown.stderr == (
            "nmfailover: no uplink 'nosuch'; known: primary (primary), backup (backup)\n"
        )

        assert cli(lab, "prefer", "backup").returncode == 0
        daemon.wait_route("wanb", timeout=3)
        assert status(lab)["pinned"] == "backup"
        time.sleep(2.5)  # longer than the hold-down: only the pin keeps traffic here
        assert lab.default_route(4) == "wanb"
        assert cli(lab, "prefer", "--clear").returncode == 0
        daemon.wait_route("wana", timeout=3)
        assert status(lab)["pinned"] is None

        assert cli(lab, "prefer", "wanb", "--seconds", "2").returncode == 0  # by interface, for a while
        daemon.wait_route("wanb", timeout=3)
        daemon.wait_route("wana", timeout=6)
        assert "preference for backup (wanb) expired" in daemon.text()


def _as_nobody(lab: NMLab, *argv: str) -> tuple[int, str]:
    """nmfailover's CLI in a forked child that dropped to uid/gid nobody (the interpreter may live where
    nobody cannot read, so no exec)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(read)
            sys.stdout = sys.stderr = open(write, "w", closefd=False)  # noqa: SIM115
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = lab.bus_address
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = nmfailover_cli.main(list(argv))
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write)
    with open(read, encoding="utf-8") as out:
        text = out.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), text


def test_non_root_may_read_but_not_change(lab: NMLab, tmp_path: Path) -> None:
    with running_daemon(lab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        assert cli(lab, "status").returncode == 0  # loads every module the child needs, as root

        code, text = _as_nobody(lab, "status", "--json")
        assert code == 0 and json.loads(text)["preferred"] == "primary"
        code, text = _as_nobody(lab, "test-failover", "--seconds", "30")
        assert code == 4
        # Past the bus, refused by the daemon: no polkit runs here to ask.
        assert text.startswith("nmfailover: access denied (root, the nmfailover group, or polkit") and (
            "polkit is not running to ask about net.nmfailover.test-failover" in text
        )
        assert text.count("\n") == 1
        for changing in ("recheck", "prefer backup", "prefer --clear", "test-failover --end"):
            assert _as_nobody(lab, *changing.split())[0] == 4, changing

        # A second client, busctl, for the same rules on the wire.
        busctl = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "busctl",
            "--system",
            "call",
            "net.nmfailover.Failover1",
            "/net/nmfailover/Failover1",
            "net.nmfailover.Failover1",
        ]
        denied = lab.host(*busctl, "ForceFailover", "d", "30", check=False)
        assert denied.returncode != 0 and "Access denied" in denied.stderr
        assert re.search(
            r"control: ForceFailover refused to :\S+: only root and the group nmfailover", daemon.text()
        )
        # Recheck is never asked about: the bus itself refuses it, the daemon never sees it.
        denied = lab.host(*busctl, "Recheck", "ss", "", "x", check=False)
        assert denied.returncode != 0 and "Access denied" in denied.stderr
        assert "control: Recheck" not in daemon.text()
        allowed = lab.host(*busctl, "Status", check=False)
        assert allowed.returncode == 0 and '\\"preferred\\": \\"primary\\"' in allowed.stdout

        assert lab.default_route(4) == "wana" and daemon.proc.poll() is None
        assert "forced failover" not in daemon.text()
        assert cli(lab, "status").returncode == 0


# An operator's rule for another group, as Debian's lets the group netdev change NetworkManager's settings.
GROUP_RULE = """polkit.addRule(function (action, subject) {
    if (action.id.indexOf("net.nmfailover.") === 0 && subject.isInGroup("nogroup")) {
        return polkit.Result.YES;
    }
});
"""


def test_another_group_may_change_things(tmp_path: Path, lab_machine: None) -> None:
    # The shipped policy with its group swapped for nobody's own (what an operator's edit does) lets it
    # send everything; the daemon asks polkit about the rest, and the operator's polkit rule says yes.
    require_desktop_tools("/usr/lib/polkit-1/polkitd", "pkaction")
    workdir = Path(tempfile.mkdtemp(prefix="nmfailover-group-"))
    workdir.chmod(0o755)  # polkitd reads its rules there as the user polkitd
    policy = tmp_path / "policy.conf"
    policy.write_text(POLICY.read_text().replace('group="nmfailover"', 'group="nogroup"'))
    try:
        with (
            NMLab(2, bus_policy=policy) as lab,
            polkit_authority(lab.bus_address, workdir, GROUP_RULE),
            running_daemon(lab, tmp_path / "daemon.log", failback_hold_down="1") as daemon,
        ):
            daemon.wait_log(r"ready: traffic on primary")
            assert cli(lab, "status").returncode == 0
            assert _as_nobody(lab, "recheck") == (0, "re-checking 2 uplink(s)\n")
            assert _as_nobody(lab, "test-failover", "--seconds", "2") == (
                0,
                "failover test: traffic avoids the current uplink for 2 s\n",
            )
            daemon.wait_route("wanb", timeout=3)
            daemon.wait_route("wana", timeout=6)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_second_instance_and_bad_calls_are_refused(lab: NMLab, tmp_path: Path) -> None:
    with running_daemon(lab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        second = DaemonProcess(lab, tmp_path / "second.log", daemon_env(lab))
        try:
            assert second.proc.wait(20) == 1
        finally:
            second.kill()
        assert re.search(
            r"cannot start: net\.nmfailover\.Failover1 is already owned on the system bus "
            r"\(pid \d+\): is another nmfailover running\?",
            second.text(),
        ), second.text()
        assert "route metric" not in second.text()

        call = [
            "busctl",
            "--system",
            "call",
            "net.nmfailover.Failover1",
            "/net/nmfailover/Failover1",
            "net.nmfailover.Failover1",
        ]
        for args, error in (
            (["ForceFailover", "d", "nan"], "seconds must be a finite number"),
            (["ForceFailover", "d", "0"], "seconds must be a finite number greater than 0"),
            (["Prefer", "s", "backup"], "Prefer takes arguments (sd), got (s)"),
            (["Nosuch"], "no method net.nmfailover.Failover1.Nosuch"),
        ):
            result = lab.host(*call, *args, check=False)
            assert result.returncode != 0 and error in result.stderr, (args, result.stderr)
        assert daemon.proc.poll() is None and lab.default_route(4) == "wana"
        assert (
            cli(lab, "recheck", "--interface", "wanb", "--reason", "testing").stdout
            == "re-checking 1 uplink(s)\n"
        )
        daemon.wait_log(r"re-check requested for wanb \(testing\)")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["test-failover", "--seconds", "0"], "--seconds: must be a number greater than 0; got '0'"),
        (["test-failover", "--seconds", "inf"], "--seconds: must be a number greater than 0; got 'inf'"),
        (["prefer"], "give either UPLINK [--seconds N] or --clear"),
        (["prefer", "backup", "--clear"], "give either UPLINK [--seconds N] or --clear"),
        (["prefer", "backup", "--seconds", "-1"], "--seconds: must be a number of 0 or more; got '-1'"),
        (["recheck", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nmfailover_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["status", "recheck", "test-failover", "prefer"])
def test_every_command_has_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nmfailover", command, "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0 and "exit 3 if it is not running" in " ".join(result.stdout.split())


ROOT_CALLER = Caller(0, frozenset({0}))
USER = Caller(1000, frozenset({1000, 27}))
GROUP_MEMBER = Caller(1001, frozenset({1001, 990}))


@pytest.mark.parametrize(
    ("member", "caller", "group_gid", "ask"),
    [
        ("Prefer", ROOT_CALLER, 990, None),
        ("Prefer", Caller(998, frozenset({998})), 990, None),  # the daemon's own user (non-root service)
        ("Prefer", GROUP_MEMBER, 990, None),
        ("Prefer", USER, 990, "net.nmfailover.prefer"),
        ("ClearPreference", USER, 990, "net.nmfailover.prefer"),
        ("ForceFailover", USER, 990, "net.nmfailover.test-failover"),
        ("EndForce", USER, 990, "net.nmfailover.test-failover"),
        ("ForceFailover", GROUP_MEMBER, None, "net.nmfailover.test-failover"),  # no such group here
        ("Status", USER, 990, None),  # the bus let it through: anyone may
        ("Recheck", USER, 990, None),  # the bus lets only root and the group send it
    ],
)
def test_who_the_daemon_asks_polkit_about(
    member: str, caller: Caller, group_gid: int | None, ask: str | None
) -> None:
    assert access(member, caller, 998, group_gid) == ask


def test_the_shipped_polkit_files_name_the_actions_the_daemon_asks_about() -> None:
    root = ElementTree.parse(POLKIT / "net.nmfailover.policy").getroot()
    actions = {a.get("id"): a for a in root.iter("action")}
    assert set(actions) == set(POLKIT_ACTIONS.values())
    for action in actions.values():
        defaults_element = action.find("defaults")
        assert defaults_element is not None
        defaults = {d.tag: d.text for d in defaults_element}
        # Nobody is let in by the actions alone: only by a rule (the desktop's) or a password.
        assert defaults == dict.fromkeys(("allow_any", "allow_inactive", "allow_active"), "auth_admin_keep")
    rule = (POLKIT / "60-nmfailover-desktop.rules").read_text()
    assert set(re.findall(r'action\.id === "([^"]+)"', rule)) == set(POLKIT_ACTIONS.values())
    assert "subject.local && subject.active" in rule
    # The bus lets anyone send exactly the calls the daemon asks polkit about, besides Status.
    policy = ElementTree.parse(POLICY).getroot()
    (default,) = [p for p in policy.iter("policy") if p.get("context") == "default"]
    open_members = {
        a.get("send_member") for a in default.iter("allow") if a.get("send_interface") == INTERFACE
    }
    assert open_members == {"Status", *POLKIT_ACTIONS}
