"""The engine: owns which uplink carries traffic, folds the policy's decision into NetworkManager through
the actuator, and runs every loop (probes, events, bus, timers, switch listeners) under one supervisor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar, runtime_checkable

from loguru import logger

from ..config import Settings
from ..detection import DetectionParams
from ..discovery import Choice, choose
from ..errors import InvalidRequest, NMError
from ..nm import Candidate, LinkState, NMEvent, Profile
from ..policy import Action, Decision, Health, PolicyParams, decide
from .actuator import Actuator, ActuatorParams, NetworkManagerPort
from .evidence import TrafficEvidence
from .intake import IDLE_BEAT, EventIntake
from .ondemand import Activator, OnDemand
from .probing import DnsChecker, Echoer, HttpChecker, Prober, ProbeScheduler, RxCounter
from .state import DnsMoved, Override, SwitchEvent, Uplink
from .supervisor import Job, Supervisor

SwitchListener = Callable[[SwitchEvent], Awaitable[None]]
DnsListener = Callable[[DnsMoved], Awaitable[None]]
_Event = TypeVar("_Event", SwitchEvent, DnsMoved)
# How recent a proof of the uplink traffic moves to must be when the one it leaves was in no doubt (a pin,
# a failover test, a pulled cable).
FRESH_PROOF = 5.0
# With no uplink carrying traffic (start, resume, networking back on), links activated this recently are
# waited for, up to their first verdict, before traffic goes anywhere: the best one, not the first one up.
SETTLE = 3.0


@runtime_checkable
class UplinkFinder(Protocol):
    """Where the uplinks are found when none are named (the NetworkManager client)."""

    async def active_candidates(self) -> list[Candidate]: ...
    async def saved_candidates(self, names: Sequence[str]) -> list[Candidate]: ...


async def find_uplinks(finder: UplinkFinder, settings: Settings) -> Choice:
    """The uplinks among the active connections, and the on-demand ones, which are uplinks while they are
    down too (the active listing comes first, and wins)."""
    return await _find_uplinks(finder, settings.on_demand, settings.max_uplinks)


async def _find_uplinks(finder: UplinkFinder, on_demand: Sequence[str], most: int) -> Choice:
    candidates = await finder.active_candidates()
    if on_demand:
        candidates += await finder.saved_candidates(on_demand)
    return choose(candidates, most)


# Asked before failing back; False vetoes the failback for now (asked again a round later).
FailbackGuard = Callable[[SwitchEvent], Awaitable[bool]]


@dataclass(frozen=True)
class EngineParams:
    """What the engine and its parts need of the settings, built once at start."""

    policy: PolicyParams
    # As the settings ask; the engine turns off the layers nothing can send (see detection_params).
    detection: DetectionParams
    actuator: ActuatorParams
    auto_uplinks: bool  # found at run time, not named
    max_uplinks: int
    on_demand_linger: float
    dns_servers: tuple[str, ...]  # where lookups go while an uplink's own resolvers are dead; (): others'

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineParams:
        policy = policy_params(settings)
        return cls(
            policy=policy,
            detection=detection_params(settings, policy, echoes=True, dns_checks=True, http_checks=True),
            actuator=ActuatorParams.from_settings(settings),
            auto_uplinks=settings.auto_uplinks,
            max_uplinks=settings.max_uplinks,
            on_demand_linger=settings.on_demand_linger,
            dns_servers=settings.dns_servers,
        )


class Engine:
    def __init__(
        self,
        params: EngineParams,
        nm: NetworkManagerPort,
        profiles: Sequence[Profile],
        prober: Prober,
        *,
        listeners: Sequence[SwitchListener] = (),
        dns_listeners: Sequence[DnsListener] = (),
        failback_guard: FailbackGuard | None = None,
        supervisor: Supervisor | None = None,
        rx_counter: RxCounter | None = None,
        echo: Echoer | None = None,
        dns_check: DnsChecker | None = None,
        http_check: HttpChecker | None = None,
        evidence: TrafficEvidence | None = None,
    ) -> None:
        self.params = params
        self.supervisor = supervisor or Supervisor()
        self.clock = self.supervisor.clock
        # A layer nothing can send is off.
        self.detection = replace(
            params.detection,
            heartbeat=params.detection.heartbeat and echo is not None,
            dns_checks=dns_check is not None,
            http_checks=http_check is not None,
        )
        # Re-ordered in place when uplinks come and go: the actuator, the intake and the scheduler share it.
        self.uplinks = [Uplink(i, p, LinkState(uuid=p.uuid)) for i, p in enumerate(profiles)]
        self.choice: Choice | None = None  # the uplinks found at run time and why, and those left out
        self.actuator = Actuator(params.actuator, nm, self.uplinks)
        self.scheduler = ProbeScheduler(
            self.detection,
            prober,
            self.supervisor,
            lambda: self.uplinks[self.current] if self.current is not None else None,
            self.reconcile,
            rx_counter=rx_counter,
            echo=echo if params.detection.heartbeat else None,
            dns_check=dns_check,
            http_check=http_check,
            evidence=evidence,
            nameservers=self.actuator.own_nameservers,
        )
        self.intake = EventIntake(
            nm,
            self.uplinks,
            self.actuator,
            self.supervisor,
            self.reconcile,
            discover=self.discover if params.auto_uplinks and isinstance(nm, UplinkFinder) else None,
        )
        self._nm = nm
        self._waiting_said = False
        self._settle_until: float | None = None
        self.on_demand = (
            OnDemand(nm, params.on_demand_linger)
            if params.actuator.on_demand and isinstance(nm, Activator)
            else None
        )
        self.current: int | None = None
        self.last_switch_at: float | None = None
        self.last_switch: SwitchEvent | None = None
        self.switches = 0
        self.avoid: Override | None = None  # the failover test
        self.pin: Override | None = None
        self.ready = asyncio.Event()
        self._evidence = evidence
        self._listeners = tuple(listeners)
        self._dns_listeners = tuple(dns_listeners)
        self._failback_guard = failback_guard
        self._vetoed_until: float | None = None
        self._apply_lock = asyncio.Lock()
        self._deadlines_changed = asyncio.Event()
        self._switched: asyncio.Queue[SwitchEvent | DnsMoved] = asyncio.Queue()
        self._stopping = asyncio.Event()

    # -- life cycle ---------------------------------------------------------------------------------

    def on_nm_event(self, event: NMEvent) -> None:
        """The adapter's callback for every relevant NetworkManager signal; must not block."""
        self.intake.put(event)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, extra_jobs: Mapping[str, Job] | None = None) -> None:
        """First round, then every loop under supervision until stop(); restores the profiles' own values
        on the way out, also when a loop gave up (TaskGaveUp, re-raised)."""
        self.actuator.remember_priorities()
        try:
            if self.intake.discover is not None:
                await self.intake.discover()
            await self.intake.refresh_links()
            if self.managing:
                self.current = await self.actuator.current_route()
                await asyncio.gather(*(self.scheduler.probe(u) for u in self.uplinks))
            await self.reconcile()
            self.ready.set()
            if self.managing:
                where = (
                    self.uplinks[self.current].label
                    if self.current is not None
                    else "no uplink (none is healthy)"
                )
                logger.info(
                    "ready: traffic on {}; {}",
                    where,
                    ", ".join(f"{u.label} {u.health.health.value}" for u in self.uplinks),
                )
                if self.choice is not None:
                    self._log_order("uplinks found")
            jobs: dict[str, Job] = {}
            if self.managing:
                for uplink in self.uplinks:
                    jobs.update(self._uplink_jobs(uplink))
            jobs["nm-events"] = lambda: self.intake.events("nm-events")
            jobs["nm-bus"] = lambda: self.intake.bus("nm-bus")
            jobs["timers"] = self._timers
            jobs["switch-listeners"] = self._notify_listeners
            jobs.update(extra_jobs or {})
            await self.supervisor.run(jobs, self._stopping)
        finally:
            if self.on_demand is not None:
                await self.on_demand.restore(self.uplinks)
            await self.actuator.restore()

    # -- uplinks that come and go --------------------------------------------------------------------

    @property
    def managing(self) -> bool:
        """With fewer than two uplinks there is nothing to fail over to: nothing is probed or changed."""
        return len(self.uplinks) >= 2

    def _uplink_jobs(self, uplink: Uplink) -> dict[str, Job]:
        # Named by profile, which stays when the uplinks around it come and go (its role may not); the
        # names are kept with it, so that its jobs are found to end even after the profile was renamed.
        probe, traffic = f"probe-{uplink.profile.id}", f"traffic-{uplink.profile.id}"
        jobs = {probe: _bind(self.scheduler.loop, uplink, probe)}
        if self._evidence is not None:
            jobs[traffic] = self._evidence.job(uplink, traffic, self.supervisor)
        uplink.jobs = tuple(jobs)
        return jobs

    async def discover(self) -> None:
        """The uplinks are the active connections that can carry the default route, in the order a person
        would prefer them (nmfailover.discovery); re-read at every change of the active connections."""
        assert isinstance(self._nm, UplinkFinder)  # only then is this the intake's discover
        self.choice = await _find_uplinks(self._nm, self.params.actuator.on_demand, self.params.max_uplinks)
        await self.reshape([r.profile for r in self.choice.uplinks])

    async def reshape(self, profiles: Sequence[Profile]) -> None:
        """Make `profiles` the uplinks, in this order: those that stay keep what detection knows of them,
        those that join are proved before they may take traffic, those that leave get their profile's own
        values back; traffic stays where it is until the policy says otherwise."""
        async with self._apply_lock:
            old = list(self.uplinks)
            if [u.profile.uuid for u in old] == [p.uuid for p in profiles]:
                for uplink, profile in zip(old, profiles, strict=True):
                    uplink.profile = profile  # renamed, or its saved settings edited: the same uplink
                return
            was_managing = self.managing
            staying = {u.profile.uuid: u for u in old}
            wanted = {p.uuid for p in profiles}
            for uplink in old:
                if uplink.profile.uuid not in wanted:
                    logger.info("{}: no longer an uplink (its connection is gone)", uplink.label)
                    self._stop_jobs(uplink)
                    if was_managing:
                        await self.actuator.release(uplink)
            new: list[Uplink] = []
            for index, profile in enumerate(profiles):
                kept = staying.get(profile.uuid)
                if kept is None:
                    # Its link read now: its first round (at once, by its new loop) goes through its device.
                    kept = Uplink(index, profile, await self._link(profile))
                new.append(kept)
            moved = {u.index: i for i, u in enumerate(new) if u.profile.uuid in staying}
            current = self.uplinks[self.current] if self.current is not None else None
            pinned = self.uplinks[self.pin.index] if self.pin is not None else None
            avoided = self.uplinks[self.avoid.index] if self.avoid is not None else None
            for index, (uplink, profile) in enumerate(zip(new, profiles, strict=True)):
                uplink.index, uplink.profile = index, profile
            self.uplinks[:] = new
            self.actuator.reindex(moved)
            self.actuator.remember_priorities()
            self.current = current.index if current is not None and current in new else None
            self.pin = replace(self.pin, index=pinned.index) if self.pin and pinned in new else None
            self.avoid = replace(self.avoid, index=avoided.index) if self.avoid and avoided in new else None
            if not self.managing:
                for uplink in new:
                    self._stop_jobs(uplink)
                    if was_managing:
                        await self.actuator.release(uplink)
                self.current = None
                self._say_waiting()
                return
            self._waiting_said = False
            for uplink in new:
                if self.supervisor.running and (not was_managing or uplink.profile.uuid not in staying):
                    for name, job in self._uplink_jobs(uplink).items():
                        self.supervisor.start(name, job)
            self._log_order("uplinks now")

    def _log_order(self, what: str) -> None:
        logger.info("{}: {}", what, "; ".join(f"{u.label}: {self.why(u)}" for u in self.uplinks))

    def why(self, uplink: Uplink) -> str:
        """Why the uplink stands where it does."""
        if self.choice is None:
            return "named in NMFAILOVER_UPLINKS"
        return self.choice.why(uplink.profile.uuid)

    async def _link(self, profile: Profile) -> LinkState:
        try:
            return await self._nm.link_state(profile.uuid)
        except NMError as exc:
            logger.warning("{}: cannot read its link yet: {}", profile.id, exc)
            return LinkState(uuid=profile.uuid)

    def _stop_jobs(self, uplink: Uplink) -> None:
        for name in uplink.jobs:
            self.supervisor.cancel(name)
        uplink.jobs = ()

    def _say_waiting(self) -> None:
        if self._waiting_said:
            return
        self._waiting_said = True
        if self.uplinks:
            logger.info(
                "one uplink ({}): nothing to fail over to; waiting for another to appear",
                self.uplinks[0].label,
            )
        else:
            logger.info("no uplink: waiting for a connection that can carry the default route")

    # -- deciding -----------------------------------------------------------------------------------

    def decision(self, now: float) -> Decision:
        """What the policy says now; reads state, changes nothing."""
        avoid = self.avoid.index if self.avoid is not None and self.avoid.active(now) else None
        pinned = self.pin.index if self.pin is not None and self.pin.active(now) else None
        return decide(
            [u.health for u in self.uplinks],
            self.current,
            now,
            self.params.policy,
            names=[u.label for u in self.uplinks],
            pinned=pinned,
            avoid=frozenset() if avoid is None else frozenset({avoid}),
        )

    async def reconcile(self) -> None:
        if not self.managing:
            self._say_waiting()
            return
        async with self._apply_lock:
            # Whichever loop decides first after a pin or test ran out ends it: never a decision without
            # it while it still shows.
            self._expire_overrides(self.clock())
            await self._reconcile_route()
            if self.on_demand is not None:
                await self.on_demand.keep(self.uplinks, self.current, self.actuator.on_demand, self.clock())
            await self.actuator.withdraw_dead_ipv6(self.current)
            if self.detection.dns_failover:
                await self._move_dns()

    async def _move_dns(self) -> None:
        """Dead resolvers behind a live path: name resolution goes to working ones (NMFAILOVER_DNS_SERVERS,
        or the other uplinks' own, whose DNS works) while the traffic stays; given back when they answer."""
        for uplink in self.uplinks:
            servers: tuple[str, ...] = ()
            if uplink.watch.dns.dead and uplink.health.health is Health.UP:
                servers = self.params.dns_servers or tuple(
                    server
                    for other in self.uplinks
                    if other is not uplink and other.link.activated and not other.watch.dns.dead
                    for server in self.actuator.own_nameservers(other)
                )
            if servers == self.actuator.dns_wanted.get(uplink.index, ()):
                continue
            if servers:
                reason = f"its resolvers fail ({uplink.watch.dns.detail}) while its path answers"
                logger.warning(
                    "{}: {}: name resolution moved to {}", uplink.label, reason, ", ".join(servers)
                )
            else:
                reason = "its resolvers answer again"
                logger.info("{}: {}: name resolution back on them", uplink.label, reason)
            await self.actuator.override_dns(uplink.index, servers)
            device = uplink.link.interface or ""
            self._switched.put_nowait(
                DnsMoved(uplink.profile.id, uplink.role, device, servers, reason, time.time())
            )

    async def _reconcile_route(self) -> None:
        self._deadlines_changed.set()
        if self.current is not None and not any(u.link.activated for u in self.uplinks):
            self.current = None  # every link gone (asleep, networking off): nothing carries traffic
        self._refresh_next_candidate()
        decision = self.decision(self.clock())
        target = decision.preferred
        if target is None or self.uplinks[target].health.health != Health.UP:
            return  # with nothing healthy, nothing is changed
        if decision.action is Action.INITIAL and self._settling(target):
            # Their loops reconcile after their verdict; the timers, when the wait is over without one.
            self._settle_until = (self.uplinks[target].activated_at or self.clock()) + SETTLE
            return
        if target == self.current:
            if not self.actuator.up_to_date(target):
                await self.actuator.apply(target)
            return
        if decision.action in (Action.FAILOVER, Action.AVOID, Action.PIN) and not self._fresh(target):
            # Proved before it takes the traffic: a portal or an exhausted data plan on the backup, or a
            # backup dying in the same outage, must not receive it. Its loop reconciles after the proof.
            self._ask_proof(self.uplinks[target])
            return
        event = self._switch_event(decision, target)
        if decision.action == Action.FAILBACK and not await self._failback_allowed(event):
            return
        old = self.uplinks[self.current] if self.current is not None else None
        cause = (
            f"{old.label} {old.watch.last_round.summary}"
            if (old is not None and old.watch.last_round is not None and decision.action == Action.FAILOVER)
            else decision.reason
        )
        logger.warning("{} -> switching to {}", cause, self.uplinks[target].label)
        if old is not None and self.on_demand is not None:
            self.on_demand.traffic_left(old, self.clock())
        self.current = target
        self.last_switch_at, self.last_switch = self.clock(), event
        self.switches += 1
        self.actuator.forget_applied()
        await self.actuator.apply(target)
        self._switched.put_nowait(event)
        # Its loop may be waiting out a standby interval: from now on it is watched at the active pace.
        self.uplinks[target].wake.set()

    # -- the operator's overrides --------------------------------------------------------------------

    async def avoid_current(self, seconds: float) -> None:
        """The failover test: avoid the uplink carrying traffic for `seconds` without touching its link."""
        if self.current is None:
            raise InvalidRequest("no uplink carries traffic yet")
        self.avoid = Override(self.current, self.clock() + seconds)
        logger.warning("forced failover: avoiding {} for {:g} s", self.uplinks[self.current].label, seconds)
        await self.reconcile()

    async def end_avoid(self) -> None:
        if self.avoid is not None:
            logger.info("forced failover ended early")
        self.avoid = None
        await self.reconcile()

    async def prefer(self, uplink: Uplink, seconds: float = 0) -> None:
        """Pin `uplink` (while it is healthy) until cleared, or for `seconds` if > 0."""
        self.pin = Override(uplink.index, self.clock() + seconds if seconds else None)
        logger.warning("preference pinned to {}{}", uplink.label, f" for {seconds:g} s" if seconds else "")
        await self.reconcile()

    async def clear_preference(self) -> None:
        if self.pin is not None:
            logger.info("preference for {} cleared", self.uplinks[self.pin.index].label)
        self.pin = None
        await self.reconcile()

    def _expire_overrides(self, now: float) -> None:
        if self.avoid is not None and not self.avoid.active(now):
            logger.info("forced failover over; normal policy resumes")
            self.avoid = None
        if self.pin is not None and not self.pin.active(now):
            logger.info("preference for {} expired", self.uplinks[self.pin.index].label)
            self.pin = None

    def _settling(self, target: int) -> bool:
        """Its link has just come up, and a more preferred uplink's has too, or will (it was up before all
        went away): that one's first verdict is waited for, briefly."""
        now, chosen = self.clock(), self.uplinks[target]
        if chosen.activated_at is None or now - chosen.activated_at >= SETTLE:
            return False
        return any(
            (u.link.activated and u.health.health is Health.UNKNOWN)
            or (not u.link.activated and u.activated_at is not None)
            for u in self.uplinks[:target]
        )

    def _refresh_next_candidate(self) -> None:
        """While the current uplink is in doubt, the one traffic would move to is proved at once: a backup
        last asked a standby interval ago may be dead too, or behind a portal, and a later takeover (the
        third uplink after the second) must be as quick as the first."""
        current = self.uplinks[self.current] if self.current is not None else None
        if current is None or not current.health.suspect:
            return
        for uplink in self.uplinks:
            if uplink is current or uplink.health.health in (Health.DOWN, Health.PORTAL):
                continue
            if not self._fresh(uplink.index):
                self._ask_proof(uplink)
            return

    def _doubt_since(self) -> float:
        """Since when the uplink carrying traffic is in doubt (a few seconds back when it is in none: a pin,
        a failover test, a pulled cable)."""
        current = self.uplinks[self.current] if self.current is not None else None
        since = current.watch.doubt_since if current is not None else None
        return since if since is not None else self.clock() - FRESH_PROOF

    def _fresh(self, index: int) -> bool:
        """Proved since the uplink carrying traffic came into doubt."""
        proved = self.uplinks[index].watch.proved_at
        return proved is not None and proved >= self._doubt_since()

    def _ask_proof(self, uplink: Uplink) -> None:
        # At once if it has not been asked anything since the doubt began; after that at the suspect pace
        # (every round of every uplink reconciles, and a failing candidate must not be asked in a loop).
        probed = uplink.watch.probed_at
        if uplink.in_flight or uplink.proof_due:
            return
        if (
            probed is None
            or probed < self._doubt_since()
            or self.clock() - probed >= self.detection.suspect_interval
        ):
            uplink.recheck()

    async def _failback_allowed(self, event: SwitchEvent) -> bool:
        if self._failback_guard is None:
            return True
        now = self.clock()
        if self._vetoed_until is not None and now < self._vetoed_until:
            return False
        if await self._failback_guard(event):
            self._vetoed_until = None
            return True
        # Ask again a round later, not on every probe result in between.
        self._vetoed_until = now + self.detection.active_interval
        logger.info(
            "failback to {} vetoed by the guard hook; staying on {}", event.to_profile, event.from_profile
        )
        return False

    def _switch_event(self, decision: Decision, target: int) -> SwitchEvent:
        new = self.uplinks[target]
        old = self.uplinks[self.current] if self.current is not None else None
        return SwitchEvent(
            action=decision.action.value,
            state=new.role.upper(),
            from_profile=old.profile.id if old else "",
            to_profile=new.profile.id,
            from_device=(old.link.interface or "") if old else "",
            device=new.link.interface or "",
            gateway4=new.link.gateway4 or "",
            gateway6=new.link.gateway6 or "",
            reason=decision.reason,
            at=time.time(),
            uplinks=tuple(u.snapshot() for u in self.uplinks),
        )

    # -- loops --------------------------------------------------------------------------------------

    def next_deadline(self, now: float) -> float | None:
        """The earliest moment the decision may change without any new evidence."""
        times = [
            self.decision(now).recheck_at,
            self._vetoed_until,
            self.avoid.until if self.avoid is not None else None,
            self.pin.until if self.pin is not None else None,
            self._settle_until,
            self.on_demand.deadline(self.uplinks, self.actuator.on_demand, now) if self.on_demand else None,
        ]
        return min((t for t in times if t is not None), default=None)

    async def _timers(self) -> None:
        """Hold-downs, failback vetoes, failover tests and pins that run out: decide again at that moment."""
        live = self.supervisor.liveness("timers", IDLE_BEAT * 2)
        while True:
            live.beat()
            self._deadlines_changed.clear()
            now = self.clock()
            deadline = self.next_deadline(now)
            wait = IDLE_BEAT if deadline is None else min(IDLE_BEAT, max(0.0, deadline - now))
            try:
                async with asyncio.timeout(wait):
                    await self._deadlines_changed.wait()
                continue
            except TimeoutError:
                pass
            now = self.clock()
            self._expire_overrides(now)
            if self._settle_until is not None and now >= self._settle_until:
                self._settle_until = None  # waited long enough for a better uplink's return
            if deadline is not None and now >= deadline:
                await self.reconcile()

    async def _notify_listeners(self) -> None:
        """Each switch (and each move of DNS) to every listener, in the background: a slow hook never holds
        up the next switch."""
        async with asyncio.TaskGroup() as group:
            while True:
                match await self._switched.get():
                    case SwitchEvent() as switched:
                        for listener in self._listeners:
                            group.create_task(_notify(listener, switched))
                    case DnsMoved() as moved:
                        for dns_listener in self._dns_listeners:
                            group.create_task(_notify(dns_listener, moved))


async def _notify(listener: Callable[[_Event], Awaitable[None]], event: _Event) -> None:
    try:
        await listener(event)
    except Exception as exc:  # noqa: BLE001 - a listener's failure must never stop switching
        logger.opt(exception=exc).error(
            "switch listener {} failed: {!r}", getattr(listener, "__qualname__", listener), exc
        )


def _bind(loop: Callable[[Uplink, str], Awaitable[None]], uplink: Uplink, name: str) -> Job:
    return lambda: loop(uplink, name)


def policy_params(settings: Settings) -> PolicyParams:
    """What the policy needs of the settings."""
    return PolicyParams(
        settings.fail_count,
        settings.rise_count,
        settings.failback_hold_down,
        settings.failback_hold_down_max,
        settings.flap_window,
        settings.brownout_window,
        settings.brownout_loss / 100,
        settings.brownout_latency,
    )


def detection_params(
    settings: Settings, policy: PolicyParams, *, echoes: bool, dns_checks: bool, http_checks: bool
) -> DetectionParams:
    """What detection needs of the settings; a layer nothing can send is off."""
    return DetectionParams(
        targets=settings.probe_targets,
        quorum=settings.probe_quorum,
        policy=policy,
        timeout_floor=settings.timeout_floor,
        timeout_ceiling=settings.probe_timeout,
        active_interval=settings.active_interval,
        standby_interval=settings.standby_interval,
        suspect_interval=settings.suspect_interval,
        heartbeat=settings.heartbeat and echoes,
        proof_interval=settings.proof_interval,
        standby_proof_interval=settings.standby_proof_interval,
        echo_burst=settings.echo_burst,
        loss_excuses=settings.loss_excuses,
        ipv6_interval=settings.ipv6_interval,
        busy_rx_rate=settings.busy_rx_rate,
        dns_interval=settings.dns_check_interval,
        http_interval=settings.http_check_interval,
        traffic_check_interval=settings.traffic_check_interval,
        loss_tolerated=settings.loss_tolerated / 100,
        loss_heavy=settings.loss_heavy / 100,
        dns_failover=settings.dns_failover,
        dns_checks=dns_checks,
        http_checks=http_checks,
    )
