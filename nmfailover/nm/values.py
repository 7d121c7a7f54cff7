"""What the client hands the rest of the package: NetworkManager's profiles, active connections and links
as typed values (no D-Bus in them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .names import DeviceState, DeviceType, Metered

# Phones tethered over USB (Android's RNDIS or NCM, iPhones) and USB 4G sticks in router mode: NetworkManager
# sees plain ethernet and, without DHCP's ANDROID_METERED hint, guesses "not metered".
USB_TETHERING_DRIVERS = frozenset({"rndis_host", "cdc_ether", "cdc_ncm", "ipheth"})


@dataclass(frozen=True)
class Dns:
    """What a connection resolves names with: its ipv4.dns and ipv6.dns as one list (each address goes to
    its own family, in this order) and its ipv4/ipv6 dns-priority (0: NetworkManager's default, 100, or 50
    for a VPN). NetworkManager orders resolv.conf by dns-priority, and with systemd-resolved only the
    connections of the best priority get the DNS default route ("~.")."""

    servers: tuple[str, ...] = ()
    priority4: int = 0
    priority6: int = 0


@dataclass(frozen=True)
class Profile:
    spec: str  # as the user wrote it
    uuid: str
    id: str
    interface_name: str | None  # connection.interface-name, if the profile is bound to one
    metric4: int  # the profile's own ipv4.route-metric (-1: NM's default)
    metric6: int
    autoconnect_priority: int
    never_default: bool  # ipv4.never-default: such a profile can never carry the default route
    metered: Metered = Metered.UNKNOWN  # connection.metered as saved: what a stop puts back on the device
    dns: Dns = Dns()  # its resolvers as saved: what giving DNS back puts on the device
    mptcp_flags: int = 0  # connection.mptcp-flags as saved (0: NetworkManager's default)


class Tethering(Enum):
    """How a device shows it belongs to a phone or a mobile modem."""

    MODEM = "modem"  # ModemManager's (4G/5G sticks and cards, Bluetooth DUN)
    BLUETOOTH = "bluetooth"  # a phone's Bluetooth PAN
    USB = "usb"  # a phone tethered over USB, or a stick in router mode: plain ethernet to NetworkManager


def phone_or_modem(device_type: DeviceType, driver: str) -> Tethering | None:
    if device_type == DeviceType.MODEM:
        return Tethering.MODEM
    if device_type == DeviceType.BT:
        return Tethering.BLUETOOTH
    if driver in USB_TETHERING_DRIVERS:
        return Tethering.USB
    return None


@dataclass(frozen=True)
class Candidate:
    """An active connection as NetworkManager shows it (NetworkManagerClient.active_candidates)."""

    profile: Profile
    connection_type: str  # connection.type
    interface: str
    device_type: DeviceType = DeviceType.UNKNOWN  # of the device it is active on
    driver: str = ""
    metered: Metered = Metered.UNKNOWN  # the device's: the profile's own value or NetworkManager's guess
    port: bool = False  # a bridge's, bond's or team's port: its controller carries the addresses
    vpn: bool = False
    addressed: bool = True  # IPv4 or IPv6 configured at all (a bridge for VMs only may have neither)


@dataclass(frozen=True)
class LinkState:
    uuid: str
    device: str | None = None  # D-Bus path of the device the profile is active on
    interface: str | None = None  # the IP interface to bind probes to
    state: DeviceState = DeviceState.UNKNOWN  # UNKNOWN also when the profile is not active anywhere
    nameservers: tuple[str, ...] = ()
    gateway4: str | None = None
    gateway6: str | None = None
    device_type: DeviceType = DeviceType.UNKNOWN
    driver: str = ""
    metered: Metered = Metered.UNKNOWN  # the device's Metered: its applied connection's value, or NM's guess
    # What the uplink's own packets carry as source: each IPv4 address (/32), and each IPv6 prefix, which
    # also covers the privacy addresses the kernel keeps rotating. Link-local ones never leave the link.
    sources4: tuple[str, ...] = ()
    sources6: tuple[str, ...] = ()
    active: str | None = None  # D-Bus path of its active connection: a re-activation makes a new one

    @property
    def activated(self) -> bool:
        return self.state == DeviceState.ACTIVATED and self.interface is not None

    @property
    def state_name(self) -> str:
        return "inactive" if self.state == DeviceState.UNKNOWN else self.state.word

    @property
    def metered_name(self) -> str | None:
        """The device's Metered as NetworkManager names it; None while the profile is not active."""
        return self.metered.word if self.device is not None else None

    @property
    def kind(self) -> str:
        """wireless, cellular (a modem or a tethered phone) or wired (everything else: ethernet, veth,
        bridges...), as a desktop's icons tell uplinks apart."""
        if self.device_type == DeviceType.WIFI:
            return "wireless"
        return "cellular" if phone_or_modem(self.device_type, self.driver) else "wired"

    @property
    def looks_mobile(self) -> str | None:
        """Why this link looks like a mobile modem or a phone's hotspot, or None."""
        if self.device is None:
            return None
        match phone_or_modem(self.device_type, self.driver):
            case Tethering.MODEM:
                return "a mobile broadband modem"
            case Tethering.BLUETOOTH:
                return "a Bluetooth tethered phone"
            case Tethering.USB:
                return f"a USB-tethered phone or modem (driver {self.driver})"
        if self.metered == Metered.GUESS_YES:
            return "metered by NetworkManager's own guess"
        return None


@dataclass(frozen=True)
class Metrics:
    """What a device's applied connection runs with."""

    metric4: int | None
    metric6: int | None
    metered: Metered = Metered.UNKNOWN  # connection.metered
    # The tables its routing rules (IPv4 and IPv6) look up; by keyword only, as it came after the others.
    rule_tables: frozenset[int] = field(default=frozenset(), kw_only=True)


@dataclass(frozen=True)
class WireGuardDevice:
    """An activated WireGuard device of NetworkManager's: what tunnels.py needs to decide on a move."""

    path: str  # D-Bus path of the device
    interface: str
    fwmark: int  # the link's fwmark: the endpoint's route lookup carries it (0: none)
    peers: tuple[tuple[str, str], ...]  # (public key, endpoint as in the profile: host:port, or "")
