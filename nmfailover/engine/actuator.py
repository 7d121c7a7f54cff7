"""Carrying a decision out through NetworkManager: rank the uplinks' route metrics (and autoconnect
priorities), mark the metered ones, give each uplink its own routing table for the connections that use its
addresses, verify what NetworkManager really applied, and put the profiles' own values back on stop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from loguru import logger

from .. import runstate
from ..config import Settings
from ..errors import ConfigError, NMError
from ..nm import METERED_NAMES, METERED_YES, LinkState, Metrics, Profile, Restore, SourceRouting
from ..policy import Health
from .state import Uplink, role_name

METERED_VARIABLE = "NMFAILOVER_METERED"


class NetworkManagerPort(Protocol):
    """What the engine needs of NetworkManager; nm.NetworkManagerClient is the real one."""

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def wait_for_disconnect(self) -> None: ...
    async def link_state(self, uuid: str) -> LinkState: ...
    async def set_route_metrics(self, device: str, metric4: int, metric6: int) -> bool: ...
    async def set_metered(self, device: str, metered: int) -> bool: ...
    async def set_ipv6_default(
        self, device: str, allowed: bool, gateway: str | None = None
    ) -> str | None: ...
    async def restore_applied(self, device: str, back: Restore) -> bool: ...
    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool: ...
    async def profile(self, uuid: str) -> Profile: ...
    async def applied_metrics(self, device: str) -> Metrics: ...
    async def has_profile(self, uuid: str) -> bool: ...


@runtime_checkable
class SourceRouter(Protocol):
    """What routing by source address needs of NetworkManager besides the port; nm.NetworkManagerClient
    has it. A separate protocol, so the engine's test doubles that never route by source need not."""

    async def set_source_routing(self, device: str, wanted: SourceRouting) -> bool: ...


def metered_uplinks(settings: Settings, profiles: Sequence[Profile]) -> frozenset[int]:
    """The indexes of the uplinks NMFAILOVER_METERED names; a name that is none of them is a ConfigError.

    A name is looked up as written in NMFAILOVER_UPLINKS first, then as a profile id, UUID or bound
    interface, then as a role: a profile called "backup" listed first is the primary, not the second uplink.
    """
    chosen: set[int] = set()
    for name in settings.metered:
        tiers = (
            [i for i, p in enumerate(profiles) if p.spec == name],
            [i for i, p in enumerate(profiles) if name in (p.id, p.uuid, p.interface_name)],
            [i for i in range(len(profiles)) if role_name(i) == name],
        )
        found = next((tier for tier in tiers if tier), [])
        if len(found) != 1:
            known = ", ".join(f"{role_name(i)} ({p.id})" for i, p in enumerate(profiles))
            problem = "names several uplinks" if found else "is not one of the uplinks"
            raise ConfigError(
                METERED_VARIABLE,
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
    if index == 0 or marked or link.metered == METERED_YES or why is None:
        return None
    role = role_name(index)
    return (
        f"{role} ({link.interface}) looks like {why} but is not marked metered: add {role} to "
        f"{METERED_VARIABLE} so the desktop, apt and Flatpak hold back big downloads while traffic is on it"
    )


class Actuator:
    def __init__(self, settings: Settings, nm: NetworkManagerPort, uplinks: Sequence[Uplink]) -> None:
        """ConfigError for a name in NMFAILOVER_METERED that is no uplink: raised here, before anything
        was changed, as only now are the profiles resolved."""
        self.settings = settings
        self.nm = nm
        self.uplinks = uplinks
        self.metered = metered_uplinks(settings, [u.profile for u in uplinks])
        self._warned: set[int] = set()  # uplinks whose metered warning is in the log already
        self.applied_for: int | None = None  # the preference NetworkManager last confirmed
        self.applied_ipv6_down: frozenset[int] = frozenset()  # and the uplinks whose IPv6 it ranked last
        # Uplinks whose IPv6 default route we took away, with the gateway their applied connection had.
        self.ipv6_withdrawn: dict[int, str | None] = {}
        self._original_priority: dict[str, int] = {}
        self.router = nm if settings.source_routing and isinstance(nm, SourceRouter) else None
        # Per uplink index: the table and rules NetworkManager last confirmed on its applied connection.
        self.source_routing: dict[int, SourceRouting] = {}

    def remember_priorities(self) -> None:
        """Each profile's own autoconnect-priority, from a crashed earlier run if there was one."""
        if self.settings.manage_autoconnect_priority:
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
        settings = self.settings
        ranking = [self.uplinks[preferred]] + [u for u in self.uplinks if u.index != preferred]
        ranked = [(u, settings.metric_base + rank * settings.metric_step) for rank, u in enumerate(ranking)]
        # IPv6 in the same order, except that uplinks whose IPv6 is down go last: IPv6 moves to the next
        # uplink whose IPv6 works while IPv4 stays (a stable sort keeps the order among the rest).
        ipv6_down = self.ipv6_down()
        metric6 = {
            u.index: settings.metric_base + rank * settings.metric_step
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
                if uplink.index in self.metered and await self.nm.set_metered(device, METERED_YES):
                    logger.info("{}: marked metered (connection.metered=yes, at run time)", uplink.label)
            for uplink, device, metric, ipv6 in live:
                started = time.perf_counter()
                if await self.nm.set_route_metrics(device, metric, ipv6):
                    logger.info(
                        "{}: route metric {}{} applied in {:.0f} ms",
                        uplink.label,
                        metric,
                        "" if ipv6 == metric else f" (IPv6 {ipv6})",
                        (time.perf_counter() - started) * 1000,
                    )
            for uplink, device, metric, ipv6 in live:
                applied = await self.nm.applied_metrics(device)
                if applied.metric4 not in (None, metric) or applied.metric6 not in (None, ipv6):
                    raise NMError(
                        f"{uplink.label} runs with metrics {applied.metric4}/{applied.metric6}, "
                        f"expected {metric}/{ipv6}"
                    )
                if uplink.index in self.metered and applied.metered != METERED_YES:
                    raise NMError(
                        f"{uplink.label} runs with connection.metered "
                        f"{METERED_NAMES.get(applied.metered, applied.metered)}, expected yes"
                    )
                routed = self.source_routing.get(uplink.index)
                if routed is not None and routed.active and routed.table not in applied.rule_tables:
                    # Replaced behind our back (`nmcli device reapply`): the next round puts them back.
                    del self.source_routing[uplink.index]
                    raise NMError(f"{uplink.label} runs without its routing rules for table {routed.table}")
            if settings.manage_autoconnect_priority:
                for rank, (uplink, _) in enumerate(ranked):
                    if not uplink.missing:
                        await self.nm.set_autoconnect_priority(uplink.profile.uuid, len(ranked) - rank)
        except NMError as exc:
            logger.error(
                "could not apply the preference for {}: {} (will retry)", self.uplinks[preferred].label, exc
            )
            return
        self.applied_for, self.applied_ipv6_down = preferred, ipv6_down
        for uplink, _, _, _ in live:
            warning = metered_warning(uplink.index, uplink.link, uplink.index in self.metered)
            # Once per uplink and run: the journal is where a desktop user who never runs status sees it.
            if warning is not None and uplink.index not in self._warned:
                self._warned.add(uplink.index)
                logger.warning("{}", warning)

    def ipv6_down(self) -> frozenset[int]:
        """The uplinks whose own IPv6 path is down while the uplink as a whole is up."""
        return frozenset(
            u.index
            for u in self.uplinks
            if u.watch.health6.health is Health.DOWN and u.health.health is Health.UP
        )

    def up_to_date(self, preferred: int) -> bool:
        """Whether NetworkManager runs with what apply(preferred) would set now."""
        return self.applied_for == preferred and self.applied_ipv6_down == self.ipv6_down()

    async def restore(self) -> None:
        """Give every uplink its profile's own metrics and autoconnect-priority back, and those it marked
        metered their profile's own connection.metered (only those: a mark set by hand is not ours)."""
        for uplink in self.uplinks:
            try:
                link = await self.nm.link_state(uplink.profile.uuid)
                saved = await self.nm.profile(uplink.profile.uuid)
                if link.activated and link.device is not None:
                    back = Restore(
                        saved.metric4,
                        saved.metric6,
                        source_routing=self._nothing_of_ours(uplink) if self.router is not None else None,
                        ipv6_back=uplink.index in self.ipv6_withdrawn,
                        ipv6_gateway=self.ipv6_withdrawn.pop(uplink.index, None),
                        metered=saved.metered if uplink.index in self.metered else None,
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
                            METERED_NAMES.get(saved.metered, saved.metered),
                        )
                if uplink.profile.uuid in self._original_priority:
                    await self.nm.set_autoconnect_priority(
                        uplink.profile.uuid, self._original_priority[uplink.profile.uuid]
                    )
                    runstate.forget_priority(uplink.profile.uuid)
                logger.info("{}: restored its profile's own route metrics", uplink.label)
            except NMError as exc:
                logger.error("{}: could not restore its profile's values: {}", uplink.label, exc)

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
                logger.error("{}: could not change its IPv6 default route: {}", uplink.label, exc)
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
            self.settings.source_routing_table + uplink.index, self.settings.source_routing_priority
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
                logger.error("{}: could not route its connections by source address: {}", uplink.label, exc)
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

    def source_routing_status(self, index: int) -> dict[str, Any]:
        """The uplink's routing table and what it holds now, for status."""
        if self.router is None:
            return {"routing_table": None, "routing_rules": [], "routing_routes": []}
        routed = self.source_routing.get(index)
        return {
            "routing_table": self.settings.source_routing_table + index,
            "routing_rules": routed.describe_rules() if routed is not None else [],
            "routing_routes": routed.describe_routes() if routed is not None else [],
        }

    # TEMPORARY until the DNS mechanism lands (h-dnsfix)
    def own_nameservers(self, uplink: Uplink) -> tuple[str, ...]:
        return uplink.link.nameservers

    async def override_dns(self, index: int, servers: tuple[str, ...]) -> bool:
        return False
