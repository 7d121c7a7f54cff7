"""The daemon's loop: probe each uplink at the pace its role asks for, fold results into the policy, and
carry the policy's choice out through NetworkManager. Every I/O edge is a small Protocol, so the wiring is
testable with fakes while the real adapter is proven against a real NetworkManager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from loguru import logger

from .config import Settings
from .nm import LinkState, Metrics, NMError, NMUnavailable, Profile
from .policy import Action, Decision, Health, PolicyParams, UplinkHealth, decide, observe
from .probe import Link, RoundResult, Target

ROLE_NAMES = ("primary", "backup", "fallback")
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


class NetworkManagerPort(Protocol):
    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def wait_for_disconnect(self) -> None: ...
    async def link_state(self, uuid: str) -> LinkState: ...
    async def set_route_metrics(self, device: str, metric4: int, metric6: int) -> bool: ...
    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool: ...
    async def profile(self, uuid: str) -> Profile: ...
    async def applied_metrics(self, device: str) -> Metrics: ...


Prober = Callable[[Link, Sequence[Target], float, int], Awaitable[RoundResult]]


def role_name(index: int) -> str:
    return ROLE_NAMES[index] if index < len(ROLE_NAMES) else f"uplink{index + 1}"


@dataclass
class Uplink:
    index: int
    profile: Profile
    link: LinkState
    health: UplinkHealth = field(default_factory=UplinkHealth)
    last_round: RoundResult | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def role(self) -> str:
        return role_name(self.index)

    @property
    def label(self) -> str:
        return f"{self.role} ({self.link.interface or self.profile.interface_name or self.profile.id})"


class Controller:
    def __init__(self, settings: Settings, nm: NetworkManagerPort, profiles: Sequence[Profile],
                 prober: Prober, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.nm = nm
        self.prober = prober
        self.clock = clock
        self.params = PolicyParams(settings.fail_count, settings.rise_count, settings.failback_hold_down)
        self.uplinks = [Uplink(i, p, LinkState(uuid=p.uuid)) for i, p in enumerate(profiles)]
        self.current: int | None = None
        self.last_switch_at: float | None = None
        self.switches = 0
        self._applied_for: int | None = None  # the preference NetworkManager last confirmed
        self._apply_lock = asyncio.Lock()
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._recheck: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()

    # -- entry points -------------------------------------------------------------------------------

    def on_nm_event(self, what: str) -> None:
        """Called by the adapter for every relevant NetworkManager signal; must not block."""
        self._events.put_nowait(what)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._refresh_links()
        self.current = await self._initial_current()
        await asyncio.gather(*(self._probe_once(u) for u in self.uplinks))
        await self._reconcile()
        self.ready.set()
        where = self.uplinks[self.current].label if self.current is not None else "no uplink (none is healthy)"
        logger.info("ready: traffic on {}; {}", where,
                    ", ".join(f"{u.label} {u.health.health.value}" for u in self.uplinks))
        tasks = [asyncio.create_task(self._probe_loop(u), name=f"probe-{u.role}") for u in self.uplinks]
        tasks.append(asyncio.create_task(self._event_loop(), name="nm-events"))
        tasks.append(asyncio.create_task(self._bus_watch(), name="bus-watch"))
        try:
            await self._stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._recheck is not None:
                self._recheck.cancel()
            await self._restore()

    # -- probing ------------------------------------------------------------------------------------

    def _interval(self, uplink: Uplink) -> float:
        if uplink.health.suspect:
            return self.settings.suspect_interval
        if uplink.index == self.current:
            return self.settings.active_interval
        return self.settings.standby_interval

    async def _probe_loop(self, uplink: Uplink) -> None:
        while True:
            started = self.clock()
            uplink.wake.clear()
            try:
                await asyncio.wait_for(uplink.wake.wait(), self._interval(uplink))
            except asyncio.TimeoutError:
                pass
            await self._probe_once(uplink)
            await self._reconcile()
            # Back-to-back rounds are fine while suspect; never spin faster than that.
            if self.clock() - started < 0.01:
                await asyncio.sleep(0.01)

    async def _probe_once(self, uplink: Uplink) -> None:
        link = Link(uplink.link.interface if uplink.link.activated else None, uplink.link.nameservers)
        result = await self.prober(link, self.settings.probe_targets, self.settings.probe_timeout,
                                   self.settings.probe_quorum)
        before = uplink.health
        uplink.last_round = result
        uplink.health = observe(before, result.ok, self.clock(), self.params, hard=result.hard_failure)
        if uplink.health.health != before.health:
            verdict = "up" if uplink.health.health == Health.UP else "down"
            logger.info("{} {}: {}", uplink.label, verdict, result.summary)
        elif before.health == Health.UP and not result.ok:
            logger.warning("{} failing ({}/{}): {}", uplink.label, uplink.health.consecutive_failures,
                           self.params.fail_count, result.summary)

    # -- deciding and applying ----------------------------------------------------------------------

    async def _initial_current(self) -> int | None:
        """Adopt the uplink NetworkManager routes through now, so a restart mid-failover keeps the hold-down."""
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

    def decision(self) -> Decision:
        return decide([u.health for u in self.uplinks], self.current, self.clock(), self.params,
                      names=[u.label for u in self.uplinks])

    async def _reconcile(self) -> None:
        async with self._apply_lock:
            decision = self.decision()
            self._schedule_recheck(decision.recheck_at)
            target = decision.preferred
            if target is None:
                return
            if target != self.current:
                old = self.uplinks[self.current] if self.current is not None else None
                cause = f"{old.label} {old.last_round.summary}" if (
                    old is not None and old.last_round is not None and decision.action == Action.FAILOVER
                ) else decision.reason
                logger.warning("{} -> switching to {}", cause, self.uplinks[target].label)
                self.current = target
                self.last_switch_at = self.clock()
                self.switches += 1
                self._applied_for = None
            if self._applied_for != target:
                await self._apply(target)

    def _schedule_recheck(self, at: float | None) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if at is not None:
            delay = max(0.0, at - self.clock())
            self._recheck = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self._reconcile()))

    def ranking(self, preferred: int) -> list[Uplink]:
        return [self.uplinks[preferred]] + [u for u in self.uplinks if u.index != preferred]

    async def _apply(self, preferred: int) -> None:
        """Give the preferred uplink the lowest metric and the rest theirs in priority order.

        The new preferred uplink is changed first, so traffic reaches it before the old one is demoted.
        """
        settings = self.settings
        try:
            for rank, uplink in enumerate(self.ranking(preferred)):
                metric = settings.metric_base + rank * settings.metric_step
                if uplink.link.activated and uplink.link.device is not None:
                    started = time.perf_counter()
                    changed = await self.nm.set_route_metrics(uplink.link.device, metric, metric)
                    if changed:
                        logger.info("{}: route metric {} applied in {:.0f} ms", uplink.label, metric,
                                    (time.perf_counter() - started) * 1000)
                if settings.manage_autoconnect_priority:
                    await self.nm.set_autoconnect_priority(uplink.profile.uuid,
                                                           len(self.uplinks) - rank)
        except NMError as exc:
            logger.error("could not apply the preference for {}: {} (will retry)",
                         self.uplinks[preferred].label, exc)
            return
        self._applied_for = preferred

    async def _restore(self) -> None:
        """Give every uplink its profile's own metrics and autoconnect-priority back."""
        for uplink in self.uplinks:
            try:
                link = await self.nm.link_state(uplink.profile.uuid)
                saved = await self.nm.profile(uplink.profile.uuid)
                if link.activated and link.device is not None:
                    await self.nm.set_route_metrics(link.device, saved.metric4, saved.metric6)
                if self.settings.manage_autoconnect_priority:
                    await self.nm.set_autoconnect_priority(uplink.profile.uuid,
                                                           uplink.profile.autoconnect_priority)
                logger.info("{}: restored its profile's own route metrics", uplink.label)
            except NMError as exc:
                logger.error("{}: could not restore its profile's values: {}", uplink.label, exc)

    # -- NetworkManager events and connection ----------------------------------------------------------

    async def _refresh_links(self) -> list[Uplink]:
        """Re-read every uplink's link; return those whose link changed in a way a probe should see."""
        changed = []
        for uplink in self.uplinks:
            try:
                link = await self.nm.link_state(uplink.profile.uuid)
            except NMUnavailable:
                raise
            except NMError as exc:
                logger.error("{}: cannot read its link: {}", uplink.label, exc)
                link = LinkState(uuid=uplink.profile.uuid)
            old = uplink.link
            if (link.device, link.interface, link.state, link.nameservers) != (
                    old.device, old.interface, old.state, old.nameservers):
                if old.state or link.state:
                    logger.info("{}: link {} -> {}", uplink.label, old.state_name, link.state_name)
                if link.activated and not old.activated:
                    # A fresh activation brings back the profile's own metrics.
                    self._applied_for = None
                changed.append(uplink)
            uplink.link = link
        return changed

    async def _event_loop(self) -> None:
        while True:
            burst = [await self._events.get()]
            await asyncio.sleep(0.02)  # let the signals of one change arrive, then act once
            while not self._events.empty():
                burst.append(self._events.get_nowait())
            logger.debug("NetworkManager events: {}", "; ".join(burst))
            presence = [e for e in burst if e.startswith("networkmanager-")]
            if presence and presence[-1] == "networkmanager-stopped":
                logger.warning("NetworkManager left the bus; probing goes on, changes wait for its return")
                continue
            if presence:
                logger.info("NetworkManager is back; re-reading links and re-applying the preference")
                self._applied_for = None
            try:
                changed = await self._refresh_links()
            except NMError as exc:
                logger.warning("cannot read links after an event: {}", exc)
                continue
            # A carrier change shows in no link field NetworkManager reports yet: probe every uplink now.
            for uplink in self.uplinks if any(" carrier " in e for e in burst) else changed:
                uplink.wake.set()
            await self._reconcile()

    async def _bus_watch(self) -> None:
        while True:
            await self.nm.wait_for_disconnect()
            logger.warning("lost the system bus connection; reconnecting")
            await self.nm.close()
            attempt = 0
            while True:
                await asyncio.sleep(RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)])
                attempt += 1
                try:
                    await self.nm.connect()
                    break
                except NMError as exc:
                    logger.debug("reconnect attempt {} failed: {}", attempt, exc)
            logger.info("reconnected to the system bus")
            self.on_nm_event("networkmanager-started")
