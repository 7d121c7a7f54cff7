"""WireGuard follows the switch (nmfailover/tunnels.py).

The decisions (which peer moves, by whom, what a failure does) against a fake NetworkManager and fake
commands; then the real thing: a wireguard-go tunnel to a peer reachable through both uplinks of the lab,
the primary's upstream silently dead, with and without the option.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from loguru import logger

from nmfailover import cli
from nmfailover.config import load_settings
from nmfailover.engine import SwitchEvent
from nmfailover.errors import ConfigError, NMError
from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import (
    WIREGUARD_ENDPOINT,
    WIREGUARD_PORT,
    NMLab,
    WireGuardPeer,
    add_wireguard_peer,
    wireguard_available,
)
from nmfailover.nm import WireGuardDevice
from nmfailover.status import TunnelMove, TunnelsStatus
from nmfailover.tunnels import AUTO, BY_NM, BY_WG, NEEDS_NET_ADMIN, VARIABLE, Tunnels, check_names
from tests.daemon import running_daemon
from tests.operate import cli as run_cli
from tests.operate import status

ENDPOINT = f"{WIREGUARD_ENDPOINT}:{WIREGUARD_PORT}"
KEY = "5WarQUHG9RHIIvsr/le7j2cUFB5ahBY7Epm87MZ76W0="
OTHER_KEY = "HL+O1QR+iHzTi61u1nTKSoEhV4TN/ea6WfsiaGLIE0w="
RECOVERY_LIMIT = 2.0  # seconds from the switch to traffic through the tunnel again (the bound)


def event(device: str = "wanb") -> SwitchEvent:
    return SwitchEvent(
        "failover", "BACKUP", "primary", "backup", "wana", device, "192.0.2.65", "", "test", time.time()
    )


class FakeNM:
    """NetworkManager with WireGuard devices; records each Reapply."""

    def __init__(self, devices: Sequence[WireGuardDevice], fail: Exception | None = None) -> None:
        self.devices = list(devices)
        self.fail = fail
        self.reapplied: list[str] = []

    async def wireguard_devices(self) -> list[WireGuardDevice]:
        return self.devices

    async def reapply_wireguard(self, device: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.reapplied.append(device)


class FakeCommands:
    """`ip route get` answers from a table of endpoint -> device; `wg` from a table of answers; `ip link`
    lists `kernel_links` as the kernel's WireGuard interfaces."""

    def __init__(
        self,
        routes: dict[str, str],
        wg: dict[str, str] | None = None,
        hang: bool = False,
        kernel_links: Sequence[str] = (),
    ) -> None:
        self.routes = routes
        self.wg = wg or {}
        self.hang = hang
        self.kernel_links = kernel_links
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if self.hang:
            await asyncio.sleep(3600)
        if argv[:4] == ["ip", "-j", "route", "get"]:
            dev = self.routes.get(argv[4])
            return (0, f'[{{"dst":"{argv[4]}","dev":"{dev}"}}]', "") if dev else (2, "", "unreachable")
        if argv == ["ip", "-j", "link", "show", "type", "wireguard"]:
            return 0, json.dumps([{"ifname": name} for name in self.kernel_links]), ""
        if argv[:1] == ["ip"]:
            return 0, "[]", ""
        answer = self.wg.get(" ".join(argv[1:]))
        return (0, answer, "") if answer is not None else (1, "", "Unable to access interface: Not permitted")


def managed(endpoint: str = ENDPOINT, fwmark: int = 0) -> WireGuardDevice:
    return WireGuardDevice("/org/freedesktop/NetworkManager/Devices/7", "wg0", fwmark, ((KEY, endpoint),))


def follow(tunnels: Tunnels, *events: SwitchEvent) -> None:
    async def go() -> None:
        for e in events:
            await tunnels.on_switch(e)

    asyncio.run(go())


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    found: list[str] = []
    sink = logger.add(lambda m: found.append(str(m)), level="WARNING", format="{message}")
    yield found
    logger.remove(sink)


def test_networkmanager_tunnel_is_moved_by_networkmanager_not_by_wg() -> None:
    nm = FakeNM([managed(fwmark=51820)])
    commands = FakeCommands({WIREGUARD_ENDPOINT: "wanb"}, {"show interfaces": ""})
    tunnels = Tunnels(AUTO, nm, commands, wg="wg", ip="ip")
    follow(tunnels, event("wanb"))
    assert nm.reapplied == ["/org/freedesktop/NetworkManager/Devices/7"]
    # The route is looked up as WireGuard's own packets are routed: with the tunnel's fwmark.
    assert ["ip", "-j", "route", "get", WIREGUARD_ENDPOINT, "mark", "51820"] in commands.calls
    assert not any(call[:2] == ["wg", "set"] for call in commands.calls)
    report = tunnels.status()
    assert report is not None and report.failed == {}
    assert report.moved == (TunnelMove(interface="wg0", peer=KEY, endpoint=ENDPOINT, via="wanb", by=BY_NM),)


def test_peer_routed_elsewhere_is_left_alone() -> None:
    nm = FakeNM([managed()])
    tunnels = Tunnels(AUTO, nm, FakeCommands({WIREGUARD_ENDPOINT: "wana"}), wg=None, ip="ip")
    follow(tunnels, event("wanb"))  # a route of its own keeps the endpoint on wana: not ours to move
    assert nm.reapplied == []
    report = tunnels.status()
    assert report is not None and report.moved == () and report.failed == {}


def test_a_name_in_the_profile_is_resolved_first() -> None:
    nm = FakeNM([managed(endpoint="localhost:51820")])
    commands = FakeCommands({"127.0.0.1": "lo", "::1": "lo"})
    follow(Tunnels(AUTO, nm, commands, wg=None, ip="ip"), event("lo"))
    assert nm.reapplied == [managed().path]


def test_a_tunnel_that_cannot_be_moved_is_logged_once_and_the_listener_returns(warnings: list[str]) -> None:
    nm = FakeNM([managed()], fail=NMError("Reapply failed: org.freedesktop.NetworkManager.Device.Failed: no"))
    wg = {"show interfaces": "", "show wgk fwmark": "off"}  # wgk's endpoints: "Not permitted"
    tunnels = Tunnels(AUTO, nm, FakeCommands({WIREGUARD_ENDPOINT: "wanb"}, wg), wg="wg", ip="ip")
    follow(tunnels, event(), event())
    report = tunnels.status()
    assert report is not None and list(report.failed) == ["wg0"]
    assert "NetworkManager could not reapply it" in report.failed["wg0"]
    lines = [w for w in warnings if "wg0" in w]
    assert len(lines) == 1, warnings  # the second switch's identical failure is not logged again
    assert "Device.Failed: no" in lines[0]


def test_wg_failure_and_missing_wg_are_reasons_not_crashes(warnings: list[str]) -> None:
    commands = FakeCommands({WIREGUARD_ENDPOINT: "wanb"}, {"show wgk fwmark": "off"})
    tunnels = Tunnels(("wgk",), FakeNM([]), commands, wg="wg", ip="ip")

    async def listed() -> list[str]:
        return ["wgk"]

    tunnels._wg_interfaces = listed  # type: ignore[method-assign]  # no such interface in this namespace
    follow(tunnels, event())
    report = tunnels.status()
    assert report is not None and report.follow == ("wgk",)
    assert report.failed == {"wgk": "wg show wgk endpoints: Unable to access interface: Not permitted"}
    assert any("WireGuard wgk not moved" in w for w in warnings)


def test_a_hung_command_never_holds_the_listener_beyond_its_timeout(warnings: list[str]) -> None:
    tunnels = Tunnels(AUTO, FakeNM([managed()]), FakeCommands({}, hang=True), wg=None, ip="ip", timeout=0.3)
    started = time.monotonic()
    follow(tunnels, event())
    assert time.monotonic() - started < 1.0
    report = tunnels.status()
    assert report is not None and report.failed == {"*": "gave up after 0.3 s"}
    assert any("gave up after 0.3 s" in w for w in warnings)


def test_a_named_tunnel_that_went_away_is_reported() -> None:
    nm = FakeNM([managed()])
    tunnels = Tunnels(("wg0", "wg7"), nm, FakeCommands({WIREGUARD_ENDPOINT: "wanb"}), wg=None, ip="ip")
    follow(tunnels, event())  # wg7 was there at start (check_names), not at this switch
    report = tunnels.status()
    assert report is not None and nm.reapplied == [managed().path]
    assert report.failed == {"wg7": "no such WireGuard interface any more"}


def test_off_does_nothing_and_reports_nothing() -> None:
    nm = FakeNM([managed()])
    commands = FakeCommands({WIREGUARD_ENDPOINT: "wanb"})
    tunnels = Tunnels((), nm, commands, wg="wg", ip="ip")
    follow(tunnels, event())
    assert nm.reapplied == [] and commands.calls == [] and tunnels.status() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", ("auto",)), ("", ()), ("off", ()), ("OFF", ()), (" wg0 , wg1 ", ("wg0", "wg1"))],
)
def test_setting_values(value: str, expected: tuple[str, ...]) -> None:
    env = {"NMFAILOVER_UPLINKS": "a,b", "NMFAILOVER_ENV_FILE": "", VARIABLE: value}
    assert load_settings(env).wireguard_follow == expected


def test_unknown_interface_is_a_configuration_error_naming_the_variable() -> None:
    env = {"NMFAILOVER_UPLINKS": "a,b", "NMFAILOVER_ENV_FILE": ""}
    nm = FakeNM([managed()])
    asyncio.run(
        check_names(
            load_settings({**env, VARIABLE: "wg0"}),
            nm,
            Tunnels(("wg0",), nm, FakeCommands({}), wg=None, ip="ip"),
        )
    )
    asyncio.run(check_names(load_settings({**env, VARIABLE: "auto"}), FakeNM([])))  # nothing to check
    with pytest.raises(ConfigError) as caught:
        asyncio.run(
            check_names(
                load_settings({**env, VARIABLE: "wg9"}),
                nm,
                Tunnels(("wg9",), nm, FakeCommands({}), wg=None, ip="ip"),
            )
        )
    assert (
        str(caught.value).startswith(VARIABLE) and "'wg9'" in str(caught.value) and "wg0" in str(caught.value)
    )


# -- without CAP_NET_ADMIN (the unit without the kernel-wireguard.conf drop-in) -----------------------------


WGK_PEERS = {"show wgk fwmark": "off", "show wgk endpoints": f"{OTHER_KEY}\t{ENDPOINT}\n"}


def test_without_cap_net_admin_a_kernel_tunnel_is_a_failure_naming_the_drop_in(warnings: list[str]) -> None:
    nm = FakeNM([managed()])
    commands = FakeCommands({WIREGUARD_ENDPOINT: "wanb"}, WGK_PEERS, kernel_links=["wg0", "wgk"])
    tunnels = Tunnels(AUTO, nm, commands, wg=None, ip="ip", net_admin=False)
    follow(tunnels, event())
    report = tunnels.status()
    # NetworkManager's own tunnel needs no capability of ours and still moves; wg is never tried on wgk.
    assert report is not None and nm.reapplied == [managed().path]
    assert report.failed == {"wgk": NEEDS_NET_ADMIN}
    assert not any(call[:1] == ["wg"] for call in commands.calls)
    assert any("WireGuard wgk not moved" in w and "kernel-wireguard.conf" in w for w in warnings)


def test_with_cap_net_admin_the_kernel_tunnel_is_moved_by_wg() -> None:
    commands = FakeCommands(
        {WIREGUARD_ENDPOINT: "wanb"}, {**WGK_PEERS, f"set wgk peer {OTHER_KEY} endpoint {ENDPOINT}": ""}
    )
    tunnels = Tunnels(AUTO, FakeNM([]), commands, wg="wg", ip="ip", net_admin=True)

    async def listed() -> list[str]:
        return ["wgk"]

    tunnels._wg_interfaces = listed  # type: ignore[method-assign]  # no such interface in this namespace
    follow(tunnels, event())
    report = tunnels.status()
    assert report is not None and report.failed == {}
    assert ["wg", "set", "wgk", "peer", OTHER_KEY, "endpoint", ENDPOINT] in commands.calls


def test_a_userspace_tunnel_needs_no_cap_net_admin() -> None:
    wg = {**WGK_PEERS, f"set wgk peer {OTHER_KEY} endpoint {ENDPOINT}": ""}
    commands = FakeCommands({WIREGUARD_ENDPOINT: "wanb"}, wg, kernel_links=[])  # wireguard-go: a tun device
    tunnels = Tunnels(AUTO, FakeNM([]), commands, wg="wg", ip="ip", net_admin=False)

    async def listed() -> list[str]:
        return ["wgk"]

    tunnels._wg_interfaces = listed  # type: ignore[method-assign]
    follow(tunnels, event())
    report = tunnels.status()
    assert report is not None and report.failed == {} and len(report.moved) == 1


def test_at_start_a_named_kernel_tunnel_without_cap_net_admin_is_a_configuration_error() -> None:
    settings = load_settings({"NMFAILOVER_UPLINKS": "a,b", "NMFAILOVER_ENV_FILE": "", VARIABLE: "wgk"})
    commands = FakeCommands({}, kernel_links=["wgk"])
    with pytest.raises(ConfigError) as caught:
        asyncio.run(
            check_names(
                settings,
                FakeNM([]),
                Tunnels(("wgk",), FakeNM([]), commands, wg=None, ip="ip", net_admin=False),
            )
        )
    assert str(caught.value).startswith(VARIABLE) and "'wgk'" in str(caught.value)
    assert "CAP_NET_ADMIN" in str(caught.value) and "kernel-wireguard.conf" in str(caught.value)
    # With the capability the same configuration starts.
    asyncio.run(
        check_names(
            settings, FakeNM([]), Tunnels(("wgk",), FakeNM([]), commands, wg=None, ip="ip", net_admin=True)
        )
    )


def test_at_start_auto_logs_an_error_for_each_kernel_tunnel_it_cannot_move() -> None:
    settings = load_settings({"NMFAILOVER_UPLINKS": "a,b", "NMFAILOVER_ENV_FILE": ""})
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR", format="{message}")
    try:
        for net_admin in (True, False):
            commands = FakeCommands({}, kernel_links=["wgk"])
            tunnels = Tunnels(AUTO, FakeNM([managed()]), commands, wg=None, ip="ip", net_admin=net_admin)
            asyncio.run(check_names(settings, FakeNM([managed()]), tunnels))  # never an exit: auto
    finally:
        logger.remove(sink)
    assert len(errors) == 1 and "WireGuard wgk will not follow" in errors[0], errors
    assert "kernel-wireguard.conf" in errors[0]


def test_status_text_names_the_moved_tunnels(capsys: pytest.CaptureFixture[str]) -> None:
    moved = TunnelMove(interface="wg0", peer=KEY, endpoint=ENDPOINT, via="wanb", by=BY_WG)
    cli._print_tunnels(
        TunnelsStatus(follow="auto", switch_at=1.0, moved=(moved,), failed={"wg1": "no route"})
    )
    cli._print_tunnels(TunnelsStatus(follow="auto", switch_at=None, moved=(), failed={}))  # no switch yet
    assert capsys.readouterr().out.splitlines() == [
        f"WireGuard moved at the last switch: wg0 ({ENDPOINT} via wanb, by wg)",
        "WireGuard wg1 not moved: no route",
    ]


# -- in the lab: wireguard-go through both uplinks ----------------------------------------------------------


@pytest.fixture
def wglab(lab_machine: None) -> Iterator[tuple[NMLab, WireGuardPeer]]:
    reason = wireguard_available()
    if reason is not None:
        # CI installs both (scripts/bootstrap): a skip there would hide that this test never ran.
        if os.environ.get("CI") == "true":
            pytest.fail(f"WireGuard lab unavailable in CI: {reason}")
        pytest.skip(reason)
    with NMLab(2) as lab:
        yield lab, add_wireguard_peer(lab)


def _fail_over(lab: NMLab) -> float:
    """Kill the primary's upstream silently; the monotonic time the default route left it."""
    lab.upstreams[0].blackhole()
    wait_for(lambda: lab.default_route(4) == "wanb", 15, "the IPv4 default route on wanb", step=0.005)
    return time.monotonic()


def test_without_the_option_the_tunnel_stays_dead_after_failover(
    wglab: tuple[NMLab, WireGuardPeer], tmp_path: Path
) -> None:
    lab, peer = wglab
    with running_daemon(lab, tmp_path / "daemon.log", wireguard_follow="off") as daemon:
        daemon.wait_log(r"ready: traffic on primary \(wana\)")
        assert peer.ping(1.0)
        switched = _fail_over(lab)
        answered = [peer.ping(0.5) for _ in range(6)]
        assert not any(answered), "the tunnel recovered by itself: this test proves nothing"
        assert time.monotonic() - switched > 3
        assert status(lab)["tunnels"] is None
        assert "WireGuard" not in daemon.text()
        assert daemon.stop() == 0


def test_tunnel_follows_a_silent_failover_within_2_s(
    wglab: tuple[NMLab, WireGuardPeer], tmp_path: Path
) -> None:
    lab, peer = wglab
    backup = lab.upstreams[1]
    with running_daemon(lab, tmp_path / "daemon.log") as daemon:  # the option's default: auto
        daemon.wait_log(r"ready: traffic on primary \(wana\)")
        assert peer.ping(1.0)
        received = peer.received_from()
        switched = _fail_over(lab)
        recovered = wait_for(lambda: peer.ping(0.1), 10, "traffic through the tunnel", step=0.0)
        took = time.monotonic() - switched
        print(f"\ntunnel recovery after the switch: {took:.3f} s (polling took {recovered:.3f} s)")
        assert took < RECOVERY_LIMIT, f"the tunnel passed traffic only {took:.2f} s after the switch"
        # The peer now hears the tunnel through the backup's upstream, from the backup's address: wireguard-go
        # picked the new source once its endpoint was set again.
        after = peer.received_from()
        assert after["upb"] > received["upb"]
        peer_side = peer.wg("show", peer.peer_iface, "endpoints")
        assert f"{backup.address4}:" in peer_side, peer_side
        daemon.wait_log(r"WireGuard followed the switch to wanb")

        report = status(lab)["tunnels"]
        assert report["follow"] == "auto" and report["failed"] == {}
        assert report["moved"] == [
            {
                "interface": peer.host_iface,
                "peer": peer.peer_public_key,
                "endpoint": ENDPOINT,
                "via": "wanb",
                "by": BY_WG,
            }
        ]
        text = run_cli(lab, "status").stdout
        assert f"WireGuard moved at the last switch: {peer.host_iface} ({ENDPOINT} via wanb, by wg)" in text
        assert daemon.stop() == 0
