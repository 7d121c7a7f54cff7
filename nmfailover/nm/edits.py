"""NetworkManager's settings as D-Bus hands them over (GetSettings, GetAppliedConnection: a{sa{sv}}) and the
pure edits on them that a Reapply sends back: route metrics, metered, the IPv6 default route, routing by
source address, resolvers and the host routes to them. No I/O: each edit changes the dict in place and
says whether it changed anything."""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..bus import Variant
from .names import Metered
from .values import Dns, Profile

Settings = dict[str, dict[str, Any]]

# NM sends legacy keys next to their replacements and, given both, prefers the legacy one: an edited
# dict sent back with them intact would silently lose changes. Drop a legacy key only when its
# replacement is present, so nothing is lost on versions that lack the replacement.
_LEGACY_KEYS = {
    "addresses": "address-data",
    "address-labels": "address-data",
    "routes": "route-data",
    "dns": "dns-data",
}

# Set on a bridge's, bond's or team's port (older and newer names).
PORT_KEYS = ("master", "controller", "slave-type", "port-type")

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
    metered: Metered | None = None  # connection.metered back to this
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
        return bool(unwrap(route.get("table", 0)) == self.table)

    def owns_rule(self, rule: dict[str, Any]) -> bool:
        table = int(unwrap(rule.get("table", 0)))
        if table == self.table:
            return True
        return (
            table == MAIN_TABLE
            and int(unwrap(rule.get("priority", -1))) == self.priority
            and int(unwrap(rule.get("suppress-prefixlength", -1))) == 0
        )


def unwrap(value: Any) -> Any:
    return value.value if isinstance(value, Variant) else value


def strip_legacy(settings: Settings) -> Settings:
    for family in ("ipv4", "ipv6"):
        section = settings.get(family)
        if section is None:
            continue
        for legacy, replacement in _LEGACY_KEYS.items():
            if legacy in section and replacement in section:
                del section[legacy]
    return settings


def nameservers(ip4: dict[str, Any], ip6: dict[str, Any]) -> tuple[str, ...]:
    found = [
        str(unwrap(entry["address"]))
        for entry in unwrap(ip4.get("NameserverData", [])) or []
        if "address" in entry
    ]
    found += [str(ipaddress.IPv6Address(bytes(raw))) for raw in unwrap(ip6.get("Nameservers", [])) or []]
    return tuple(found)


def metrics_edit(metric4: int, metric6: int) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        wanted = {"ipv4": metric4, "ipv6": metric6}
        stale = {
            family: value
            for family, value in wanted.items()
            if family in settings and metric_of(settings, family) != value
        }
        for family, value in stale.items():
            settings[family]["route-metric"] = Variant("x", value)
        return bool(stale)

    return edit


def mptcp_flags_of(settings: Settings) -> int:
    return int(unwrap(settings.get("connection", {}).get("mptcp-flags", 0)))


def knows_mptcp_flags(version: str) -> bool:
    """NetworkManager 1.40 brought connection.mptcp-flags; an older one refuses a Reapply that has it."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return numbers >= [1, 40]


def mptcp_edit(flags: int) -> Callable[[Settings], bool]:
    """connection.mptcp-flags (NetworkManager 1.40 and newer; reapplicable): which MPTCP endpoints the
    device's addresses are, and with which flags (see nmfailover.mptcp)."""

    def edit(settings: Settings) -> bool:
        if mptcp_flags_of(settings) == flags:
            return False
        settings.setdefault("connection", {})["mptcp-flags"] = Variant("u", flags)
        return True

    return edit


def metered_edit(metered: Metered) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        if metered_of(settings) == metered:
            return False
        settings.setdefault("connection", {})["metered"] = Variant("i", int(metered))
        return True

    return edit


def ipv6_default_edit(allowed: bool, gateway: str | None, dropped: list[str]) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        section = settings.get("ipv6")
        if section is None or bool(unwrap(section.get("never-default", False))) is not allowed:
            return False
        section["never-default"] = Variant("b", not allowed)
        if allowed and gateway:
            section["gateway"] = Variant("s", gateway)
        elif not allowed and "gateway" in section:
            dropped.append(str(unwrap(section.pop("gateway"))))
        return True

    return edit


def source_routing_edit(wanted: SourceRouting) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        changed = False
        for version, family in ((4, "ipv4"), (6, "ipv6")):
            section = settings.get(family)
            if section is None:
                continue
            routes = list(unwrap(section.get("route-data", [])) or [])
            rules = list(unwrap(section.get("routing-rules", [])) or [])
            ours_now = (
                _canonical([r for r in routes if wanted.owns_route(r)], _ROUTE_KEYS),
                _canonical([r for r in rules if wanted.owns_rule(r)], _RULE_KEYS),
            )
            new_routes, new_rules = wanted.route_data(version), wanted.rule_data(version)
            if unwrap(section.get("method", "")) in ("ignore", "disabled"):
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
        return [str(server) for server in unwrap(section["dns-data"])]
    # Before NetworkManager 1.42 only the legacy binary form: IPv4 as uint32 in network order, IPv6 bytes.
    raw = unwrap(section.get("dns", [])) or []
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


def dns_of(settings: Settings) -> Dns:
    return Dns(
        tuple(
            server
            for family, version in (("ipv4", 4), ("ipv6", 6))
            for server in _family_dns(settings.get(family, {}), version)
        ),
        int(unwrap(settings.get("ipv4", {}).get("dns-priority", 0))),
        int(unwrap(settings.get("ipv6", {}).get("dns-priority", 0))),
    )


def dns_edit(wanted: Dns) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        changed = False
        for family, version, priority in (("ipv4", 4, wanted.priority4), ("ipv6", 6, wanted.priority6)):
            section = settings.get(family)
            if section is None:
                continue
            servers = [s for s in wanted.servers if resolver_version(s) == version]
            if unwrap(section.get("method", "")) in _NO_DNS_METHODS:
                servers = []
            if _family_dns(section, version) != servers:
                _put_family_dns(section, version, servers)
                changed = True
            if int(unwrap(section.get("dns-priority", 0))) != priority:
                section["dns-priority"] = Variant("i", priority)
                changed = True
        return changed

    return edit


def _owns_resolver_route(route: dict[str, Any]) -> bool:
    return (
        int(unwrap(route.get("metric", -1))) == RESOLVER_ROUTE_METRIC
        and int(unwrap(route.get("prefix", -1))) in _HOST_PREFIX.values()
        and int(unwrap(route.get("table", 0))) in (0, MAIN_TABLE)
    )


def resolver_routes_edit(wanted: ResolverRoutes) -> Callable[[Settings], bool]:
    def edit(settings: Settings) -> bool:
        changed = False
        for version, family in ((4, "ipv4"), (6, "ipv6")):
            section = settings.get(family)
            if section is None:
                continue
            routes = list(unwrap(section.get("route-data", [])) or [])
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


def metric_of(settings: Settings, family: str) -> int | None:
    section = settings.get(family)
    if section is None:
        return None
    return int(unwrap(section.get("route-metric", -1)))


def metered_of(settings: Settings) -> Metered:
    # NetworkManager leaves out a property at its default, and metered's default is unknown.
    return Metered(unwrap(settings.get("connection", {}).get("metered", Metered.UNKNOWN)))


def rule_tables(settings: Settings) -> frozenset[int]:
    return frozenset(
        int(unwrap(rule.get("table", 0)))
        for family in ("ipv4", "ipv6")
        for rule in unwrap(settings.get(family, {}).get("routing-rules", [])) or []
    )


def _canonical(entries: Sequence[dict[str, Any]], keys: Sequence[str]) -> frozenset[tuple[Any, ...]]:
    # NetworkManager hands entries back with the keys it was given; only ours are compared, so an attribute
    # it might add some day cannot make every comparison a difference (and every apply a Reapply).
    return frozenset(tuple(unwrap(entry.get(key)) for key in keys) for entry in entries)


def sources(ip_config: dict[str, Any], version: int) -> tuple[str, ...]:
    """The IP config's addresses as routing-rule sources: IPv4 addresses as /32, IPv6 as their prefix."""
    found: list[str] = []
    for entry in unwrap(ip_config.get("AddressData", [])) or []:
        try:
            interface = ipaddress.ip_interface(f"{unwrap(entry['address'])}/{int(unwrap(entry['prefix']))}")
        except (KeyError, ValueError):
            continue
        if interface.version != version or interface.ip.is_link_local:
            continue
        source = str(ipaddress.ip_network(interface.ip)) if version == 4 else str(interface.network)
        if source not in found:
            found.append(source)
    return tuple(found)


def addressed(settings: Settings) -> bool:
    ipv4 = str(unwrap(settings.get("ipv4", {}).get("method", "auto")))
    ipv6 = str(unwrap(settings.get("ipv6", {}).get("method", "auto")))
    return ipv4 != "disabled" or ipv6 not in ("disabled", "ignore")


def profile_of(spec: str, settings: Settings) -> Profile:
    connection = settings["connection"]
    return Profile(
        spec=spec,
        uuid=str(unwrap(connection["uuid"])),
        id=str(unwrap(connection["id"])),
        interface_name=str(unwrap(connection.get("interface-name", ""))) or None,
        metric4=int(unwrap(settings.get("ipv4", {}).get("route-metric", -1))),
        metric6=int(unwrap(settings.get("ipv6", {}).get("route-metric", -1))),
        autoconnect_priority=int(unwrap(connection.get("autoconnect-priority", 0))),
        never_default=bool(unwrap(settings.get("ipv4", {}).get("never-default", False))),
        metered=metered_of(settings),
        dns=dns_of(settings),
        mptcp_flags=mptcp_flags_of(settings),
    )
