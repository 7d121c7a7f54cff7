"""Which active connections are uplinks and in which order, by tables (nmfailover.discovery)."""

from __future__ import annotations

import pytest

from nmfailover.discovery import Kind, choose, kind_of, rank
from nmfailover.nm import Candidate, DeviceType, Metered, Profile

ETHERNET, WIFI, BLUETOOTH, GSM = "802-3-ethernet", "802-11-wireless", "bluetooth", "gsm"


def candidate(
    name: str,
    kind: str = ETHERNET,
    *,
    metric: int = -1,
    device_type: DeviceType = DeviceType.ETHERNET,
    driver: str = "e1000e",
    metered: Metered = Metered.UNKNOWN,
    saved_metered: Metered = Metered.UNKNOWN,
    never_default: bool = False,
    port: bool = False,
    vpn: bool = False,
    addressed: bool = True,
) -> Candidate:
    profile = Profile(name, f"uuid-{name}", name, None, metric, -1, 0, never_default, metered=saved_metered)
    return Candidate(profile, kind, f"if-{name}", device_type, driver, metered, port, vpn, addressed)


KIND_CASES: list[tuple[str, Candidate, Kind | str]] = [
    ("ethernet", candidate("a"), Kind.WIRED),
    ("wi-fi", candidate("a", WIFI, device_type=DeviceType.WIFI), Kind.WIFI),
    ("an Android phone over USB", candidate("a", driver="rndis_host"), Kind.TETHERED),
    ("an iPhone over USB", candidate("a", driver="ipheth"), Kind.TETHERED),
    ("Bluetooth PAN", candidate("a", BLUETOOTH, device_type=DeviceType.BT), Kind.TETHERED),
    ("Bluetooth DUN through ModemManager", candidate("a", BLUETOOTH, device_type=DeviceType.MODEM), Kind.MOBILE),
    ("a 4G modem", candidate("a", GSM, device_type=DeviceType.MODEM), Kind.MOBILE),
    ("PPPoE over the fiber box", candidate("a", "pppoe"), Kind.WIRED),
    ("a bridge holding the address", candidate("a", "bridge"), Kind.WIRED),
    ("a VPN", candidate("a", "vpn", vpn=True), "a VPN rides on an uplink"),
    ("WireGuard", candidate("a", "wireguard"), "a wireguard connection carries no default route of its own"),
    ("loopback", candidate("a", "loopback"), "a loopback connection carries no default route of its own"),
    ("a bridge's port", candidate("a", port=True), "a port of a bridge, bond or team: its controller is the uplink"),
    ("never-default", candidate("a", never_default=True), "ipv4.never-default=yes: it never carries the default route"),
    ("a bridge for VMs only", candidate("a", "bridge", addressed=False), "neither IPv4 nor IPv6 configured: it carries no route at all"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("candidate", "expected"), [c[1:] for c in KIND_CASES], ids=[c[0] for c in KIND_CASES]
)
def test_kind_of(candidate: Candidate, expected: Kind | str) -> None:
    assert kind_of(candidate) == expected


ORDER_CASES: list[tuple[str, list[Candidate], list[str]]] = [
    (
        "wired, then Wi-Fi, then a tethered phone, then a modem, whatever NetworkManager's order",
        [
            candidate("lte", GSM, device_type=DeviceType.MODEM),
            candidate("phone", driver="cdc_ncm"),
            candidate("home", WIFI, device_type=DeviceType.WIFI),
            candidate("fiber"),
        ],
        ["fiber", "home", "phone", "lte"],
    ),
    (
        "metered last, even wired: a 4G router on a port, marked in its profile",
        [candidate("4g-router", saved_metered=Metered.YES), candidate("home", WIFI, device_type=DeviceType.WIFI)],
        ["home", "4g-router"],
    ),
    (
        "NetworkManager's own guess counts (DHCP's ANDROID_METERED hint on a hotspot)",
        [candidate("hotspot", WIFI, device_type=DeviceType.WIFI, metered=Metered.GUESS_YES), candidate("cafe", WIFI, device_type=DeviceType.WIFI)],
        ["cafe", "hotspot"],
    ),
    (
        "an explicit no does not make a modem unmetered: it is the kind that is metered",
        [candidate("lte", GSM, device_type=DeviceType.MODEM, saved_metered=Metered.NO), candidate("wifi", WIFI)],
        ["wifi", "lte"],
    ),
    (
        "same kind: the profile's own route metric, then the name",
        [candidate("b", metric=200), candidate("z"), candidate("a"), candidate("c", metric=100)],
        ["c", "b", "a", "z"],
    ),
    (
        "what cannot be an uplink is left out",
        [candidate("vpn", "vpn", vpn=True), candidate("eth"), candidate("port", port=True), candidate("wifi", WIFI)],
        ["eth", "wifi"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("candidates", "order"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES]
)
def test_order(candidates: list[Candidate], order: list[str]) -> None:
    ranked, _ = rank(candidates)
    assert [r.profile.id for r in ranked] == order
    # Any order NetworkManager lists them in gives the same.
    ranked_back, _ = rank(candidates[::-1])
    assert [r.profile.id for r in ranked_back] == order


def test_each_says_why() -> None:
    choice = choose(
        [
            candidate("fiber", metric=100),
            candidate("phone", driver="rndis_host"),
            candidate("vpn", "vpn", vpn=True),
        ],
        limit=8,
    )
    assert [r.why for r in choice.uplinks] == [
        "wired, route metric 100",
        "tethered, metered (a phone or modem)",
    ]
    assert [(x.candidate.profile.id, x.why) for x in choice.left] == [("vpn", "a VPN rides on an uplink")]


def test_beyond_the_limit_is_left_out_with_the_reason() -> None:
    choice = choose([candidate(f"eth{i}", metric=i) for i in range(4)], limit=2)
    assert [r.profile.id for r in choice.uplinks] == ["eth0", "eth1"]
    assert [x.why for x in choice.left] == ["beyond the first 2 uplinks"] * 2


def test_a_profile_listed_twice_is_one_uplink() -> None:
    # NetworkManager lists a re-activated profile twice for a moment: the new activation and the old one.
    ranked, _ = rank([candidate("wifi", WIFI), candidate("eth"), candidate("wifi", WIFI)])
    assert [r.profile.id for r in ranked] == ["eth", "wifi"]
