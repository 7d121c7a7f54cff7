"""Multipath TCP (issue 18): the pure parts here (which endpoint flags an uplink gets, reading the kernel's
view); the behaviour against a real NetworkManager and real MPTCP connections in tests/test_mptcp_lab.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from nmfailover.doctor import mptcp_checks
from nmfailover.mptcp import (
    MPTCP_ALSO_WITHOUT_SYSCTL,
    MPTCP_BACKUP,
    MPTCP_DISABLED,
    MPTCP_ENABLED,
    MPTCP_FULLMESH,
    MPTCP_SIGNAL,
    MPTCP_SUBFLOW,
    Endpoint,
    KernelMptcp,
    describe_flags,
    endpoint_flags,
    kernel_enabled,
    parse_endpoints,
    parse_limits,
)
from nmfailover.nm.edits import knows_mptcp_flags

ENABLED_SUBFLOW = MPTCP_ENABLED | MPTCP_SUBFLOW


@pytest.mark.parametrize(
    ("own", "carrying", "wanted"),
    [
        # NetworkManager's default (0): what it applies itself, plus backup unless it carries the traffic.
        (0, True, ENABLED_SUBFLOW),
        (0, False, ENABLED_SUBFLOW | MPTCP_BACKUP),
        # "enabled" alone: NetworkManager's default endpoint kind, subflow.
        (MPTCP_ENABLED, False, ENABLED_SUBFLOW | MPTCP_BACKUP),
        # A profile's own endpoint kinds and options are kept; only backup follows the switch.
        (MPTCP_SIGNAL, True, MPTCP_ENABLED | MPTCP_SIGNAL),
        (MPTCP_SUBFLOW | MPTCP_FULLMESH, False, ENABLED_SUBFLOW | MPTCP_FULLMESH | MPTCP_BACKUP),
        (ENABLED_SUBFLOW | MPTCP_ALSO_WITHOUT_SYSCTL, True, ENABLED_SUBFLOW | MPTCP_ALSO_WITHOUT_SYSCTL),
        # A backup saved in the profile is taken off while the uplink carries the traffic (stop puts it back).
        (ENABLED_SUBFLOW | MPTCP_BACKUP, True, ENABLED_SUBFLOW),
        (ENABLED_SUBFLOW | MPTCP_BACKUP, False, ENABLED_SUBFLOW | MPTCP_BACKUP),
        # A profile that turns MPTCP off is left alone.
        (MPTCP_DISABLED, True, None),
        (MPTCP_DISABLED, False, None),
    ],
)
def test_endpoint_flags(own: int, carrying: bool, wanted: int | None) -> None:
    assert endpoint_flags(own, carrying) == wanted


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (0, "default"),
        (ENABLED_SUBFLOW | MPTCP_BACKUP, "enabled,subflow,backup"),
        (MPTCP_DISABLED, "disabled"),
    ],
)
def test_describe_flags(flags: int, text: str) -> None:
    assert describe_flags(flags) == text


def test_parse_limits() -> None:
    assert parse_limits("add_addr_accepted 0 subflows 2 \n") == {"add_addr_accepted": 0, "subflows": 2}
    assert parse_limits("") == {}


def test_parse_endpoints() -> None:
    text = (
        "192.0.2.2 id 1 subflow dev wana \n"
        "2001:db8:b::2 id 5 subflow backup dev wanb \n"
        "198.51.100.7 port 4242 id 7 signal \n"
        "garbage\n"
    )
    assert parse_endpoints(text) == (
        Endpoint("192.0.2.2", 1, frozenset({"subflow"}), "wana"),
        Endpoint("2001:db8:b::2", 5, frozenset({"subflow", "backup"}), "wanb"),
        Endpoint("198.51.100.7", 7, frozenset({"signal"}), None),
    )


@pytest.mark.parametrize(("content", "enabled"), [("1\n", True), ("0\n", False), (None, None)])
def test_kernel_enabled(tmp_path: Path, content: str | None, enabled: bool | None) -> None:
    sysctl = tmp_path / "enabled"
    if content is not None:
        sysctl.write_text(content)
    assert kernel_enabled(sysctl) is enabled


KERNEL_ON = KernelMptcp(True, 2, 0, (Endpoint("192.0.2.2", 1, frozenset({"subflow"}), "wana"),))


@pytest.mark.parametrize(
    ("setting", "kernel", "lines"),
    [
        (
            True,
            KERNEL_ON,
            [
                "ok    Multipath TCP on (net.mptcp.enabled=1, limits: subflows 2, add_addr_accepted 0): MPTCP "
                "connections to servers that accept MPTCP survive a failover (mptcpize run PROGRAM makes a "
                "program use it)",
                "ok    Multipath TCP endpoints on wana (primary): 192.0.2.2 (subflow)",
                "skip  Multipath TCP: no endpoint on wanb (backup): no subflow can use it — fix: "
                "give its profile connection.mptcp-flags default (nmcli connection modify PROFILE "
                "connection.mptcp-flags 0) and a default route",
            ],
        ),
        (
            False,
            KERNEL_ON,
            ["skip  Multipath TCP: NMFAILOVER_MPTCP=false: NetworkManager's own endpoints left as they are"],
        ),
        (
            True,
            KernelMptcp(None, None, None),
            ["skip  Multipath TCP: not in this kernel: a failover breaks every open connection"],
        ),
        (
            True,
            KernelMptcp(False, 2, 0),
            [
                "skip  Multipath TCP: off in the kernel (net.mptcp.enabled=0): a failover breaks every open "
                "connection — fix: sysctl -w net.mptcp.enabled=1, and the same in a file in /etc/sysctl.d/ to "
                "keep it"
            ],
        ),
        (
            True,
            replace(KERNEL_ON, subflows=0),
            [
                "skip  Multipath TCP: limits: subflows 0, add_addr_accepted 0: a connection gets no subflow "
                "through another uplink — fix: ip mptcp limits set subflows 2 (at every boot: the kernel "
                "forgets it)",
                "ok    Multipath TCP endpoints on wana (primary): 192.0.2.2 (subflow)",
                "skip  Multipath TCP: no endpoint on wanb (backup): no subflow can use it — fix: "
                "give its profile connection.mptcp-flags default (nmcli connection modify PROFILE "
                "connection.mptcp-flags 0) and a default route",
            ],
        ),
    ],
)
def test_doctor_says_whether_mptcp_is_usable(setting: bool, kernel: KernelMptcp, lines: list[str]) -> None:
    checks = mptcp_checks(setting, kernel, [(0, "wana"), (1, "wanb")])
    assert [check.line() for check in checks] == lines


@pytest.mark.parametrize(
    ("version", "knows"),
    [("1.42.4", True), ("1.40.0", True), ("1.39.90", False), ("1.30.6", False), ("2.0", True), ("", False)],
)
def test_only_networkmanager_1_40_and_newer_get_the_flags(version: str, knows: bool) -> None:
    assert knows_mptcp_flags(version) is knows
