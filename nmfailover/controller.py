"""The daemon's loop: probe each uplink at the pace its role asks for, fold results into the policy, and
carry the policy's choice out through NetworkManager. Every I/O edge is a small Protocol, so the wiring is
testable with fakes while the real adapter is proven against a real NetworkManager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from loguru import logger

from . import runstate
from .config import Settings
from .nm import LinkState, Metrics, NMError, NMUnavailable, Profile
from .policy import Action, Decision, Health, PolicyParams, UplinkHealth, decide, observe
from .probe import Link, RoundResult, Target

ROLE_NAMES = ("primary", "backup", "fallback")
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
MIN_ROUND_GAP = 0.05


class NetworkManagerPort(Protocol):
    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def wait_for_disconnect(self) -> None: ...
    async def link_state(self, uuid: str) -> LinkState: ...
    async def set_route_metrics(self, device: str, metric4: int, metric6: int) -> bool: ...
    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool: ...
    async def profile(self, uuid: str) -> Profile: ...
    async def applied_metrics(self, device: str) -> Metrics: ...
    async def has_profile(self, uuid: str) -> bool: ...


Prober = Callable[[Link, Sequence[Target], float, int], Awaitable[RoundResult]]


@dataclass(frozen=True)
class SwitchEvent:
    """A change of the uplink carrying traffic, as hooks, signals and notifications describe it."""

    action: str                # failover, failback, pin, avoid, initial
    state: str                 # the new uplink's role, upper case: PRIMARY, BACKUP, FALLBACK, UPLINK4...
    from_profile: str          # profile id ("" at start-up)
    to_profile: str
    from_device: str
    device: str                # the new uplink's interface
    gateway4: str
    gateway6: str
    reason: str
    at: float                  # wall-clock time (seconds since the epoch)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SwitchListener = Callable[[SwitchEvent], Awaitable[None]]
# Asked before failing back; False vetoes the failback for now (asked again on a later round).
FailbackGuard = Callable[[SwitchEvent], Awaitable[bool]]


def role_name(index: int) -> str:
    return ROLE_NAMES[index] if index < len(ROLE_NAMES) else f"uplink{index + 1}"


@dataclass
class Uplink:
    index: int
    profile: Profile
    link: LinkState
    health: UplinkHealth = field(default_factory=UplinkHealth)
    last_round: RoundResult | None = None
    rotation: int = 0  # which targets a lean round asks next
    missing: bool = False  # its profile was deleted from NetworkManager
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
        self.switch_listeners: list[SwitchListener] = []
        self.failback_guard: FailbackGuard | None = None
        self.avoid_until: float | None = None   # forced test failover: the avoided uplink and until when
        self.avoided: int | None = None
        self.pinned: int | None = None
        self.pinned_until: float | None = None
        self._vetoed_until: float | None = None
        self._listener_tasks: set[asyncio.Future[None]] = set()
        self._original_priority: dict[str, int] = {}

    # -- entry points -------------------------------------------------------------------------------

    def on_nm_event(self, what: str) -> None:
        """Called by the adapter for every relevant NetworkManager signal; must not block."""
        self._events.put_nowait(what)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        if self.settings.manage_autoconnect_priority:
            self._original_priority = {u.profile.uuid: runstate.original_priority(
                u.profile.uuid, u.profile.autoconnect_priority) for u in self.uplinks}
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
        # Uplinks we would rather be on are watched as closely as the one carrying traffic, so a recovered
        # primary is noticed in seconds; the rest (often metered) less often.
        if self.current is None or uplink.index <= self.current:
            return self.settings.active_interval
        return self.settings.standby_interval

    async def _probe_loop(self, uplink: Uplink) -> None:
        last_start = self.clock()  # run() has just probed every uplink
        while True:
            # Intervals run start to start: a round that takes longer is followed at once by the next.
            delay = last_start + self._interval(uplink) - self.clock()
            if delay > 0:
                try:
                    # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races the wake-up.
                    async with asyncio.timeout(delay):
                        await uplink.wake.wait()
                except TimeoutError:
                    pass
            # A burst of wake-ups must not turn into a burst of rounds.
            gap = last_start + MIN_ROUND_GAP - self.clock()
            if gap > 0:
                await asyncio.sleep(gap)
            uplink.wake.clear()
            last_start = self.clock()
            await self._probe_once(uplink)
            await self._reconcile()

    def _round_targets(self, uplink: Uplink) -> Sequence[Target]:
        """Every target while anything is in doubt; on a steadily healthy uplink only as many as the quorum,
        in rotation, which cuts probe traffic (backups are often metered) without slowing detection: a
        failed lean round makes the uplink suspect, and the next round asks every target at once."""
        targets = self.settings.probe_targets
        if uplink.health.health != Health.UP or uplink.health.suspect:
            return targets
        uplink.rotation += 1
        return [targets[(uplink.rotation + i) % len(targets)] for i in range(self.settings.probe_quorum)]

    async def _probe_once(self, uplink: Uplink) -> None:
        link = Link(uplink.link.interface if uplink.link.activated else None, uplink.link.nameservers)
        result = await self.prober(link, self._round_targets(uplink), self.settings.probe_timeout,
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
        now = self.clock()
        if self.avoid_until is not None and now >= self.avoid_until:
            logger.info("forced failover over; normal policy resumes")
            self.avoid_until = self.avoided = None
        if self.pinned_until is not None and now >= self.pinned_until:
            logger.info("preference for {} expired", self.uplinks[self.pinned].label if self.pinned is not None
                        else "?")
            self.pinned = self.pinned_until = None
        avoid = frozenset({self.avoided}) if self.avoided is not None else frozenset()
        return decide([u.health for u in self.uplinks], self.current, now, self.params,
                      names=[u.label for u in self.uplinks], pinned=self.pinned, avoid=avoid)

    async def _reconcile(self) -> None:
        async with self._apply_lock:
            decision = self.decision()
            self._schedule_recheck(decision.recheck_at)
            target = decision.preferred
            if target is None or self.uplinks[target].health.health != Health.UP:
                return  # with nothing healthy, nothing is changed
            if target != self.current:
                event = self._switch_event(decision, target)
                if decision.action == Action.FAILBACK and not await self._failback_allowed(event):
                    return
                old = self.uplinks[self.current] if self.current is not None else None
                cause = f"{old.label} {old.last_round.summary}" if (
                    old is not None and old.last_round is not None and decision.action == Action.FAILOVER
                ) else decision.reason
                logger.warning("{} -> switching to {}", cause, self.uplinks[target].label)
                self.current = target
                self.last_switch_at = self.clock()
                self.switches += 1
                self._applied_for = None
                await self._apply(target)
                for listener in self.switch_listeners:
                    task = asyncio.ensure_future(self._notify(listener, event))
                    self._listener_tasks.add(task)  # the loop keeps only weak references to tasks
                    task.add_done_callback(self._listener_tasks.discard)
            elif self._applied_for != target:
                await self._apply(target)

    async def _failback_allowed(self, event: SwitchEvent) -> bool:
        if self.failback_guard is None:
            return True
        now = self.clock()
        if self._vetoed_until is not None and now < self._vetoed_until:
            return False
        if await self.failback_guard(event):
            self._vetoed_until = None
            return True
        # Ask again a round later, not on every probe result in between.
        self._vetoed_until = now + self.settings.active_interval
        logger.info("failback to {} vetoed by the guard hook; staying on {}", event.to_profile,
                    event.from_profile)
        self._schedule_recheck(self._vetoed_until)
        return False

    @staticmethod
    async def _notify(listener: SwitchListener, event: SwitchEvent) -> None:
        try:
            await listener(event)
        except Exception as exc:  # noqa: BLE001 - a listener's failure must never stop switching
            logger.error("switch listener failed: {}", exc)

    def _switch_event(self, decision: Decision, target: int) -> SwitchEvent:
        new = self.uplinks[target]
        old = self.uplinks[self.current] if self.current is not None else None
        return SwitchEvent(
            action=decision.action.value, state=new.role.upper(),
            from_profile=old.profile.id if old else "", to_profile=new.profile.id,
            from_device=(old.link.interface or "") if old else "", device=new.link.interface or "",
            gateway4=new.link.gateway4 or "", gateway6=new.link.gateway6 or "",
            reason=decision.reason, at=time.time())

    def _schedule_recheck(self, at: float | None) -> None:
        times = [t for t in (at, self.avoid_until, self.pinned_until) if t is not None]
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if times:
            delay = max(0.0, min(times) - self.clock())
            self._recheck = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self._reconcile()))

    # -- operator requests (control interface) ----------------------------------------------------------

    def find_uplink(self, name: str) -> Uplink:
        """An uplink by role (primary, backup...), profile id, UUID, configured name or interface."""
        for uplink in self.uplinks:
            if name in (uplink.role, uplink.profile.id, uplink.profile.uuid, uplink.profile.spec,
                        uplink.link.interface, uplink.profile.interface_name):
                return uplink
        known = ", ".join(f"{u.role} ({u.profile.id})" for u in self.uplinks)
        raise ValueError(f"no uplink {name!r}; known: {known}")

    async def recheck(self, interface: str = "", reason: str = "") -> int:
        """Probe now: the uplinks on `interface`, or all when it names none of them. Returns how many."""
        chosen = [u for u in self.uplinks if interface and interface in (u.link.interface,
                                                                         u.profile.interface_name)]
        logger.info("re-check requested{}{}", f" for {interface}" if interface else "",
                    f" ({reason})" if reason else "")
        for uplink in chosen or self.uplinks:
            uplink.wake.set()
        return len(chosen or self.uplinks)

    async def force_failover(self, seconds: float) -> None:
        """AstLinux's failover test: avoid the current uplink for a while without touching its link."""
        if not seconds > 0:
            raise ValueError(f"seconds must be greater than 0; got {seconds}")
        if self.current is None:
            raise ValueError("no uplink carries traffic yet")
        self.avoided, self.avoid_until = self.current, self.clock() + seconds
        logger.warning("forced failover: avoiding {} for {:g} s", self.uplinks[self.current].label, seconds)
        await self._reconcile()

    async def end_force(self) -> None:
        if self.avoided is not None:
            logger.info("forced failover ended early")
        self.avoided = self.avoid_until = None
        await self._reconcile()

    async def prefer(self, name: str, seconds: float = 0) -> None:
        """Pin an uplink (while it is healthy) until cleared, or for `seconds` if > 0."""
        if seconds < 0:
            raise ValueError(f"seconds must not be negative; got {seconds}")
        uplink = self.find_uplink(name)
        self.pinned, self.pinned_until = uplink.index, (self.clock() + seconds if seconds else None)
        logger.warning("preference pinned to {}{}", uplink.label, f" for {seconds:g} s" if seconds else "")
        await self._reconcile()

    async def clear_preference(self) -> None:
        if self.pinned is not None:
            logger.info("preference for {} cleared", self.uplinks[self.pinned].label)
        self.pinned = self.pinned_until = None
        await self._reconcile()

    def status(self) -> dict[str, Any]:
        """Everything an operator wants to see, JSON-friendly; times are seconds since the epoch."""
        now, wall = self.clock(), time.time()

        def wall_time(at: float | None) -> float | None:
            return None if at is None else wall - (now - at)

        decision = self.decision()
        hold_down = max(0.0, decision.recheck_at - now) if decision.recheck_at is not None else 0.0
        return {
            "preferred": self.uplinks[self.current].role if self.current is not None else None,
            "last_switch_at": wall_time(self.last_switch_at),
            "switches": self.switches,
            "hold_down_remaining": round(hold_down, 3),
            "forced_failover_remaining": round(max(0.0, self.avoid_until - now), 3)
            if self.avoid_until is not None else 0.0,
            "pinned": self.uplinks[self.pinned].role if self.pinned is not None else None,
            "uplinks": [{
                "role": u.role, "profile": u.profile.id, "uuid": u.profile.uuid,
                "device": u.link.interface, "link": u.link.state_name,
                "health": "suspect" if u.health.suspect and u.health.health != Health.UNKNOWN
                else u.health.health.value,
                "consecutive_failures": u.health.consecutive_failures,
                "consecutive_successes": u.health.consecutive_successes,
                "latency_ms": round(min(r.latency for r in u.last_round.results) * 1000, 1)
                if u.last_round and u.last_round.results else None,
                "reason": u.last_round.summary if u.last_round else None,
                "carrying_traffic": u.index == self.current,
            } for u in self.uplinks],
        }

    def ranking(self, preferred: int) -> list[Uplink]:
        return [self.uplinks[preferred]] + [u for u in self.uplinks if u.index != preferred]

    async def _apply(self, preferred: int) -> None:
        """Give the preferred uplink the lowest metric and the rest theirs in priority order, then verify.

        The new preferred uplink is changed first, so traffic reaches it before the old one is demoted;
        autoconnect priorities come last, as they matter only for the next activation.
        """
        settings = self.settings
        ranked = [(u, settings.metric_base + rank * settings.metric_step)
                  for rank, u in enumerate(self.ranking(preferred))]
        live = [(u, u.link.device, metric) for u, metric in ranked
                if u.link.activated and u.link.device is not None]
        try:
            for uplink, device, metric in live:
                started = time.perf_counter()
                if await self.nm.set_route_metrics(device, metric, metric):
                    logger.info("{}: route metric {} applied in {:.0f} ms", uplink.label, metric,
                                (time.perf_counter() - started) * 1000)
            seen = []
            for uplink, device, metric in live:
                applied = await self.nm.applied_metrics(device)
                if {applied.metric4, applied.metric6} - {None} != {metric}:
                    raise NMError(f"{uplink.label} runs with metrics {applied.metric4}/{applied.metric6}, "
                                  f"expected {metric}")
                seen.append(f"{uplink.label} {metric}")
            logger.debug("verified applied metrics: {}", ", ".join(seen))
            if settings.manage_autoconnect_priority:
                for rank, (uplink, _) in enumerate(ranked):
                    if not uplink.missing:
                        await self.nm.set_autoconnect_priority(uplink.profile.uuid, len(ranked) - rank)
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
                                                           self._original_priority[uplink.profile.uuid])
                    runstate.forget_priority(uplink.profile.uuid)
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
            if link.device is None or uplink.missing:
                await self._check_profile_exists(uplink)
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

    async def _check_profile_exists(self, uplink: Uplink) -> None:
        exists = await self.nm.has_profile(uplink.profile.uuid)
        if not exists and not uplink.missing:
            logger.error("{}: its profile {!r} ({}) was deleted from NetworkManager; it counts as down until a "
                         "profile with this UUID returns", uplink.label, uplink.profile.id, uplink.profile.uuid)
        elif exists and uplink.missing:
            logger.info("{}: its profile {!r} is back", uplink.label, uplink.profile.id)
        uplink.missing = not exists

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
