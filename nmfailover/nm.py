"""NetworkManager over D-Bus: the only module that knows NetworkManager's names, paths and shapes.

It speaks plain D-Bus messages (no introspection proxies), which keeps the same code working on dbus-fast
and on dbus-next (see bus.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from loguru import logger

from .bus import BusType, Message, MessageBus, MessageType, Variant
from .errors import NMAccessDenied, NMError, NMLinkChanged, NMUnavailable, ProfileError

NM_BUS = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
SETTINGS_PATH = "/org/freedesktop/NetworkManager/Settings"
IFACE_NM = NM_BUS
IFACE_DEVICE = f"{NM_BUS}.Device"
IFACE_SETTINGS = f"{NM_BUS}.Settings"
IFACE_CONNECTION = f"{NM_BUS}.Settings.Connection"
IFACE_WIRED = f"{NM_BUS}.Device.Wired"
IFACE_ACTIVE = f"{NM_BUS}.Connection.Active"
IFACE_IP4 = f"{NM_BUS}.IP4Config"
IFACE_IP6 = f"{NM_BUS}.IP6Config"
IFACE_PROPERTIES = "org.freedesktop.DBus.Properties"

DEVICE_STATE_ACTIVATED = 100
ACTIVE_CONNECTION_DEACTIVATING = 3  # NMActiveConnectionState; 4 is deactivated
DEVICE_TYPE_WIFI = 2
DEVICE_TYPE_BT = 5
DEVICE_TYPE_MODEM = 8
UPDATE2_IN_MEMORY = 0x2
UPDATE2_NO_REAPPLY = 0x40
CALL_TIMEOUT = 10.0

# NM sends legacy keys next to their replacements and, given both, prefers the legacy one: an edited
# dict sent back with them intact would silently lose changes. Drop a legacy key only when its
# replacement is present, so nothing is lost on versions that lack the replacement.
_LEGACY_KEYS = {
    "addresses": "address-data",
    "address-labels": "address-data",
    "routes": "route-data",
    "dns": "dns-data",
}

DEVICE_STATES = {
    10: "unmanaged",
    20: "unavailable",
    30: "disconnected",
    40: "preparing",
    50: "configuring",
    60: "need-auth",
    70: "ip-config",
    80: "ip-check",
    90: "secondaries",
    100: "activated",
    110: "deactivating",
    120: "failed",
}

# NMMetered: the values of a device's and of NetworkManager's own Metered property. A profile's
# connection.metered takes only the first three (NetworkManager refuses guesses there, also in Reapply).
METERED_UNKNOWN, METERED_YES, METERED_NO, METERED_GUESS_YES, METERED_GUESS_NO = 0, 1, 2, 3, 4
METERED_NAMES = {
    METERED_UNKNOWN: "unknown",
    METERED_YES: "yes",
    METERED_NO: "no",
    METERED_GUESS_YES: "guess-yes",
    METERED_GUESS_NO: "guess-no",
}
# Phones tethered over USB (Android's RNDIS or NCM, iPhones) and USB 4G sticks in router mode: NetworkManager
# sees plain ethernet and, without DHCP's ANDROID_METERED hint, guesses "not metered".
USB_TETHERING_DRIVERS = frozenset({"rndis_host", "cdc_ether", "cdc_ncm", "ipheth"})

Settings = dict[str, dict[str, Any]]


ERROR_UNAVAILABLE = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    }
)
ERROR_DENIED = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.NetworkManager.PermissionDenied",
        "org.freedesktop.NetworkManager.Settings.PermissionDenied",
        "org.freedesktop.NetworkManager.Device.PermissionDenied",
    }
)
ERROR_LINK_CHANGED = frozenset(
    {
        "org.freedesktop.NetworkManager.Device.NotActive",
        "org.freedesktop.DBus.Error.UnknownObject",
        # GDBus's answer for a device object that is gone (NetworkManager restarted, the device removed).
        "org.freedesktop.DBus.Error.UnknownMethod",
    }
)
# Set on a bridge's, bond's or team's port (older and newer names).
_PORT_KEYS = ("master", "controller", "slave-type", "port-type")
ERROR_NO_SUCH_PROFILE = "org.freedesktop.NetworkManager.Settings.InvalidConnection"
ERROR_VERSION_MISMATCH = "org.freedesktop.NetworkManager.Device.VersionIdMismatch"


# -- typed events: what the engine hears from NetworkManager ----------------------------------------------


@dataclass(frozen=True)
class CarrierChanged:
    """A wired device's carrier: NetworkManager acts on a lost one seconds later, this comes at once."""

    device: str
    carrier: bool


@dataclass(frozen=True)
class DeviceStateChanged:
    device: str
    new_state: int
    old_state: int


@dataclass(frozen=True)
class DevicesChanged:
    """A device appeared or vanished."""

    device: str
    added: bool


@dataclass(frozen=True)
class ProfilesChanged:
    """A connection profile was added, changed or removed."""

    path: str


@dataclass(frozen=True)
class ActiveConnectionsChanged:
    pass


@dataclass(frozen=True)
class MeteredChanged:
    """A device's Metered property changed: the burst it arrives in re-reads the links, so status is fresh."""

    device: str
    metered: int


@dataclass(frozen=True)
class IpConfigChanged:
    """A device's addresses or gateway changed (DHCP, SLAAC, a new lease): `path` is its IP4Config or
    IP6Config object, so the burst it arrives in re-reads every link."""

    path: str


@dataclass(frozen=True)
class NMStarted:
    """NetworkManager (re)appeared on the bus, or our bus connection was re-established."""


@dataclass(frozen=True)
class NMStopped:
    pass


NMEvent = (
    CarrierChanged
    | DeviceStateChanged
    | DevicesChanged
    | ProfilesChanged
    | ActiveConnectionsChanged
    | MeteredChanged
    | IpConfigChanged
    | NMStarted
    | NMStopped
)


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
    metered: int = METERED_UNKNOWN  # connection.metered as saved: what a stop puts back on the device
    dns: Dns = Dns()  # its resolvers as saved: what giving DNS back puts on the device
    mptcp_flags: int = 0  # connection.mptcp-flags as saved (0: NetworkManager's default)


class Tethering(Enum):
    """How a device shows it belongs to a phone or a mobile modem."""

    MODEM = "modem"  # ModemManager's (4G/5G sticks and cards, Bluetooth DUN)
    BLUETOOTH = "bluetooth"  # a phone's Bluetooth PAN
    USB = "usb"  # a phone tethered over USB, or a stick in router mode: plain ethernet to NetworkManager


def phone_or_modem(device_type: int, driver: str) -> Tethering | None:
    if device_type == DEVICE_TYPE_MODEM:
        return Tethering.MODEM
    if device_type == DEVICE_TYPE_BT:
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
    device_type: int = 0  # NMDeviceType of the device it is active on
    driver: str = ""
    metered: int = METERED_UNKNOWN  # the device's Metered: the profile's own value or NetworkManager's guess
    port: bool = False  # a bridge's, bond's or team's port: its controller carries the addresses
    vpn: bool = False
    addressed: bool = True  # IPv4 or IPv6 configured at all (a bridge for VMs only may have neither)


@dataclass(frozen=True)
class LinkState:
    uuid: str
    device: str | None = None  # D-Bus path of the device the profile is active on
    interface: str | None = None  # the IP interface to bind probes to
    state: int = 0  # device state; 0 when the profile is not active anywhere
    nameservers: tuple[str, ...] = ()
    gateway4: str | None = None
    gateway6: str | None = None
    device_type: int = 0  # NMDeviceType
    driver: str = ""
    metered: int = METERED_UNKNOWN  # the device's Metered: its applied connection's value, or NM's guess
    # What the uplink's own packets carry as source: each IPv4 address (/32), and each IPv6 prefix, which
    # also covers the privacy addresses the kernel keeps rotating. Link-local ones never leave the link.
    sources4: tuple[str, ...] = ()
    sources6: tuple[str, ...] = ()
    active: str | None = None  # D-Bus path of its active connection: a re-activation makes a new one

    @property
    def activated(self) -> bool:
        return self.state == DEVICE_STATE_ACTIVATED and self.interface is not None

    @property
    def state_name(self) -> str:
        return DEVICE_STATES.get(self.state, "inactive" if self.state == 0 else str(self.state))

    @property
    def metered_name(self) -> str | None:
        """The device's Metered as NetworkManager names it; None while the profile is not active."""
        return METERED_NAMES.get(self.metered, str(self.metered)) if self.device is not None else None

    @property
    def kind(self) -> str:
        """wireless, cellular (a modem or a tethered phone) or wired (everything else: ethernet, veth,
        bridges...), as a desktop's icons tell uplinks apart."""
        if self.device_type == DEVICE_TYPE_WIFI:
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
        if self.metered == METERED_GUESS_YES:
            return "metered by NetworkManager's own guess"
        return None


@dataclass(frozen=True)
class Metrics:
    """What a device's applied connection runs with."""

    metric4: int | None
    metric6: int | None
    metered: int = METERED_UNKNOWN  # connection.metered
    # The tables its routing rules (IPv4 and IPv6) look up; by keyword only, as it came after the others.
    rule_tables: frozenset[int] = field(default=frozenset(), kw_only=True)


# -- routing by source address: the shapes of ipv4/ipv6 route-data and routing-rules --------------------

MAIN_TABLE = 254
_ADDRESS_FAMILY = {4: 2, 6: 10}  # AF_INET, AF_INET6: a routing rule's "family"
_DEFAULT_DESTINATION = {4: "0.0.0.0", 6: "::"}
_ROUTE_KEYS = ("dest", "prefix", "next-hop", "metric", "table")
# Fixed, so a Reapply of the device's metrics at every switch leaves the table's route alone: without one it
# follows ipv4.route-metric, and NetworkManager replaces it with each new metric.
SOURCE_ROUTE_METRIC = 10
_RULE_KEYS = ("priority", "family", "from", "from-len", "table", "suppress-prefixlength")


@dataclass(frozen=True)
class Restore:
    """What a device's applied connection gets back when the daemon stops, in one Reapply."""

    metric4: int
    metric6: int
    source_routing: SourceRouting | None = None  # "none of ours" (SourceRouting(table, priority)) or None
    ipv6_back: bool = False  # its IPv6 default route back, with the gateway it had
    ipv6_gateway: str | None = None
    metered: int | None = None  # connection.metered back to this
    dns: Dns | None = None  # its resolvers and dns-priority back to these
    resolver_routes: ResolverRoutes | None = None  # ResolverRoutes(): none of ours on this device
    mptcp_flags: int | None = None  # connection.mptcp-flags back to this


# A host route of the main table with this metric leads another uplink's lookups to one of this uplink's
# resolvers (set_resolver_routes); the metric is how ours are told from everyone else's.
RESOLVER_ROUTE_METRIC = 7
_HOST_PREFIX = {4: 32, 6: 128}
# Families NetworkManager configures no resolvers on (it refuses ipv4.dns or ipv6.dns with these methods).
_NO_DNS_METHODS = frozenset({"disabled", "ignore", "link-local", "shared"})


@dataclass(frozen=True)
class ResolverRoutes:
    """Host routes through this device's gateway to `servers` (its own resolvers), so that queries from the
    machine reach them through this uplink whichever uplink holds the default route: an ISP's resolvers
    often answer their own customers only, and a mobile carrier's often have private addresses.
    ResolverRoutes() stands for "none of ours on this device"."""

    servers: tuple[str, ...] = ()
    gateway4: str | None = None
    gateway6: str | None = None

    def route_data(self, version: int) -> list[dict[str, Variant]]:
        gateway = self.gateway4 if version == 4 else self.gateway6
        if not gateway:
            return []
        return [
            {
                "dest": Variant("s", server.partition("#")[0]),
                "prefix": Variant("u", _HOST_PREFIX[version]),
                "next-hop": Variant("s", gateway),
                "metric": Variant("u", RESOLVER_ROUTE_METRIC),
                "table": Variant("u", MAIN_TABLE),
            }
            for server in self.servers
            if resolver_version(server) == version
        ]


@dataclass(frozen=True)
class SourceRouting:
    """An uplink's own routing table and the rules that send the traffic of its own addresses there.

    Per address family with both a gateway and sources: a default route via the gateway in `table`; at
    `priority`, "from SOURCE lookup main suppress_prefixlength 0" (the main table's specific routes, such as
    the LAN or a VPN, still win; only its default route is skipped); at `priority` + 1, "from SOURCE lookup
    table". Without any (SourceRouting(table, priority)) it stands for "none of ours on this device".
    """

    table: int
    priority: int
    gateway4: str | None = None
    sources4: tuple[str, ...] = ()
    gateway6: str | None = None
    sources6: tuple[str, ...] = ()

    def family(self, version: int) -> tuple[str | None, tuple[str, ...]]:
        """(gateway, sources) of IPv4 or IPv6; both are needed for the family to be routed by source."""
        return (self.gateway4, self.sources4) if version == 4 else (self.gateway6, self.sources6)

    def routed(self, version: int) -> bool:
        gateway, sources = self.family(version)
        return bool(gateway and sources)

    @property
    def active(self) -> bool:
        return self.routed(4) or self.routed(6)

    def describe_routes(self) -> list[str]:
        """The routes as `ip route show table N` lists them."""
        return [
            f"default via {self.family(v)[0]} table {self.table} metric {SOURCE_ROUTE_METRIC}"
            for v in (4, 6)
            if self.routed(v)
        ]

    def describe_rules(self) -> list[str]:
        """The rules as `ip rule` lists them."""
        found = []
        for version in (4, 6):
            if self.routed(version):
                for source in self.family(version)[1]:
                    found.append(f"{self.priority}: from {source} lookup main suppress_prefixlength 0")
                    found.append(f"{self.priority + 1}: from {source} lookup {self.table}")
        return found

    def route_data(self, version: int) -> list[dict[str, Variant]]:
        gateway, _ = self.family(version)
        if not self.routed(version):
            return []
        return [
            {
                "dest": Variant("s", _DEFAULT_DESTINATION[version]),
                "prefix": Variant("u", 0),
                "next-hop": Variant("s", gateway),
                "metric": Variant("u", SOURCE_ROUTE_METRIC),
                "table": Variant("u", self.table),
            }
        ]

    def rule_data(self, version: int) -> list[dict[str, Variant]]:
        if not self.routed(version):
            return []
        found = []
        for source in self.family(version)[1]:
            address, _, length = source.partition("/")
            common = {
                "family": Variant("i", _ADDRESS_FAMILY[version]),
                "from": Variant("s", address),
                "from-len": Variant("y", int(length)),
            }
            found.append(
                {
                    **common,
                    "priority": Variant("u", self.priority),
                    "table": Variant("u", MAIN_TABLE),
                    "suppress-prefixlength": Variant("i", 0),
                }
            )
            found.append(
                {**common, "priority": Variant("u", self.priority + 1), "table": Variant("u", self.table)}
            )
        return found

    def owns_route(self, route: dict[str, Any]) -> bool:
        return bool(_unwrap(route.get("table", 0)) == self.table)

    def owns_rule(self, rule: dict[str, Any]) -> bool:
        table = int(_unwrap(rule.get("table", 0)))
        if table == self.table:
            return True
        return (
            table == MAIN_TABLE
            and int(_unwrap(rule.get("priority", -1))) == self.priority
            and int(_unwrap(rule.get("suppress-prefixlength", -1))) == 0
        )


# -- WireGuard devices (tunnels.py) --------------------------------------------------------------------

DEVICE_TYPE_WIREGUARD = 29  # NMDeviceType NM_DEVICE_TYPE_WIREGUARD
IFACE_WIREGUARD = f"{NM_BUS}.Device.WireGuard"


@dataclass(frozen=True)
class WireGuardDevice:
    """An activated WireGuard device of NetworkManager's: what tunnels.py needs to decide on a move."""

    path: str  # D-Bus path of the device
    interface: str
    fwmark: int  # the link's fwmark: the endpoint's route lookup carries it (0: none)
    peers: tuple[tuple[str, str], ...]  # (public key, endpoint as in the profile: host:port, or "")


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, Variant) else value


def _strip_legacy(settings: Settings) -> Settings:
    for family in ("ipv4", "ipv6"):
        section = settings.get(family)
        if section is None:
            continue
        for legacy, replacement in _LEGACY_KEYS.items():
            if legacy in section and replacement in section:
                del section[legacy]
    return settings


def _nameservers(ip4: dict[str, Any], ip6: dict[str, Any]) -> tuple[str, ...]:
    found = [
        str(_unwrap(entry["address"]))
        for entry in _unwrap(ip4.get("NameserverData", [])) or []
        if "address" in entry
    ]
    found += [str(ipaddress.IPv6Address(bytes(raw))) for raw in _unwrap(ip6.get("Nameservers", [])) or []]
    return tuple(found)


class NetworkManagerClient:
    """One bus connection to NetworkManager: subscribe to its signals, then read state on demand.

    `on_event` is called (from the bus reader, so it must not block) with a typed event whenever something
    about devices, active connections, profiles or NetworkManager's presence changed.
    """

    def __init__(self, on_event: Callable[[NMEvent], None] = lambda _: None) -> None:
        self._on_event = on_event
        self._bus: Any = None

    async def connect(self) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except Exception as exc:
            from .system_files import bus_connect_error  # names the socket and what to check

            raise NMUnavailable(bus_connect_error(exc)) from exc
        self._bus = bus
        bus.add_message_handler(self._handle_message)
        name_owner = f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{NM_BUS}'"
        for rule in (f"type='signal',sender='{NM_BUS}'", name_owner):
            await self._call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
                "s",
                [rule],
            )

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def wait_for_disconnect(self) -> None:
        if self._bus is not None:
            try:
                await self._bus.wait_for_disconnect()
            except Exception as exc:  # noqa: BLE001 - the library reports a broken socket by raising here
                logger.debug("bus connection ended: {}", exc)

    @property
    def connected(self) -> bool:
        return self._bus is not None and bool(self._bus.connected)

    def _handle_message(self, msg: Any) -> None:
        event = _event(msg)
        if event is not None:
            self._on_event(event)

    async def _call(
        self,
        dest: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        timeout: float = CALL_TIMEOUT,
    ) -> list[Any]:
        if self._bus is None or not self._bus.connected:
            raise NMUnavailable("not connected to the system bus")
        msg = Message(
            destination=dest,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        try:
            async with asyncio.timeout(timeout):
                reply = await self._bus.call(msg)
        except TimeoutError as exc:
            raise NMUnavailable(f"{member} got no answer within {timeout:g} s") from exc
        except (OSError, EOFError, ConnectionError) as exc:
            raise NMUnavailable(f"bus connection lost during {member}: {exc}") from exc
        if reply is None:
            raise NMUnavailable(f"bus connection lost during {member}")
        if reply.message_type == MessageType.ERROR:
            raise _error(member, reply.error_name, str(reply.body[0]) if reply.body else "")
        return list(reply.body)

    async def _nm(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> list[Any]:
        return await self._call(NM_BUS, path, interface, member, signature, body)

    async def _get_all(self, path: str, interface: str) -> dict[str, Any]:
        if not path or path == "/":
            return {}
        (props,) = await self._nm(path, IFACE_PROPERTIES, "GetAll", "s", [interface])
        return {key: _unwrap(value) for key, value in props.items()}

    async def _get(self, path: str, interface: str, name: str) -> Any:
        (value,) = await self._nm(path, IFACE_PROPERTIES, "Get", "ss", [interface, name])
        return _unwrap(value)

    async def starting_up(self) -> bool:
        """True until NetworkManager has tried to activate every connection it can at its start."""
        return bool(await self._get(NM_PATH, IFACE_NM, "Startup"))

    async def version(self) -> str:
        return str(await self._get(NM_PATH, IFACE_NM, "Version"))

    # -- profiles ---------------------------------------------------------------------------------

    async def _profile_path(self, uuid: str) -> str:
        (path,) = await self._nm(SETTINGS_PATH, IFACE_SETTINGS, "GetConnectionByUuid", "s", [uuid])
        return str(path)

    async def has_profile(self, uuid: str) -> bool:
        try:
            await self._profile_path(uuid)
        except NMError as exc:
            if exc.dbus_error == ERROR_NO_SUCH_PROFILE:
                return False
            raise
        return True

    async def _settings(self, path: str) -> Settings:
        (settings,) = await self._nm(path, IFACE_CONNECTION, "GetSettings")
        return dict(settings)

    async def _all_profiles(self) -> list[Settings]:
        (paths,) = await self._nm(SETTINGS_PATH, IFACE_SETTINGS, "ListConnections")
        return [await self._settings(path) for path in paths]

    async def _interfaces_to_uuids(self) -> dict[str, list[str]]:
        """The profiles active on each interface right now."""
        active: dict[str, list[str]] = {}
        for props in await self._active_connections():
            for device in props.get("Devices", []):
                iface = await self._get(device, IFACE_DEVICE, "Interface")
                active.setdefault(str(iface), []).append(str(props["Uuid"]))
        return active

    async def resolve(self, specs: Sequence[str]) -> list[Profile]:
        """Each spec (profile id, UUID or interface name) to exactly one profile, or ProfileError."""
        profiles = await self._all_profiles()
        active = await self._interfaces_to_uuids()
        resolved: list[Profile] = []
        for spec in specs:
            by_uuid = [s for s in profiles if _unwrap(s["connection"]["uuid"]) == spec]
            by_id = [s for s in profiles if _unwrap(s["connection"]["id"]) == spec]
            by_iface = [s for s in profiles if _unwrap(s["connection"].get("interface-name", "")) == spec]
            if not by_iface and spec in active:
                by_iface = [s for s in profiles if _unwrap(s["connection"]["uuid"]) in active[spec]]
            elif len(by_iface) > 1 and spec in active:
                # Several profiles for one device: the one in use is what the user means.
                by_iface = [s for s in by_iface if _unwrap(s["connection"]["uuid"]) in active[spec]]
            matches = by_uuid or by_id or by_iface
            if not matches:
                # The ids to choose from, capped: hundreds of saved Wi-Fi profiles still make one line.
                ids = sorted({str(_unwrap(s["connection"]["id"])) for s in profiles})
                more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
                known = (
                    f"existing profiles: {', '.join(map(repr, ids[:10]))}{more}" if ids else "there are none"
                )
                raise ProfileError(
                    spec, f"no NetworkManager profile has this id, UUID or interface name; {known}"
                )
            if len(matches) > 1:
                names = ", ".join(repr(_unwrap(s["connection"]["id"])) for s in matches)
                raise ProfileError(spec, f"matches several profiles ({names}); use a profile id or UUID")
            profile = _profile(spec, matches[0])
            if profile.never_default:
                raise ProfileError(
                    spec,
                    f"profile {profile.id!r} has ipv4.never-default=yes, so it can "
                    "never carry the default route",
                )
            resolved.append(profile)
        seen: dict[str, str] = {}
        for profile in resolved:
            if profile.uuid in seen:
                raise ProfileError(
                    profile.spec,
                    f"is the same profile as {seen[profile.uuid]!r} ({profile.id}, {profile.uuid})",
                )
            seen[profile.uuid] = profile.spec
        return resolved

    async def active_candidates(self) -> list[Candidate]:
        """Every active connection with its device, for nmfailover.discovery to choose the uplinks from."""
        found: list[Candidate] = []
        for props in await self._active_connections():
            devices = props.get("Devices") or []
            if int(props.get("State", 0)) >= ACTIVE_CONNECTION_DEACTIVATING:
                continue  # on its way out; a re-activation of the same profile is listed beside it
            try:
                settings = await self._settings(str(props["Connection"]))
                device = await self._get_all(str(devices[0]), IFACE_DEVICE) if devices else {}
            except NMUnavailable:
                raise
            except NMError:
                continue  # gone between the listing and the read
            connection = settings["connection"]
            controller = any(_unwrap(connection.get(key, "")) for key in _PORT_KEYS)
            found.append(
                Candidate(
                    profile=_profile(str(_unwrap(connection["id"])), settings),
                    connection_type=str(_unwrap(connection.get("type", ""))),
                    interface=str(device.get("IpInterface") or device.get("Interface") or ""),
                    device_type=int(device.get("DeviceType", 0)),
                    driver=str(device.get("Driver", "")),
                    metered=int(device.get("Metered", METERED_UNKNOWN)),
                    port=bool(controller),
                    vpn=bool(props.get("Vpn", False)),
                    addressed=_addressed(settings),
                )
            )
        return found

    async def saved_candidates(self, names: Sequence[str]) -> list[Candidate]:
        """The saved profiles `names` name (id, UUID or bound interface), active or not: on-demand uplinks
        are uplinks while they are down too."""
        found: list[Candidate] = []
        for settings in await self._all_profiles():
            connection = settings["connection"]
            bound = str(_unwrap(connection.get("interface-name", "")))
            if not {str(_unwrap(connection["id"])), str(_unwrap(connection["uuid"])), bound} & set(names):
                continue
            found.append(
                Candidate(
                    profile=_profile(str(_unwrap(connection["id"])), settings),
                    connection_type=str(_unwrap(connection.get("type", ""))),
                    interface=bound,
                    port=any(_unwrap(connection.get(key, "")) for key in _PORT_KEYS),
                    addressed=_addressed(settings),
                )
            )
        return found

    # -- links --------------------------------------------------------------------------------------

    async def _active_connections(self) -> list[dict[str, Any]]:
        """Each active connection's properties, with its own object path under "Path"."""
        found = []
        for path in await self._get(NM_PATH, IFACE_NM, "ActiveConnections"):
            try:
                found.append({**await self._get_all(path, IFACE_ACTIVE), "Path": str(path)})
            except NMUnavailable:
                raise
            except NMError:
                continue  # deactivated between the listing and the read: it is simply not active any more
        return found

    async def _device_of(self, uuid: str) -> tuple[str, str] | None:
        """The device the profile is active on and its active connection's path (new at each activation)."""
        for props in await self._active_connections():
            if props.get("Uuid") == uuid and props.get("Devices"):
                return str(props["Devices"][0]), str(props["Path"])
        return None

    async def link_state(self, uuid: str) -> LinkState:
        """Where the profile is active now, and what a probe needs to use that link."""
        found = await self._device_of(uuid)
        if found is None:
            return LinkState(uuid=uuid)
        device, active = found
        props = await self._get_all(device, IFACE_DEVICE)
        ip4 = await self._get_all(str(props.get("Ip4Config", "/")), IFACE_IP4)
        ip6 = await self._get_all(str(props.get("Ip6Config", "/")), IFACE_IP6)
        return LinkState(
            uuid=uuid,
            device=device,
            active=active,
            interface=str(props.get("IpInterface") or props.get("Interface") or "") or None,
            state=int(props.get("State", 0)),
            nameservers=_nameservers(ip4, ip6),
            gateway4=str(ip4.get("Gateway") or "") or None,
            gateway6=str(ip6.get("Gateway") or "") or None,
            device_type=int(props.get("DeviceType", 0)),
            driver=str(props.get("Driver", "")),
            metered=int(props.get("Metered", METERED_UNKNOWN)),
            sources4=_sources(ip4, 4),
            sources6=_sources(ip6, 6),
        )

    async def applied_metrics(self, device: str) -> Metrics:
        settings, _ = await self._nm(device, IFACE_DEVICE, "GetAppliedConnection", "u", [0])
        return Metrics(
            _metric(settings, "ipv4"),
            _metric(settings, "ipv6"),
            _metered(settings),
            rule_tables=_rule_tables(settings),
        )

    async def set_route_metrics(
        self, device: str, metric4: int, metric6: int, mptcp_flags: int | None = None
    ) -> bool:
        """Change the device's applied route metrics at run time (Reapply); the saved profile is untouched.
        With `mptcp_flags`, its connection.mptcp-flags in the same Reapply (each Reapply restarts the
        device's IPv6, so the switch makes one, not two).

        Returns False when they already had these values (nothing is sent, so no `reapply` event fires).
        """
        edits = [_metrics_edit(metric4, metric6)]
        if mptcp_flags is not None and _knows_mptcp_flags(await self.version()):
            edits.append(_mptcp_edit(mptcp_flags))
        return await self._reapply(
            device, lambda settings: [edit(settings) for edit in edits].count(True) > 0
        )

    async def set_metered(self, device: str, metered: int) -> bool:
        """Set connection.metered on the device's applied connection at run time (Reapply): NetworkManager's
        own Metered property, the one desktops read, follows it while this device holds the default route.
        The saved profile is untouched; False when it already had this value (nothing sent)."""
        return await self._reapply(device, _metered_edit(metered))

    async def set_ipv6_default(self, device: str, allowed: bool, gateway: str | None = None) -> str | None:
        """Let the device's applied connection have an IPv6 default route or not (ipv6.never-default, at run
        time through Reapply; the saved profile is untouched).

        A never-default connection may have no gateway (NetworkManager drops it), so taking the route away
        returns the applied connection's own IPv6 gateway, if it had one, and allowing it again puts back
        `gateway`. A gateway learnt from router advertisements needs nothing: it comes back by itself."""
        dropped: list[str] = []
        await self._reapply(device, _ipv6_default_edit(allowed, gateway, dropped))
        return dropped[0] if dropped else None

    async def set_source_routing(self, device: str, wanted: SourceRouting) -> bool:
        """Put `wanted`'s routes (route-data with a table) and routing-rules on the device's applied
        connection at run time (Reapply), replacing whatever of its table and rules was there and keeping
        everyone else's; SourceRouting(table, priority) takes ours off. The saved profile is untouched.
        False when the applied connection already had exactly these (nothing sent).

        NetworkManager installs them with the device's own routes and removes them again when they leave
        the applied connection; a later Reapply of the metrics sends them back with it, so they stay."""
        return await self._reapply(device, _source_routing_edit(wanted))

    async def restore_applied(self, device: str, back: Restore) -> bool:
        """Everything of `back` in one Reapply: each Reapply restarts the device's IPv6 configuration, and
        several in a row on a busy machine can leave it without its IPv6 default route."""
        edits = [_metrics_edit(back.metric4, back.metric6)]
        if back.source_routing is not None:
            edits.append(_source_routing_edit(back.source_routing))
        if back.ipv6_back:
            edits.append(_ipv6_default_edit(True, back.ipv6_gateway, []))
        if back.metered is not None:
            edits.append(_metered_edit(back.metered))
        if back.dns is not None:
            edits.append(_dns_edit(back.dns))
        if back.resolver_routes is not None:
            edits.append(_resolver_routes_edit(back.resolver_routes))
        if back.mptcp_flags is not None:
            edits.append(_mptcp_edit(back.mptcp_flags))
        return await self._reapply(
            device, lambda settings: [edit(settings) for edit in edits].count(True) > 0
        )

    async def set_dns(self, device: str, dns: Dns) -> bool:
        """Make the device's applied connection resolve with exactly `dns` at run time (Reapply): its
        ipv4.dns/ipv6.dns and dns-priority; NetworkManager rewrites resolv.conf, or tells systemd-resolved,
        at once. The saved profile is untouched; False when it already had these (nothing sent).

        Resolvers learnt from DHCP or router advertisements stay, behind these (ignore-auto-dns is left
        alone), so the device's IP4Config/IP6Config go on listing them. A server of a family the connection
        does not configure (method disabled, ignore, link-local, shared) is left out."""
        return await self._reapply(device, _dns_edit(dns))

    async def set_resolver_routes(self, device: str, wanted: ResolverRoutes) -> bool:
        """Put `wanted`'s host routes on the device's applied connection at run time (Reapply), replacing
        ours (RESOLVER_ROUTE_METRIC) and keeping everyone else's; ResolverRoutes() takes ours off. The saved
        profile is untouched; False when it already had exactly these (nothing sent)."""
        return await self._reapply(device, _resolver_routes_edit(wanted))

    async def _reapply(self, device: str, edit: Callable[[Settings], bool]) -> bool:
        """GetAppliedConnection, `edit` it in place (False: nothing to change), Reapply by its version id."""
        for attempt in (1, 2):
            settings, version_id = await self._nm(device, IFACE_DEVICE, "GetAppliedConnection", "u", [0])
            if not edit(settings):
                return False
            try:
                await self._nm(
                    device, IFACE_DEVICE, "Reapply", "a{sa{sv}}tu", [_strip_legacy(settings), version_id, 0]
                )
                return True
            except NMError as exc:
                # Someone else changed the device between our read and write: read again once.
                if exc.dbus_error != ERROR_VERSION_MISMATCH or attempt == 2:
                    raise
        return True  # pragma: no cover - the loop always returns or raises

    async def activate(self, uuid: str) -> None:
        """Activate the profile on whatever device it fits (ActivateConnection); returns once NetworkManager
        has taken it on, not once it is up (the events tell)."""
        path = await self._profile_path(uuid)
        await self._nm(NM_PATH, IFACE_NM, "ActivateConnection", "ooo", [path, "/", "/"])

    async def deactivate(self, uuid: str) -> bool:
        """Deactivate the profile where it is active (DeactivateConnection), which also keeps NetworkManager
        from activating it again by itself until someone does; False if it was not active."""
        for props in await self._active_connections():
            if props.get("Uuid") == uuid:
                await self._nm(NM_PATH, IFACE_NM, "DeactivateConnection", "o", [props["Path"]])
                return True
        return False

    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool:
        """Set connection.autoconnect-priority in memory only (nothing written to disk)."""
        path = await self._profile_path(uuid)
        settings = await self._settings(path)
        if _unwrap(settings["connection"].get("autoconnect-priority", 0)) == priority:
            return False
        settings["connection"]["autoconnect-priority"] = Variant("i", priority)
        await self._nm(
            path,
            IFACE_CONNECTION,
            "Update2",
            "a{sa{sv}}ua{sv}",
            [_strip_legacy(settings), UPDATE2_IN_MEMORY | UPDATE2_NO_REAPPLY, {}],
        )
        return True

    async def profile(self, uuid: str) -> Profile:
        return _profile(uuid, await self._settings(await self._profile_path(uuid)))

    # -- WireGuard (tunnels.py) -----------------------------------------------------------------------

    async def wireguard_devices(self) -> list[WireGuardDevice]:
        """NetworkManager's activated WireGuard devices with the peers of their applied connections."""
        (paths,) = await self._nm(NM_PATH, IFACE_NM, "GetDevices")
        found = []
        for path in paths:
            try:
                props = await self._get_all(path, IFACE_DEVICE)
                if int(props.get("DeviceType", 0)) != DEVICE_TYPE_WIREGUARD:
                    continue
                if int(props.get("State", 0)) != DEVICE_STATE_ACTIVATED:
                    continue
                settings, _ = await self._nm(path, IFACE_DEVICE, "GetAppliedConnection", "u", [0])
                fwmark = int(await self._get(path, IFACE_WIREGUARD, "FwMark"))
            except NMUnavailable:
                raise
            except NMError:
                continue  # gone or deactivated between the listing and the read
            peers = _unwrap(settings.get("wireguard", {}).get("peers", [])) or []
            found.append(
                WireGuardDevice(
                    path=str(path),
                    interface=str(props.get("IpInterface") or props.get("Interface") or ""),
                    fwmark=fwmark,
                    peers=tuple(
                        (str(_unwrap(p.get("public-key", ""))), str(_unwrap(p.get("endpoint", ""))))
                        for p in peers
                    ),
                )
            )
        return found

    async def reapply_wireguard(self, device: str) -> None:
        """Reapply the WireGuard device's applied connection unchanged, so that NetworkManager sets every
        peer's endpoint on the link again: the kernel then drops the source address it had cached.

        NetworkManager 1.42 does this for an unmodified Reapply too (check_and_reapply_connection() always
        calls the device's reapply_connection(), whose link_config(REAPPLY) sends each peer with its
        endpoint); with no difference the applied connection, secrets included, is kept as it is."""
        await self._reapply(device, lambda settings: True)


def _metrics_edit(metric4: int, metric6: int) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        wanted = {"ipv4": metric4, "ipv6": metric6}
        stale = {
            family: value
            for family, value in wanted.items()
            if family in settings and _metric(settings, family) != value
        }
        for family, value in stale.items():
            settings[family]["route-metric"] = Variant("x", value)
        return bool(stale)

    return edit


def _mptcp_flags(settings: Settings) -> int:
    return int(_unwrap(settings.get("connection", {}).get("mptcp-flags", 0)))


def _knows_mptcp_flags(version: str) -> bool:
    """NetworkManager 1.40 brought connection.mptcp-flags; an older one refuses a Reapply that has it."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return numbers >= [1, 40]


def _mptcp_edit(flags: int) -> Callable[[Settings], bool]:
    """connection.mptcp-flags (NetworkManager 1.40 and newer; reapplicable): which MPTCP endpoints the
    device's addresses are, and with which flags (see nmfailover.mptcp)."""

    def edit(settings: Settings) -> bool:
        if _mptcp_flags(settings) == flags:
            return False
        settings.setdefault("connection", {})["mptcp-flags"] = Variant("u", flags)
        return True

    return edit


def _metered_edit(metered: int) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        if _metered(settings) == metered:
            return False
        settings.setdefault("connection", {})["metered"] = Variant("i", metered)
        return True

    return edit


def _ipv6_default_edit(allowed: bool, gateway: str | None, dropped: list[str]) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        section = settings.get("ipv6")
        if section is None or bool(_unwrap(section.get("never-default", False))) is not allowed:
            return False
        section["never-default"] = Variant("b", not allowed)
        if allowed and gateway:
            section["gateway"] = Variant("s", gateway)
        elif not allowed and "gateway" in section:
            dropped.append(str(_unwrap(section.pop("gateway"))))
        return True

    return edit


def _source_routing_edit(wanted: SourceRouting) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        changed = False
        for version, family in ((4, "ipv4"), (6, "ipv6")):
            section = settings.get(family)
            if section is None:
                continue
            routes = list(_unwrap(section.get("route-data", [])) or [])
            rules = list(_unwrap(section.get("routing-rules", [])) or [])
            ours_now = (
                _canonical([r for r in routes if wanted.owns_route(r)], _ROUTE_KEYS),
                _canonical([r for r in rules if wanted.owns_rule(r)], _RULE_KEYS),
            )
            new_routes, new_rules = wanted.route_data(version), wanted.rule_data(version)
            if _unwrap(section.get("method", "")) in ("ignore", "disabled"):
                # Addresses NetworkManager does not manage (set by hand, say) are not its to route.
                new_routes, new_rules = [], []
            if ours_now == (_canonical(new_routes, _ROUTE_KEYS), _canonical(new_rules, _RULE_KEYS)):
                continue
            section["route-data"] = Variant(
                "aa{sv}", [r for r in routes if not wanted.owns_route(r)] + new_routes
            )
            section["routing-rules"] = Variant(
                "aa{sv}", [r for r in rules if not wanted.owns_rule(r)] + new_rules
            )
            changed = True
        return changed

    return edit


def resolver_version(server: str) -> int:
    """4 or 6: the family of a resolver as ipv4.dns/ipv6.dns hold it (dns-data may carry a DNS-over-TLS
    server name after "#", since NetworkManager 1.48)."""
    return ipaddress.ip_address(server.partition("#")[0]).version


def _family_dns(section: dict[str, Any], version: int) -> list[str]:
    if "dns-data" in section:
        return [str(server) for server in _unwrap(section["dns-data"])]
    # Before NetworkManager 1.42 only the legacy binary form: IPv4 as uint32 in network order, IPv6 bytes.
    raw = _unwrap(section.get("dns", [])) or []
    if version == 4:
        return [str(ipaddress.IPv4Address(int(item).to_bytes(4, sys.byteorder))) for item in raw]
    return [str(ipaddress.IPv6Address(bytes(item))) for item in raw]


def _put_family_dns(section: dict[str, Any], version: int, servers: list[str]) -> None:
    # In the form the applied connection came in: an older NetworkManager ignores dns-data.
    if "dns-data" in section:
        section["dns-data"] = Variant("as", servers)
    elif version == 4:
        packed = [int.from_bytes(ipaddress.IPv4Address(s).packed, sys.byteorder) for s in servers]
        section["dns"] = Variant("au", packed)
    else:
        section["dns"] = Variant("aay", [ipaddress.IPv6Address(s).packed for s in servers])


def _dns(settings: Settings) -> Dns:
    return Dns(
        tuple(
            server
            for family, version in (("ipv4", 4), ("ipv6", 6))
            for server in _family_dns(settings.get(family, {}), version)
        ),
        int(_unwrap(settings.get("ipv4", {}).get("dns-priority", 0))),
        int(_unwrap(settings.get("ipv6", {}).get("dns-priority", 0))),
    )


def _dns_edit(wanted: Dns) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        changed = False
        for family, version, priority in (("ipv4", 4, wanted.priority4), ("ipv6", 6, wanted.priority6)):
            section = settings.get(family)
            if section is None:
                continue
            servers = [s for s in wanted.servers if resolver_version(s) == version]
            if _unwrap(section.get("method", "")) in _NO_DNS_METHODS:
                servers = []
            if _family_dns(section, version) != servers:
                _put_family_dns(section, version, servers)
                changed = True
            if int(_unwrap(section.get("dns-priority", 0))) != priority:
                section["dns-priority"] = Variant("i", priority)
                changed = True
        return changed

    return edit


def _owns_resolver_route(route: dict[str, Any]) -> bool:
    return (
        int(_unwrap(route.get("metric", -1))) == RESOLVER_ROUTE_METRIC
        and int(_unwrap(route.get("prefix", -1))) in _HOST_PREFIX.values()
        and int(_unwrap(route.get("table", 0))) in (0, MAIN_TABLE)
    )


def _resolver_routes_edit(wanted: ResolverRoutes) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        changed = False
        for version, family in ((4, "ipv4"), (6, "ipv6")):
            section = settings.get(family)
            if section is None:
                continue
            routes = list(_unwrap(section.get("route-data", [])) or [])
            new_routes = wanted.route_data(version)
            ours = [r for r in routes if _owns_resolver_route(r)]
            if _canonical(ours, _ROUTE_KEYS) == _canonical(new_routes, _ROUTE_KEYS):
                continue
            section["route-data"] = Variant(
                "aa{sv}", [r for r in routes if not _owns_resolver_route(r)] + new_routes
            )
            changed = True
        return changed

    return edit


def _metric(settings: Settings, family: str) -> int | None:
    section = settings.get(family)
    if section is None:
        return None
    return int(_unwrap(section.get("route-metric", -1)))


def _metered(settings: Settings) -> int:
    # NetworkManager leaves out a property at its default, and metered's default is unknown.
    return int(_unwrap(settings.get("connection", {}).get("metered", METERED_UNKNOWN)))


def _rule_tables(settings: Settings) -> frozenset[int]:
    return frozenset(
        int(_unwrap(rule.get("table", 0)))
        for family in ("ipv4", "ipv6")
        for rule in _unwrap(settings.get(family, {}).get("routing-rules", [])) or []
    )


def _canonical(entries: Sequence[dict[str, Any]], keys: Sequence[str]) -> frozenset[tuple[Any, ...]]:
    # NetworkManager hands entries back with the keys it was given; only ours are compared, so an attribute
    # it might add some day cannot make every comparison a difference (and every apply a Reapply).
    return frozenset(tuple(_unwrap(entry.get(key)) for key in keys) for entry in entries)


def _sources(ip_config: dict[str, Any], version: int) -> tuple[str, ...]:
    """The IP config's addresses as routing-rule sources: IPv4 addresses as /32, IPv6 as their prefix."""
    found: list[str] = []
    for entry in _unwrap(ip_config.get("AddressData", [])) or []:
        try:
            interface = ipaddress.ip_interface(f"{_unwrap(entry['address'])}/{int(_unwrap(entry['prefix']))}")
        except (KeyError, ValueError):
            continue
        if interface.version != version or interface.ip.is_link_local:
            continue
        source = str(ipaddress.ip_network(interface.ip)) if version == 4 else str(interface.network)
        if source not in found:
            found.append(source)
    return tuple(found)


def _addressed(settings: Settings) -> bool:
    ipv4 = str(_unwrap(settings.get("ipv4", {}).get("method", "auto")))
    ipv6 = str(_unwrap(settings.get("ipv6", {}).get("method", "auto")))
    return ipv4 != "disabled" or ipv6 not in ("disabled", "ignore")


def _profile(spec: str, settings: Settings) -> Profile:
    connection = settings["connection"]
    return Profile(
        spec=spec,
        uuid=str(_unwrap(connection["uuid"])),
        id=str(_unwrap(connection["id"])),
        interface_name=str(_unwrap(connection.get("interface-name", ""))) or None,
        metric4=int(_unwrap(settings.get("ipv4", {}).get("route-metric", -1))),
        metric6=int(_unwrap(settings.get("ipv6", {}).get("route-metric", -1))),
        autoconnect_priority=int(_unwrap(connection.get("autoconnect-priority", 0))),
        never_default=bool(_unwrap(settings.get("ipv4", {}).get("never-default", False))),
        metered=_metered(settings),
        dns=_dns(settings),
        mptcp_flags=_mptcp_flags(settings),
    )


def _error(member: str, name: str | None, text: str) -> NMError:
    """NetworkManager's error reply as our exception, keeping the D-Bus error name."""
    message = f"{member} failed: {name}: {text}"
    if name in ERROR_UNAVAILABLE:
        return NMUnavailable(f"NetworkManager is not answering ({member}): {text}", name)
    if name in ERROR_DENIED:
        return NMAccessDenied(f"{member} was refused (permission denied): {text}", name)
    if name in ERROR_LINK_CHANGED:
        return NMLinkChanged(message, name)
    return NMError(message, name)


def _event(msg: Any) -> NMEvent | None:
    """The typed event a NetworkManager signal stands for, or None for signals the engine has no use for."""
    if msg.message_type != MessageType.SIGNAL:
        return None
    interface, member, body = msg.interface, msg.member, msg.body
    if member == "NameOwnerChanged":
        return NMStarted() if body[2] else NMStopped()
    if interface == IFACE_DEVICE and member == "StateChanged":
        return DeviceStateChanged(msg.path, int(body[0]), int(body[1]))
    if interface == IFACE_NM and member in ("DeviceAdded", "DeviceRemoved"):
        return DevicesChanged(str(body[0]), member == "DeviceAdded")
    if (interface == IFACE_SETTINGS and member in ("ConnectionRemoved", "NewConnection")) or (
        interface == IFACE_CONNECTION and member in ("Updated", "Removed")
    ):
        return ProfilesChanged(str(body[0]) if interface == IFACE_SETTINGS else msg.path)
    if interface == IFACE_PROPERTIES and body and body[0] == IFACE_WIRED and "Carrier" in body[1]:
        return CarrierChanged(msg.path, bool(_unwrap(body[1]["Carrier"])))
    if interface == IFACE_PROPERTIES and body and body[0] == IFACE_DEVICE and "Metered" in body[1]:
        return MeteredChanged(msg.path, int(_unwrap(body[1]["Metered"])))
    if (
        interface == IFACE_PROPERTIES
        and body
        and body[0] in (IFACE_IP4, IFACE_IP6)
        and ("AddressData" in body[1] or "Gateway" in body[1])
    ):
        return IpConfigChanged(msg.path)
    if (
        interface == IFACE_PROPERTIES
        and msg.path == NM_PATH
        and body
        and body[0] == IFACE_NM
        and "ActiveConnections" in body[1]
    ):
        return ActiveConnectionsChanged()
    return None
