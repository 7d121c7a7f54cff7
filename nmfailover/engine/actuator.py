"""Carrying a decision out through NetworkManager: rank the uplinks' route metrics (and autoconnect
priorities), mark the metered ones, give each uplink its own routing table for the connections that use its
addresses, verify what NetworkManager really applied, and put the profiles' own values back on stop."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar, runtime_checkable

from loguru import logger

from .. import mptcp, runstate
from ..config import Settings
from ..errors import ConfigError, NMError, NMLinkChanged, NMUnavailable
from ..nm import (
    Dns,
    LinkState,
    Metered,
    Metrics,
    Profile,
    ResolverRoutes,
    Restore,
    SourceRouting,
    resolver_version,
)
from ..policy import Health
from .state import Uplink, role_name

_T = TypeVar("_T")

METERED_VARIABLE = "NMFAILOVER_METERED"
ON_DEMAND_VARIABLE = "NMFAILOVER_ON_DEMAND"
# The dns-priority that puts an uplink's resolvers behind every other uplink's while its lookups are moved
# to theirs (NetworkManager's defaults are 100, and 50 for a VPN).
DNS_PRIORITY_MOVED = 10_000


@dataclass(frozen=True)
class ActuatorParams:
    """What the actuator needs of the settings."""

    metric_base: int
    metric_step: int
    manage_autoconnect_priority: bool
    source_routing: bool
    source_routing_table: int  # the first uplink's; the others' follow it
    source_routing_priority: int
    metered: tuple[str, ...]  # NMFAILOVER_METERED's names
    on_demand: tuple[str, ...]  # NMFAILOVER_ON_DEMAND's names
    auto_uplinks: bool  # a name that is no uplink now may name one found later
    mptcp: bool  # NMFAILOVER_MPTCP: the backup flag of MPTCP endpoints follows the switch

    @classmethod
    def from_settings(cls, settings: Settings) -> ActuatorParams:
        return cls(
            metric_base=settings.metric_base,
            metric_step=settings.metric_step,
            manage_autoconnect_priority=settings.manage_autoconnect_priority,
            source_routing=settings.source_routing,
            source_routing_table=settings.source_routing_table,
            source_routing_priority=settings.source_routing_priority,
            metered=settings.metered,
            on_demand=settings.on_demand,
            auto_uplinks=settings.auto_uplinks,
            mptcp=settings.mptcp,
        )


@dataclass(frozen=True)
class SourceRoutingStatus:
    """An uplink's own routing table and what NetworkManager confirmed in it, for status."""

    table: int | None = None  # None: routing by source address is off
    rules: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DnsOverride:
    """What moving DNS (Actuator.override_dns) has NetworkManager do on an uplink; DnsOverride(): nothing."""

    moved_to: tuple[str, ...] = ()  # other uplinks' resolvers its lookups go to (its own now come last)
    in_front: tuple[str, ...] = ()  # resolvers put in front of its own on its applied connection
    routed: tuple[str, ...] = ()  # its own resolvers that another uplink's lookups reach through it

    @property
    def overridden(self) -> bool:
        return bool(self.moved_to or self.in_front)

    def own(self, nameservers: Sequence[str]) -> tuple[str, ...]:
        """The uplink's own resolvers among its LinkState.nameservers, which list those in front first:
        the ones whose answers say when to give DNS back."""
        return tuple(server for server in nameservers if server not in self.in_front)


class NetworkManagerPort(Protocol):
    """What the engine needs of NetworkManager; nm.NetworkManagerClient is the real one."""

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def wait_for_disconnect(self) -> None: ...
    async def link_state(self, uuid: str) -> LinkState: ...
    async def set_route_metrics(
        self, device: str, metric4: int, metric6: int, mptcp_flags: int | None = None
    ) -> bool: ...
    async def set_metered(self, device: str, metered: Metered) -> bool: ...
    async def set_ipv6_default(
        self, device: str, allowed: bool, gateway: str | None = None
    ) -> str | None: ...
    async def restore_applied(self, device: str, back: Restore) -> bool: ...
    async def set_dns(self, device: str, dns: Dns) -> bool: ...
    async def set_resolver_routes(self, device: str, wanted: ResolverRoutes) -> bool: ...
    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool: ...
    async def profile(self, uuid: str) -> Profile: ...
    async def applied_metrics(self, device: str) -> Metrics: ...
    async def has_profile(self, uuid: str) -> bool: ...


@runtime_checkable
class SourceRouter(Protocol):
    """What routing by source address needs of NetworkManager besides the port; nm.NetworkManagerClient
    has it. A separate protocol, so the engine's test doubles that never route by source need not."""

    async def set_source_routing(self, device: str, wanted: SourceRouting) -> bool: ...


def metered_uplinks(params: ActuatorParams, profiles: Sequence[Profile]) -> frozenset[int]:
    """The indexes of the uplinks NMFAILOVER_METERED names (see named_uplinks)."""
    return named_uplinks(params, profiles, params.metered, METERED_VARIABLE)


def on_demand_uplinks(params: ActuatorParams, profiles: Sequence[Profile]) -> frozenset[int]:
    """The indexes of the uplinks NMFAILOVER_ON_DEMAND names (see named_uplinks)."""
    return named_uplinks(params, profiles, params.on_demand, ON_DEMAND_VARIABLE)


def named_uplinks(
    params: ActuatorParams, profiles: Sequence[Profile], names: Sequence[str], variable: str
) -> frozenset[int]:
    """The indexes of the uplinks `names` name; a name that is none of them is a ConfigError, except with
    uplinks found at run time, where it names one that is not there now.

    A name is looked up as written in NMFAILOVER_UPLINKS first, then as a profile id, UUID or bound
    interface, then as a role: a profile called "backup" listed first is the primary, not the second uplink.
    """
    chosen: set[int] = set()
    for name in names:
        tiers = (
            [i for i, p in enumerate(profiles) if p.spec == name],
            [i for i, p in enumerate(profiles) if name in (p.id, p.uuid, p.interface_name)],
            [i for i in range(len(profiles)) if role_name(i) == name],
        )
        found = next((tier for tier in tiers if tier), [])
        if not found and params.auto_uplinks:
            continue
        if len(found) != 1:
            known = ", ".join(f"{role_name(i)} ({p.id})" for i, p in enumerate(profiles))
            problem = "names several uplinks" if found else "is not one of the uplinks"
            raise ConfigError(
                variable,
                f"{name!r} {problem}; name them as in NMFAILOVER_UPLINKS, by role, or by profile id, UUID "
                f"or interface: {known}",
            )
        chosen.update(found)
    return frozenset(chosen)


def metered_warning(index: int, link: LinkState, marked: bool) -> str | None:
    """Why a backup ought to be in NMFAILOVER_METERED, or None: it looks like a mobile modem or hotspot and
    nothing marks it (neither this setting nor its profile's connection.metered=yes, which the device
    shows)."""
    why = link.looks_mobile
    if index == 0 or marked or link.metered == Metered.YES or why is None:
        return None
    role = role_name(index)
    return (
        f"{role} ({link.interface}) looks like {why} but is not marked metered: add {role} to "
        f"{METERED_VARIABLE} so the desktop, apt and Flatpak hold back big downloads while traffic is on it"
    )


class Actuator:
    def __init__(self, params: ActuatorParams, nm: NetworkManagerPort, uplinks: Sequence[Uplink]) -> None:
        """ConfigError for a name in NMFAILOVER_METERED that is no uplink: raised here, before anything
        was changed, as only now are the profiles resolved."""
        self.params = params
        self.nm = nm
        self.uplinks = uplinks
        self.metered = metered_uplinks(params, [u.profile for u in uplinks])
        self.on_demand = on_demand_uplinks(params, [u.profile for u in uplinks])
        self._warned: set[int] = set()  # uplinks whose metered warning is in the log already
        self.applied_for: int | None = None  # the preference NetworkManager last confirmed
        self.applied_ipv6_down: frozenset[int] = frozenset()  # and the uplinks whose IPv6 it ranked last
        # Uplinks whose IPv6 default route we took away, with the gateway their applied connection had.
        self.ipv6_withdrawn: dict[int, str | None] = {}
        self._original_priority: dict[str, int] = {}
        self.router = nm if params.source_routing and isinstance(nm, SourceRouter) else None
        # Per uplink index: the table and rules NetworkManager last confirmed on its applied connection.
        self.source_routing: dict[int, SourceRouting] = {}
        # Moving DNS: the resolvers override_dns was asked for, per uplink; and per uplink what NetworkManager
        # last confirmed on its applied connection (only while something of ours is there).
        self.dns_wanted: dict[int, tuple[str, ...]] = {}
        self._dns_applied: dict[int, DnsOverride] = {}
        self._resolver_routes: dict[int, ResolverRoutes] = {}
        # Multipath TCP path management (mptcp.py): only while the kernel has MPTCP on, read once at start.
        self.mptcp = params.mptcp and mptcp.kernel_enabled() is True

    def remember_priorities(self) -> None:
        """Each profile's own autoconnect-priority, from a crashed earlier run if there was one."""
        if self.params.manage_autoconnect_priority:
            self._original_priority = {
                u.profile.uuid: runstate.original_priority(u.profile.uuid, u.profile.autoconnect_priority)
                for u in self.uplinks
            }

    async def current_route(self) -> int | None:
        """The uplink NetworkManager routes through now, so a restart mid-failover keeps the hold-down."""
        metrics: list[tuple[int, int]] = []
        for uplink in self.uplinks:
            if uplink.link.activated and uplink.link.device is not None:
                try:
                    applied = await self.nm.applied_metrics(uplink.link.device)
                except NMError:
                    continue
                metric = applied.metric4 if applied.metric4 is not None and applied.metric4 >= 0 else 100
                metrics.append((metric, uplink.index))
        return min(metrics)[1] if metrics else None

    async def apply(self, preferred: int) -> None:
        """Give the preferred uplink the lowest metric and the rest theirs in priority order, then verify.

        The new preferred uplink is changed first, so traffic reaches it before the old one is demoted;
        autoconnect priorities come last, as they matter only for the next activation. A failure is logged
        and left for the next round to retry.
        """
        params = self.params
        ranking = [self.uplinks[preferred]] + [u for u in self.uplinks if u.index != preferred]
        ranked = [(u, params.metric_base + rank * params.metric_step) for rank, u in enumerate(ranking)]
        # IPv6 in the same order, except that uplinks whose IPv6 is down go last: IPv6 moves to the next
        # uplink whose IPv6 works while IPv4 stays (a stable sort keeps the order among the rest).
        ipv6_down = self.ipv6_down()
        metric6 = {
            u.index: params.metric_base + rank * params.metric_step
            for rank, u in enumerate(sorted(ranking, key=lambda u: u.index in ipv6_down))
        }
        live = [
            (u, u.link.device, metric, metric6[u.index])
            for u, metric in ranked
            if u.link.activated and u.link.device is not None
        ]
        # Before the default route moves: a connection must be pinned to its uplink by then.
        await self.route_by_source()
        try:
            # Marked before the metrics move traffic there, so NetworkManager calls the machine metered from
            # the moment traffic arrives; the Reapply of the metrics keeps the mark (verified below).
            for uplink, device, _, _ in live:
                if uplink.index in self.metered and await self.nm.set_metered(device, Metered.YES):
                    logger.info("{}: marked metered (connection.metered=yes, at run time)", uplink.label)
            for uplink, device, metric, ipv6 in live:
                started = time.perf_counter()
                flags = self.mptcp_flags(uplink, preferred)
                if await self.nm.set_route_metrics(device, metric, ipv6, flags):
                    logger.info(
                        "{}: route metric {}{} applied in {:.0f} ms{}",
                        uplink.label,
                        metric,
                        "" if ipv6 == metric else f" (IPv6 {ipv6})",
                        (time.perf_counter() - started) * 1000,
                        "" if flags is None else f", MPTCP endpoints {mptcp.describe_flags(flags)}",
                    )
            for uplink, device, metric, ipv6 in live:
                applied = await self.nm.applied_metrics(device)
                if applied.metric4 not in (None, metric) or applied.metric6 not in (None, ipv6):
                    raise NMError(
                        f"{uplink.label} runs with metrics {applied.metric4}/{applied.metric6}, "
                        f"expected {metric}/{ipv6}"
                    )
                if uplink.index in self.metered and applied.metered != Metered.YES:
                    raise NMError(
                        f"{uplink.label} runs with connection.metered {applied.metered.word}, expected yes"
                    )
                routed = self.source_routing.get(uplink.index)
                if routed is not None and routed.active and routed.table not in applied.rule_tables:
                    # Replaced behind our back (`nmcli device reapply`): the next round puts them back.
                    del self.source_routing[uplink.index]
                    raise NMError(f"{uplink.label} runs without its routing rules for table {routed.table}")
            if params.manage_autoconnect_priority:
                for rank, (uplink, _) in enumerate(ranked):
                    if not uplink.missing:
                        await self.nm.set_autoconnect_priority(uplink.profile.uuid, len(ranked) - rank)
        except NMError as exc:
            _failed(f"could not apply the preference for {self.uplinks[preferred].label}", exc)
            return
        self.applied_for, self.applied_ipv6_down = preferred, ipv6_down
        for uplink, _, _, _ in live:
            warning = metered_warning(uplink.index, uplink.link, uplink.index in self.metered)
            # Once per uplink and run: the journal is where a desktop user who never runs status sees it.
            if warning is not None and uplink.index not in self._warned:
                self._warned.add(uplink.index)
                logger.warning("{}", warning)

    def mptcp_flags(self, uplink: Uplink, preferred: int) -> int | None:
        """The connection.mptcp-flags the uplink's applied connection gets with the metrics for `preferred`:
        a backup endpoint unless it carries the traffic; None (left alone) with NMFAILOVER_MPTCP off."""
        if not self.mptcp:
            return None
        return mptcp.endpoint_flags(uplink.profile.mptcp_flags, uplink.index == preferred)

    def ipv6_down(self) -> frozenset[int]:
        """The uplinks whose own IPv6 path is down while the uplink as a whole is up."""
        return frozenset(
            u.index
            for u in self.uplinks
            if u.watch.health6.health is Health.DOWN and u.health.health is Health.UP
        )

    def forget_applied(self) -> None:
        """What NetworkManager confirmed is gone or stale (a switch, a new applied connection, the uplinks
        ordered anew): the next round applies the preference afresh."""
        self.applied_for, self.applied_ipv6_down = None, frozenset()

    def up_to_date(self, preferred: int) -> bool:
        """Whether NetworkManager runs with what apply(preferred) would set now."""
        return self.applied_for == preferred and self.applied_ipv6_down == self.ipv6_down()

    async def restore(self) -> None:
        """Give every uplink its profile's own metrics and autoconnect-priority back, and those it marked
        metered their profile's own connection.metered (only those: a mark set by hand is not ours)."""
        for uplink in self.uplinks:
            await self.release(uplink)

    async def release(self, uplink: Uplink) -> None:
        """Give one uplink its profile's own values back: at stop, or when it stops being an uplink."""
        try:
            link = await self.nm.link_state(uplink.profile.uuid)
            exists = await self.nm.has_profile(uplink.profile.uuid)
            saved = await self.nm.profile(uplink.profile.uuid) if exists else None
            if saved is not None and link.activated and link.device is not None:
                back = Restore(
                    saved.metric4,
                    saved.metric6,
                    source_routing=self._nothing_of_ours(uplink) if self.router is not None else None,
                    ipv6_back=uplink.index in self.ipv6_withdrawn,
                    ipv6_gateway=self.ipv6_withdrawn.pop(uplink.index, None),
                    metered=saved.metered if uplink.index in self.metered else None,
                    dns=saved.dns if uplink.index in self._dns_applied else None,
                    resolver_routes=ResolverRoutes() if uplink.index in self._resolver_routes else None,
                    mptcp_flags=saved.mptcp_flags if self.mptcp else None,
                )
                await self.nm.restore_applied(link.device, back)
                if back.source_routing is not None:
                    logger.info("{}: its routing table and rules removed", uplink.label)
                if back.ipv6_back:
                    logger.info("{}: its IPv6 default route back", uplink.label)
                if back.metered is not None:
                    logger.info(
                        "{}: metered back to its profile's own ({})",
                        uplink.label,
                        saved.metered.word,
                    )
                if back.dns is not None:
                    logger.info("{}: its own resolvers back", uplink.label)
                logger.info("{}: restored its profile's own route metrics", uplink.label)
            self.forget_dns(uplink.index)
            self.forget_source_routing(uplink.index)
            if saved is not None and uplink.profile.uuid in self._original_priority:
                await self.nm.set_autoconnect_priority(
                    uplink.profile.uuid, self._original_priority[uplink.profile.uuid]
                )
            self._original_priority.pop(uplink.profile.uuid, None)
            runstate.forget_priority(uplink.profile.uuid)
        except NMError as exc:
            logger.error("{}: could not restore its profile's values: {}", uplink.label, exc)

    def reindex(self, moved: Mapping[int, int]) -> None:
        """The uplinks were ordered anew (one joined or left): each one's state follows it to its new index
        (`moved`: old index to new; a left one's is dropped). Its table follows its index, so its rules are
        moved at the next round; the preference is applied afresh."""

        def carry(by_index: Mapping[int, _T]) -> dict[int, _T]:
            return {moved[i]: value for i, value in by_index.items() if i in moved}

        self.source_routing = carry(self.source_routing)
        self.dns_wanted = carry(self.dns_wanted)
        self._dns_applied = carry(self._dns_applied)
        self._resolver_routes = carry(self._resolver_routes)
        self.ipv6_withdrawn = carry(self.ipv6_withdrawn)
        self._warned = {moved[i] for i in self._warned if i in moved}
        self.metered = metered_uplinks(self.params, [u.profile for u in self.uplinks])
        self.on_demand = on_demand_uplinks(self.params, [u.profile for u in self.uplinks])
        self.forget_applied()

    async def withdraw_dead_ipv6(self, current: int | None) -> None:
        """No IPv6 black hole: while the uplink carrying traffic is up but has no IPv6 default route, an
        uplink that is not up must not keep one, or every dual-stack program would try IPv6 first, through
        it, and hang until its connect timeout; without any IPv6 route they fall back to IPv4 at once. The
        route comes back as soon as that uplink is up again (or traffic moves to it, or the daemon stops)."""
        carrying = self.uplinks[current] if current is not None else None
        ipv6_lost = (
            carrying is not None and carrying.health.health is Health.UP and carrying.link.gateway6 is None
        )
        for uplink in self.uplinks:
            device = uplink.link.device
            withdraw = ipv6_lost and uplink is not carrying and uplink.health.health is not Health.UP
            unchanged = withdraw is (uplink.index in self.ipv6_withdrawn)
            if unchanged or not uplink.link.activated or device is None:
                continue
            if withdraw and uplink.link.gateway6 is None:
                continue  # no IPv6 default route to take away
            try:
                gateway = await self.nm.set_ipv6_default(
                    device, not withdraw, self.ipv6_withdrawn.get(uplink.index)
                )
            except NMError as exc:
                _failed(f"{uplink.label}: could not change its IPv6 default route", exc)
                continue
            if withdraw:
                self.ipv6_withdrawn[uplink.index] = gateway
                logger.warning(
                    "{}: IPv6 default route taken away while it is {} and {} has no IPv6: dual-stack "
                    "programs use IPv4 at once",
                    uplink.label,
                    uplink.health.health.value,
                    carrying.label if carrying is not None else "none",
                )
            else:
                del self.ipv6_withdrawn[uplink.index]
                logger.info("{}: IPv6 default route back", uplink.label)
            await self.route_by_source()

    # -- routing by source address ------------------------------------------------------------------

    def _nothing_of_ours(self, uplink: Uplink) -> SourceRouting:
        return SourceRouting(
            self.params.source_routing_table + uplink.index, self.params.source_routing_priority
        )

    def source_plan(self, uplink: Uplink) -> SourceRouting:
        """What the uplink's table and rules should hold now: its current gateway and addresses per family.

        A family whose gateway or addresses are missing just now keeps what was applied: every Reapply
        restarts SLAAC, so IPv6 addresses vanish and return within a second, and following that would
        Reapply for ever. Rules for an address that is really gone match no packet."""
        link = uplink.link
        fresh = replace(
            self._nothing_of_ours(uplink),
            gateway4=link.gateway4,
            sources4=link.sources4,
            gateway6=link.gateway6,
            sources6=link.sources6,
        )
        previous = self.source_routing.get(uplink.index)
        if previous is not None and not fresh.routed(4):
            fresh = replace(fresh, gateway4=previous.gateway4, sources4=previous.sources4)
        if previous is not None and not fresh.routed(6):
            fresh = replace(fresh, gateway6=previous.gateway6, sources6=previous.sources6)
        if uplink.index in self.ipv6_withdrawn:
            # Its own table must not keep the IPv6 route either: with no route in the main table, the
            # kernel still picks a source address for an IPv6 connection, and the rule for that address
            # would lead it into the dead uplink all the same.
            fresh = replace(fresh, gateway6=None, sources6=())
        return fresh

    async def route_by_source(self) -> None:
        """Give every active uplink whose addresses or gateway changed its table and rules. A failure is
        logged and tried again at the next event or apply: failover never waits for this."""
        if self.router is None:
            return
        for uplink in self.uplinks:
            device = uplink.link.device
            if not uplink.link.activated or device is None:
                continue
            wanted = self.source_plan(uplink)
            known = self.source_routing.get(uplink.index)
            if wanted == known or (known is None and not wanted.active):
                continue
            try:
                changed = await self.router.set_source_routing(device, wanted)
            except NMError as exc:
                _failed(f"{uplink.label}: could not route its connections by source address", exc)
                continue
            self.source_routing[uplink.index] = wanted
            if changed:
                logger.info(
                    "{}: connections from {} keep leaving through it (table {})",
                    uplink.label,
                    ", ".join(wanted.sources4 + wanted.sources6) or "none of its addresses",
                    wanted.table,
                )

    def forget_source_routing(self, index: int) -> None:
        """NetworkManager made a new applied connection for the uplink (an activation, its own restart),
        so what was confirmed on the old one is gone with it."""
        self.source_routing.pop(index, None)

    def source_routing_status(self, index: int) -> SourceRoutingStatus:
        """The uplink's routing table and what it holds now, for status."""
        if self.router is None:
            return SourceRoutingStatus()
        routed = self.source_routing.get(index)
        if routed is None:
            return SourceRoutingStatus(self.params.source_routing_table + index)
        return SourceRoutingStatus(
            self.params.source_routing_table + index,
            tuple(routed.describe_rules()),
            tuple(routed.describe_routes()),
        )

    # -- moving DNS, not the traffic ------------------------------------------------------------------

    async def override_dns(self, index: int, servers: tuple[str, ...] | None) -> bool:
        """Have the machine's lookups for uplink `index` use `servers` at run time while its traffic stays
        where it is; None (or ()) gives it its own resolvers back. Nothing is written to disk, and stop()
        gives everything back.

        A server that is another active uplink's own resolver moves the lookups to the other uplinks:
        this uplink's dns-priority goes behind theirs (resolv.conf lists theirs first; systemd-resolved
        gets the DNS default route from them only), and a host route through each of them leads queries to
        its resolvers (see ResolverRoutes). Any other server goes in front of its own resolvers on its
        applied connection. True when NetworkManager was changed; a failure (NetworkManager gone, the
        device vanished) is logged and gives False, and the next call tries again."""
        wanted = tuple(dict.fromkeys(_normalized(server) for server in servers or ()))
        if wanted:
            self.dns_wanted[index] = wanted
        else:
            self.dns_wanted.pop(index, None)
        return await self.apply_dns()

    def dns_status(self, index: int) -> DnsOverride:
        """What moving DNS has NetworkManager do on the uplink now (what it confirmed), for status."""
        applied = self._dns_applied.get(index, DnsOverride())
        return replace(applied, routed=self._resolver_routes.get(index, ResolverRoutes()).servers)

    def forget_dns(self, index: int) -> None:
        """NetworkManager made a new applied connection for the uplink (an activation, its own restart):
        what was confirmed on the old one is gone with it, and the next apply_dns() puts it back."""
        self._dns_applied.pop(index, None)
        self._resolver_routes.pop(index, None)

    async def apply_dns(self) -> bool:
        """Bring every active uplink's applied connection to what dns_wanted asks for; True when anything
        was changed. Routes to other uplinks' resolvers are put in before lookups move to them and taken
        away after they are back, so no lookup meets a resolver it cannot reach."""
        plans = {u.index: self._dns_plan(u) for u in self.uplinks if u.link.activated}
        routes = {u.index: self._routes_plan(u, plans) for u in self.uplinks if u.link.activated}
        changed = False
        try:
            for index, wanted_routes in routes.items():
                if wanted_routes.servers:
                    changed |= await self._route_resolvers(index, wanted_routes)
            for index, plan in plans.items():
                changed |= await self._move_dns(index, plan)
            for index, wanted_routes in routes.items():
                if not wanted_routes.servers:
                    changed |= await self._route_resolvers(index, wanted_routes)
        except NMError as exc:
            _failed("could not move DNS", exc)
            return False
        return changed

    def own_nameservers(self, uplink: Uplink) -> tuple[str, ...]:
        """The uplink's own resolvers, without those put in front of them."""
        return self._dns_applied.get(uplink.index, DnsOverride()).own(uplink.link.nameservers)

    def _dns_plan(self, uplink: Uplink) -> DnsOverride:
        wanted = self.dns_wanted.get(uplink.index, ())
        others = {
            s for u in self.uplinks if u is not uplink and u.link.activated for s in self.own_nameservers(u)
        }
        return DnsOverride(
            moved_to=tuple(s for s in wanted if s in others),
            in_front=tuple(s for s in wanted if s not in others),
        )

    def _routes_plan(self, uplink: Uplink, plans: dict[int, DnsOverride]) -> ResolverRoutes:
        # All of a lookup's new resolvers must be reachable, and resolv.conf lists every other uplink's.
        own = self.own_nameservers(uplink)
        if not own or not any(plan.moved_to for index, plan in plans.items() if index != uplink.index):
            return ResolverRoutes()
        return ResolverRoutes(own, uplink.link.gateway4, uplink.link.gateway6)

    async def _move_dns(self, index: int, plan: DnsOverride) -> bool:
        uplink = self.uplinks[index]
        applied = self._dns_applied.get(index, DnsOverride())
        if plan == applied or uplink.link.device is None:
            return False
        own = (await self.nm.profile(uplink.profile.uuid)).dns
        wanted = own
        if plan.overridden:
            # Only the families it has resolvers of: a change of its IPv6 settings restarts its IPv6.
            families = {resolver_version(s) for s in self.own_nameservers(uplink)} if plan.moved_to else set()
            wanted = Dns(
                plan.in_front + tuple(s for s in own.servers if s not in plan.in_front),
                DNS_PRIORITY_MOVED if 4 in families else own.priority4,
                DNS_PRIORITY_MOVED if 6 in families else own.priority6,
            )
        changed = await self.nm.set_dns(uplink.link.device, wanted)
        if plan.overridden:
            self._dns_applied[index] = plan
            logger.warning(
                "{}: its resolvers fail: lookups go to {} while its traffic stays",
                uplink.label,
                ", ".join(plan.in_front + plan.moved_to),
            )
        else:
            del self._dns_applied[index]
            logger.info("{}: its own resolvers back", uplink.label)
        return changed

    async def _route_resolvers(self, index: int, wanted: ResolverRoutes) -> bool:
        uplink = self.uplinks[index]
        if wanted == self._resolver_routes.get(index, ResolverRoutes()) or uplink.link.device is None:
            return False
        changed = await self.nm.set_resolver_routes(uplink.link.device, wanted)
        if wanted.servers:
            self._resolver_routes[index] = wanted
            logger.info(
                "{}: queries to its resolvers {} go through it", uplink.label, ", ".join(wanted.servers)
            )
        else:
            # Not del: the link may have gone (forget) while NetworkManager was being asked.
            self._resolver_routes.pop(index, None)
        return changed


def _failed(what: str, exc: NMError) -> None:
    """A change that did not take, retried at the next round; an error unless the link changed under it."""
    if isinstance(exc, NMLinkChanged):
        logger.info("{}: its link changed meanwhile ({}); it is read again", what, exc)
    elif isinstance(exc, NMUnavailable):
        logger.warning("{}: {}; again when it is back", what, exc)
    else:
        logger.error("{}: {} (will retry)", what, exc)


def _normalized(server: str) -> str:
    """The address as NetworkManager lists it (a DNS-over-TLS name after "#" kept as it is)."""
    address, sep, name = server.partition("#")
    return f"{ipaddress.ip_address(address)}{sep}{name}"
