"""`nmfailover doctor`: against the real NetworkManager of the lab with the system files installed into a
temporary root, and each file check on its own against broken files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nmfailover import cli, doctor, system_files
from nmfailover.config import load_settings
from nmfailover.doctor import FAIL, OK, SKIP, Check, Doctor, exec_start
from nmfailover.lab.demo import daemon_env
from nmfailover.lab.sandbox import NMLab
from nmfailover.nm import WireGuardDevice
from nmfailover.system_files import under_root

HOOK = system_files.DISPATCHER_HOOK
CHECKS_ALL_OK = 13  # settings, NM, policy, hook, unit, enabled, 2 profiles, 2 probes, MPTCP, 2 endpoints

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs root-owned files: run as root")


def install_into(root: Path, enable: bool = True) -> None:
    subprocess.run(
        [sys.executable, "-m", "nmfailover", "install-system-files", "--root", str(root)],
        check=True,
        capture_output=True,
    )
    if enable:
        subprocess.run(
            ["systemctl", f"--root={root}", "enable", system_files.UNIT_NAME], check=True, capture_output=True
        )


def run_doctor(lab: NMLab, root: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    """doctor in the lab's host namespace (where the uplinks' devices are), on the lab's bus."""
    env = daemon_env(lab, **overrides)
    # The settings come from the installed env file, as on a real machine; the lab's probe targets too.
    for name in ("NMFAILOVER_ENV_FILE", "NMFAILOVER_UPLINKS", "NMFAILOVER_PROBE_URLS"):
        if name.removeprefix("NMFAILOVER_").lower() not in overrides:
            env.pop(name)
    env_file = under_root(root, system_files.ENV_FILE)
    if "NMFAILOVER_UPLINKS=" not in env_file.read_text().replace("#NMFAILOVER_UPLINKS=", ""):
        settings = daemon_env(lab)
        with env_file.open("a") as file:
            for name in ("NMFAILOVER_UPLINKS", "NMFAILOVER_PROBE_URLS"):
                file.write(f'{name}="{settings[name]}"\n')
    done = lab.host(sys.executable, "-m", "nmfailover", "doctor", "--root", str(root), env=env, check=False)
    # Captured for the record (pytest -s shows it): the output is the product here.
    print(f"$ nmfailover doctor --root {root}   # exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "root"
    path.mkdir()
    install_into(path)
    yield path


def test_doctor_passes_on_a_complete_installation(nmlab: NMLab, root: Path) -> None:
    done = run_doctor(nmlab, root)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout
    assert done.stderr == ""
    assert len(lines) == CHECKS_ALL_OK, lines
    assert all(line.startswith("ok    ") for line in lines), lines
    env_file = under_root(root, system_files.ENV_FILE)
    assert lines[0] == f"ok    settings: uplinks primary, backup (from the environment and {env_file})"
    assert lines[1].startswith("ok    NetworkManager 1.42") and lines[1].endswith(
        " reachable on the system bus"
    )
    assert lines[2] == f"ok    D-Bus policy {under_root(root, system_files.DBUS_POLICY)}"
    assert lines[3] == f"ok    dispatcher hook {under_root(root, HOOK)} (root, 0755)"
    executable = Path(sys.executable).parent / "nmfailover"
    assert lines[4] == f"ok    unit {under_root(root, system_files.UNIT)} runs {executable}"
    assert lines[5] == "ok    unit nmfailover.service enabled"
    assert lines[6] == "ok    uplink primary: profile 'primary' active on wana"
    assert lines[7] == "ok    uplink backup: profile 'backup' active on wanb"
    assert lines[8].startswith("ok    uplink primary (wana) reaches the internet: 3/3 targets answered")
    assert lines[9].startswith("ok    uplink backup (wanb) reaches the internet: 3/3 targets answered")
    # The lab's kernel namespace: MPTCP on at the kernel's limits, NetworkManager's own endpoints.
    assert lines[10].startswith("ok    Multipath TCP on (net.mptcp.enabled=1, limits: subflows 2, ")
    assert lines[11] == (
        "ok    Multipath TCP endpoints on wana (primary): 192.0.2.2 (subflow), 2001:db8:a::2 (subflow)"
    )
    assert lines[12].startswith("ok    Multipath TCP endpoints on wanb (backup): 192.0.2.66 (subflow)")


def test_doctor_fails_a_group_writable_hook_with_the_fix(nmlab: NMLab, root: Path) -> None:
    hook = under_root(root, HOOK)
    hook.chmod(0o775)
    done = run_doctor(nmlab, root)
    assert done.returncode == 1
    failed = [line for line in done.stdout.splitlines() if not line.startswith("ok    ")]
    assert failed == [
        f"FAIL  dispatcher hook {hook} is writable by group (mode 0775): NetworkManager ignores it"
        f" — fix: nmfailover install-system-files --root {root}"
    ]
    # The fix it names works.
    install_into(root, enable=False)
    assert run_doctor(nmlab, root).returncode == 0


def test_doctor_on_an_empty_root_names_every_missing_file(nmlab: NMLab, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    (root / system_files.ENV_FILE.parent.relative_to("/")).mkdir(parents=True)
    under_root(root, system_files.ENV_FILE).write_text("")
    done = run_doctor(nmlab, root)
    assert done.returncode == 1
    fix = f" — fix: nmfailover install-system-files --root {root}"
    policy = under_root(root, system_files.DBUS_POLICY)
    assert (
        f"FAIL  D-Bus policy {policy} missing: the daemon cannot own net.nmfailover.Failover1{fix}"
        in done.stdout
    )
    assert f"FAIL  dispatcher hook {under_root(root, HOOK)} missing{fix}" in done.stdout
    assert f"FAIL  unit {under_root(root, system_files.UNIT)} missing{fix}" in done.stdout
    # The uplinks are still checked: every problem shows in one run.
    assert "ok    uplink backup (wanb) reaches the internet" in done.stdout


def test_doctor_names_a_missing_profile_an_inactive_one_and_a_dead_uplink(nmlab: NMLab, root: Path) -> None:
    nmlab.nmcli("connection", "add", "type", "ethernet", "ifname", "wanz", "con-name", "spare",
                "autoconnect", "no", "ipv4.method", "disabled", "ipv6.method", "disabled")  # fmt: skip
    nmlab.upstreams[0].refuse()
    done = run_doctor(nmlab, root, uplinks="primary,nosuch,spare")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert (
        "FAIL  uplink backup: 'nosuch': no NetworkManager profile has this id, UUID or interface name; "
        "existing profiles: 'backup', 'lo', 'primary', 'spare' — fix: set NMFAILOVER_UPLINKS to existing "
        "profiles (`nmcli -f NAME,UUID,DEVICE connection show`)"
    ) in lines
    uuid = nmlab.nmcli("-g", "connection.uuid", "connection", "show", "spare").strip()
    assert (
        f"FAIL  uplink fallback: profile 'spare' is not active — fix: nmcli connection up {uuid} "
        "(check its device and cable)"
    ) in lines
    probe = [line for line in lines if "uplink primary (wana)" in line]
    assert len(probe) == 1 and probe[0].startswith(
        "FAIL  uplink primary (wana) probe failed: 3/3 targets failed (connect) — fix: "
    ), probe


def test_doctor_reports_bad_settings_and_still_checks_the_files(nmlab: NMLab, root: Path) -> None:
    done = run_doctor(nmlab, root, fail_count="0")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "FAIL  settings: NMFAILOVER_FAIL_COUNT: must be a whole number of 1 or more; got '0' — fix: correct "
        "NMFAILOVER_FAIL_COUNT in the environment"
    )
    env_file = under_root(root, system_files.ENV_FILE)
    env_file.write_text(env_file.read_text() + "NMFAILOVER_RISE_COUNT=many\n")
    lines = run_doctor(nmlab, root).stdout.splitlines()
    assert lines[0] == (
        "FAIL  settings: NMFAILOVER_RISE_COUNT: must be a whole number of 1 or more; got 'many' — fix: edit "
        f"{env_file}"
    )
    assert lines[-1] == "skip  uplinks not checked: no settings"
    assert sum(line.startswith("ok    ") for line in lines) == 5  # NM, policy, hook, unit, enabled


def test_doctor_without_a_bus_says_where_it_looked(tmp_path: Path) -> None:
    install_into(tmp_path, enable=False)
    socket = tmp_path / "no-bus"
    env = {
        **os.environ,
        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket}",
        "NMFAILOVER_ENV_FILE": "",
        "NMFAILOVER_UPLINKS": "primary,backup",
    }
    done = subprocess.run(
        [sys.executable, "-m", "nmfailover", "doctor", "--root", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[1].startswith(
        f"FAIL  NetworkManager not reachable: cannot connect to the system bus at {socket} "
        "(DBUS_SYSTEM_BUS_ADDRESS): "
    ), lines
    assert lines[1].endswith("check `systemctl status dbus` — fix: start dbus: systemctl start dbus"), lines
    assert lines[-1] == "skip  uplinks not checked: no NetworkManager"


# -- each file check on its own ----------------------------------------------------------------------


def only(check: Check) -> tuple[str, str, str]:
    return check.status, check.text, check.fix


def test_the_line_format() -> None:
    assert Check(OK, "NetworkManager 1.42.4 reachable").line() == "ok    NetworkManager 1.42.4 reachable"
    assert Check(FAIL, "hook missing", "do this").line() == "FAIL  hook missing — fix: do this"
    assert Check(SKIP, "no systemd").line() == "skip  no systemd"


@pytest.mark.parametrize(
    ("mode", "owner", "problem"),
    [
        (0o755, 0, None),
        (0o775, 0, "is writable by group (mode 0775)"),
        (0o757, 0, "is writable by others (mode 0757)"),
        (0o777, 0, "is writable by group and others (mode 0777)"),
        (0o644, 0, "is not executable (mode 0644)"),
        (0o755, 1000, "is owned by uid 1000, not root"),
        (0o4755, 0, "is setuid"),
    ],
)
def test_hook_permissions_as_networkmanager_checks_them(
    tmp_path: Path, mode: int, owner: int, problem: str | None
) -> None:
    install_into(tmp_path, enable=False)
    hook = under_root(tmp_path, HOOK)
    os.chown(hook, owner, owner)
    hook.chmod(mode)
    status, text, fix = only(Doctor(tmp_path)._dispatcher_hook())
    if problem is None:
        assert (status, text) == (OK, f"dispatcher hook {hook} (root, 0755)")
    else:
        assert status == FAIL and text == f"dispatcher hook {hook} {problem}: NetworkManager ignores it"
        assert fix == f"nmfailover install-system-files --root {tmp_path}"


def test_the_packaged_hook_counts_and_a_dev_null_link_disables_it(tmp_path: Path) -> None:
    packaged = under_root(tmp_path, system_files.PACKAGED_DISPATCHER_HOOK)
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(system_files.data_file("90-nmfailover"))
    packaged.chmod(0o755)
    assert only(Doctor(tmp_path)._dispatcher_hook())[:2] == (OK, f"dispatcher hook {packaged} (root, 0755)")
    local = under_root(tmp_path, HOOK)
    local.parent.mkdir(parents=True)
    local.symlink_to("/dev/null")
    assert only(Doctor(tmp_path)._dispatcher_hook()) == (
        FAIL,
        f"dispatcher hook disabled: {local} is a symlink to /dev/null",
        f"rm {local}",
    )


def test_dbus_policy_checks(tmp_path: Path) -> None:
    install_into(tmp_path, enable=False)
    policy = under_root(tmp_path, system_files.DBUS_POLICY)
    assert only(Doctor(tmp_path)._dbus_policy()) == (OK, f"D-Bus policy {policy}", "")
    policy.write_text("<busconfig><policy user='root'>")
    status, text, fix = only(Doctor(tmp_path)._dbus_policy())
    assert (
        status == FAIL and text.startswith(f"D-Bus policy {policy} unreadable (") and fix.endswith("--force")
    )
    policy.write_text("<busconfig><policy user='root'><allow send_destination='x'/></policy></busconfig>")
    assert only(Doctor(tmp_path)._dbus_policy())[:2] == (
        FAIL,
        f"D-Bus policy {policy} lets nobody own net.nmfailover.Failover1",
    )


def fake_systemctl(tmp_path: Path, state: str) -> str:
    script = tmp_path / "systemctl"
    script.write_text(f'#!/bin/sh\n[ "$2" = is-enabled ] && echo {state}\nexit 1\n')
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("enabled", (OK, "unit nmfailover.service enabled", "")),
        (
            "disabled",
            (
                FAIL,
                "unit nmfailover.service is disabled, not enabled",
                "systemctl --root={root} enable nmfailover",
            ),
        ),
        (
            "masked",
            (
                FAIL,
                "unit nmfailover.service is masked, not enabled",
                "systemctl --root={root} unmask nmfailover; systemctl --root={root} enable nmfailover",
            ),
        ),
    ],
)
def test_unit_state(tmp_path: Path, state: str, expected: tuple[str, str, str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    install_into(root, enable=False)
    checks = Doctor(root, systemctl=fake_systemctl(tmp_path, state))._unit()
    assert checks[0].status == OK
    assert only(checks[1]) == tuple(part.format(root=root) for part in expected)


def test_without_systemd_the_unit_is_skipped_not_failed(tmp_path: Path) -> None:
    checks = Doctor(tmp_path, systemctl=str(tmp_path / "no-systemctl"))._unit()
    assert [c.status for c in checks] == [SKIP]
    assert checks[0].text.startswith("systemd not found (no ")


def test_a_unit_running_a_vanished_installation_fails(tmp_path: Path) -> None:
    install_into(tmp_path, enable=False)
    unit = under_root(tmp_path, system_files.UNIT)
    unit.write_text(unit.read_text().replace("ExecStart=", "ExecStart=/opt/gone/bin/nmfailover run\n#"))
    check = Doctor(tmp_path, systemctl=fake_systemctl(tmp_path, "enabled"))._unit()[0]
    assert only(check) == (
        FAIL,
        f"unit {unit} runs /opt/gone/bin/nmfailover, which is not an executable file",
        f"nmfailover install-system-files --root {tmp_path}",
    )


def test_a_unit_hiding_its_installation_under_tmp_fails(tmp_path: Path) -> None:
    # Issue 19: doctor said ok for a unit whose PrivateTmp=yes hides the installation it runs.
    root = tmp_path / "root"
    root.mkdir()
    install_into(root, enable=False)
    venv = tmp_path / "venv" / "bin"  # tmp_path is under /tmp
    venv.mkdir(parents=True)
    executable = venv / "nmfailover"
    executable.write_text("#!/usr/bin/python3\n")
    executable.chmod(0o755)
    unit = under_root(root, system_files.UNIT)
    # As shipped (a unit written for an installation that itself lives under /tmp already has it loosened).
    shipped = unit.read_text().replace("\nPrivateTmp=no\n", "\nPrivateTmp=yes\n")
    assert "\nPrivateTmp=yes\n" in shipped
    unit.write_text(shipped.replace("ExecStart=", f"ExecStart={executable} run\n#"))
    check = Doctor(root, systemctl=fake_systemctl(tmp_path, "enabled"))._unit()[0]
    assert only(check) == (
        FAIL,
        f"unit {unit} runs {executable}, which lives under /tmp or /var/tmp, which PrivateTmp=yes would "
        "replace with an empty one: the service cannot start",
        f"nmfailover install-system-files --root {root} --force (it writes PrivateTmp=no)",
    )
    unit.write_text(unit.read_text().replace("\nPrivateTmp=yes\n", "\nPrivateTmp=no\n"))
    assert Doctor(root, systemctl=fake_systemctl(tmp_path, "enabled"))._unit()[0].status == OK


@pytest.mark.parametrize(
    ("text", "executable"),
    [
        ("[Service]\nExecStart=/opt/x/bin/nmfailover run\n", "/opt/x/bin/nmfailover"),
        ('ExecStart="/opt/my venv/bin/nmfailover" run\n', "/opt/my venv/bin/nmfailover"),
        ("ExecStart=-/usr/bin/nmfailover run\n", "/usr/bin/nmfailover"),
        ("ExecStart=/a run\nExecStart=\nExecStart=/b run\n", "/b"),
        ('ExecStart="/opt/100%%/nmfailover" run\n', "/opt/100%/nmfailover"),
        ("[Service]\nType=notify\n", None),
    ],
)
def test_exec_start(text: str, executable: str | None) -> None:
    assert exec_start(text) == executable


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, names in ((["doctor", "--root", "/nonexistent"], "--root"), (["doctor", "extra"], "extra")):
        assert cli.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and names in lines[0], lines


def test_run_counts_a_failure_and_ignores_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def checks(self: Doctor) -> AsyncIterator[Check]:
        for check in self_checks:
            yield check

    out = tmp_path / "out"
    self_checks = [Check(OK, "a"), Check(SKIP, "b")]
    monkeypatch.setattr(Doctor, "checks", checks)
    with out.open("w") as stream:
        assert doctor.run(tmp_path, out=stream) == 0
    self_checks.append(Check(FAIL, "c", "d"))
    with out.open("w") as stream:
        assert doctor.run(tmp_path, out=stream) == 1
    assert out.read_text() == "ok    a\nskip  b\nFAIL  c — fix: d\n"


def test_doctor_shows_the_uplinks_found_their_order_and_why(nmlab: NMLab, root: Path) -> None:
    nmlab.nmcli("connection", "modify", "backup", "ipv4.route-metric", "50", "connection.metered", "yes")
    done = run_doctor(nmlab, root, uplinks="auto")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout
    assert lines[0].startswith("ok    settings: uplinks found at run time (auto)")
    # Metered last, whatever its own metric; the reason beside each.
    assert "ok    uplink primary: 'primary' on wana (wired)" in lines
    assert (
        "ok    uplink backup: 'backup' on wanb (wired, metered (its profile says so), route metric 50)"
        in lines
    )
    assert "ok    not an uplink: 'lo': a loopback connection carries no default route of its own" in lines


# -- CAP_NET_ADMIN for kernel WireGuard tunnels (the drop-in kernel-wireguard.conf) --------------------------


@pytest.mark.parametrize(
    ("texts", "granted"),
    [
        (["[Service]\nCapabilityBoundingSet=CAP_NET_RAW\n"], {"CAP_NET_RAW"}),
        (
            ["CapabilityBoundingSet=CAP_NET_RAW\n", "CapabilityBoundingSet=CAP_NET_ADMIN\n"],
            {"CAP_NET_RAW", "CAP_NET_ADMIN"},
        ),
        (["CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN\n", "CapabilityBoundingSet=\n"], set()),
        (["[Service]\nType=notify\n"], None),  # no line: every capability
        (["CapabilityBoundingSet=CAP_NET_RAW\n", "CapabilityBoundingSet=~CAP_SYS_ADMIN\n"], None),
    ],
)
def test_bounding_set_over_a_unit_and_its_drop_ins(texts: list[str], granted: set[str] | None) -> None:
    assert doctor.bounding_set(texts) == (None if granted is None else frozenset(granted))


class NoManagedTunnels:
    async def wireguard_devices(self) -> list[WireGuardDevice]:
        return []

    async def reapply_wireguard(self, device: str) -> None:
        raise AssertionError("doctor changes nothing")


def test_a_kernel_tunnel_to_follow_without_cap_net_admin_fails_with_the_drop_in_as_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel's WireGuard links as `ip` lists them (this machine may have no WireGuard module); no `wg`.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ip").write_text('#!/bin/sh\necho \'[{"ifname": "wgk"}]\'\n')
    (tools / "ip").chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    root = tmp_path / "root"
    root.mkdir()
    install_into(root, enable=False)
    settings = load_settings({"NMFAILOVER_UPLINKS": "a,b", "NMFAILOVER_ENV_FILE": ""})
    checks = asyncio.run(Doctor(root).wireguard_capability(settings, NoManagedTunnels()))
    assert [only(c) for c in checks] == [
        (
            FAIL,
            "WireGuard wgk: a kernel tunnel outside NetworkManager, to follow the switch, but the unit grants "
            "no CAP_NET_ADMIN",
            f"nmfailover install-system-files --root {root} --kernel-wireguard; systemctl daemon-reload; "
            "systemctl restart nmfailover",
        )
    ]
    # That fix, done: nothing left to say. Nor with following off.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nmfailover",
            "install-system-files",
            "--root",
            str(root),
            "--kernel-wireguard",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PATH": f"{tools}:/usr/bin:/bin"},
    )
    assert Doctor(root).unit_capabilities() == frozenset({"CAP_NET_RAW", "CAP_NET_ADMIN"})
    assert asyncio.run(Doctor(root).wireguard_capability(settings, NoManagedTunnels())) == []
    off = load_settings(
        {"NMFAILOVER_UPLINKS": "a,b", "NMFAILOVER_ENV_FILE": "", "NMFAILOVER_WIREGUARD_FOLLOW": "off"}
    )
    (root / system_files.KERNEL_WIREGUARD_DROP_IN.relative_to("/")).unlink()
    assert asyncio.run(Doctor(root).wireguard_capability(off, NoManagedTunnels())) == []
