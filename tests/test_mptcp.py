"""Multipath TCP (issue 18): the pure parts here (which endpoint flags an uplink gets, reading the kernel's
view); the behaviour against a real NetworkManager and real MPTCP connections in tests/test_mptcp_lab.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmfailover.mptcp import (
    MPTCP_ALSO_WITHOUT_SYSCTL,
    MPTCP_BACKUP,
    MPTCP_DISABLED,
    MPTCP_ENABLED,
    MPTCP_FULLMESH,
    MPTCP_SIGNAL,
    MPTCP_SUBFLOW,
    Endpoint,
    describe_flags,
    endpoint_flags,
    kernel_enabled,
    parse_endpoints,
    parse_limits,
)

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
