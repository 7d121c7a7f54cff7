"""The operator's API (what the control interface and the CLI expose): re-check, failover test, pin, and a
status that only reads."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from loguru import logger

from ..errors import InvalidRequest
from ..policy import Health, hold_down, quality
from ..status import BudgetStatus, LastSwitch, NotUplink, Status, TunnelsStatus, UplinkStatus
from .actuator import metered_warning
from .core import Engine
from .state import SwitchEvent, Uplink


def _duration(seconds: float, *, zero_ok: bool) -> float:
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        rule = "a finite number of 0 or more" if zero_ok else "a finite number greater than 0"
        raise InvalidRequest(f"seconds must be {rule}; got {seconds}")
    return seconds


class Operator:
    def __init__(
        self,
        engine: Engine,
        *,
        tunnels: Callable[[], TunnelsStatus | None] = lambda: None,
        metered_budget: Callable[[], BudgetStatus | None] = lambda: None,
    ) -> None:
        self.engine = engine
        # The WireGuard tunnels moved at the last switch (tunnels.py), for status.
        self._tunnels = tunnels
        # The metered uplinks' bytes and budget (budget.py), for status.
        self._metered_budget = metered_budget

    def find_uplink(self, name: str) -> Uplink:
        """An uplink by role (primary, backup...), profile id, UUID, configured name or interface."""
        for uplink in self.engine.uplinks:
            if name in (
                uplink.role,
                uplink.profile.id,
                uplink.profile.uuid,
                uplink.profile.spec,
                uplink.link.interface,
                uplink.profile.interface_name,
            ):
                return uplink
        known = ", ".join(f"{u.role} ({u.profile.id})" for u in self.engine.uplinks)
        raise InvalidRequest(f"no uplink {name!r}; known: {known}")

    async def recheck(self, interface: str = "", reason: str = "") -> int:
        """Probe now: the uplinks on `interface`, or all when it names none of them. Returns how many."""
        uplinks = self.engine.uplinks
        chosen = [
            u for u in uplinks if interface and interface in (u.link.interface, u.profile.interface_name)
        ]
        logger.info(
            "re-check requested{}{}",
            f" for {interface}" if interface else "",
            f" ({reason})" if reason else "",
        )
        for uplink in chosen or uplinks:
            uplink.recheck()
        return len(chosen or uplinks)

    async def force_failover(self, seconds: float) -> None:
        """AstLinux's failover test: avoid the current uplink for a while without touching its link."""
        await self.engine.avoid_current(_duration(seconds, zero_ok=False))

    async def end_force(self) -> None:
        await self.engine.end_avoid()

    async def prefer(self, name: str, seconds: float = 0) -> None:
        """Pin an uplink (while it is healthy) until cleared, or for `seconds` if > 0."""
        _duration(seconds, zero_ok=True)
        await self.engine.prefer(self.find_uplink(name), seconds)

    async def clear_preference(self) -> None:
        await self.engine.clear_preference()

    def status(self) -> Status:
        """What an operator wants to see; times are seconds since the epoch. Reads only."""
        engine = self.engine
        now, wall = engine.clock(), time.time()
        decision = engine.decision(now)
        settling = max(0.0, decision.recheck_at - now) if decision.recheck_at is not None else 0.0
        avoid = engine.avoid if engine.avoid is not None and engine.avoid.active(now) else None
        pin = engine.pin if engine.pin is not None and engine.pin.active(now) else None
        return Status(
            preferred=engine.uplinks[engine.current].role if engine.current is not None else None,
            last_switch_at=None if engine.last_switch_at is None else wall - (now - engine.last_switch_at),
            last_switch=_last_switch(engine.last_switch),
            switches=engine.switches,
            hold_down_remaining=round(settling, 3),
            forced_failover_remaining=round(avoid.remaining(now), 3) if avoid is not None else 0.0,
            pinned=engine.uplinks[pin.index].role if pin is not None else None,
            task_restarts=dict(engine.supervisor.restarts),
            uplinks_found=engine.params.auto_uplinks,
            not_uplinks=tuple(
                NotUplink(profile=left.candidate.profile.id, device=left.candidate.interface, why=left.why)
                for left in (engine.choice.left if engine.choice is not None else ())
            ),
            tunnels=self._tunnels(),
            metered_budget=self._metered_budget(),
            uplinks=tuple(_uplink_status(engine, u, now) for u in engine.uplinks),
        )


def _last_switch(event: SwitchEvent | None) -> LastSwitch | None:
    if event is None:
        return None
    old = event.uplink(event.from_profile) if event.from_profile else None
    return LastSwitch(
        action=event.action,
        from_role=old.role if old is not None else None,
        to=event.state.lower(),
        reason=event.reason,
    )


def _dns_health(uplink: Uplink) -> str:
    dns = uplink.watch.dns
    return "dead" if dns.dead else "failing" if dns.failures else "ok"


def _uplink_status(engine: Engine, uplink: Uplink, now: float) -> UplinkStatus:
    actuator = engine.actuator
    watch = uplink.watch
    health, last = watch.health, watch.last_round
    fit = quality(uplink.health, now, engine.params.policy)
    hold = hold_down(uplink.health, now, engine.params.policy)
    marked = uplink.index in actuator.metered
    if health.suspect and health.health != Health.UNKNOWN:
        state = "suspect"
    elif health.health is Health.UP and fit.degraded is not None:
        state = "degraded"
    else:
        state = health.health.value
    routing = actuator.source_routing_status(uplink.index)
    dns = actuator.dns_status(uplink.index)
    return UplinkStatus(
        role=uplink.role,
        profile=uplink.profile.id,
        uuid=uplink.profile.uuid,
        device=uplink.link.interface,
        kind=uplink.link.kind,
        link=uplink.link.state_name,
        health=state,
        degraded=fit.degraded,
        loss_pct=round(fit.loss * 100, 1),
        rtt_p50_ms=round(fit.p50 * 1000, 1) if fit.p50 is not None else None,
        rtt_p95_ms=round(fit.p95 * 1000, 1) if fit.p95 is not None else None,
        consecutive_failures=health.consecutive_failures,
        consecutive_successes=health.consecutive_successes,
        latency_ms=round(min(r.latency for r in last.results) * 1000, 1) if last and last.results else None,
        reason=last.summary if last else None,
        carrying_traffic=uplink.index == engine.current,
        rtt_ms={url: round(e.srtt * 1000, 1) for url, e in watch.rtt.items() if e.srtt is not None},
        probe_timeout_ms=round(watch.round_timeout * 1000) if watch.round_timeout is not None else None,
        probe_bytes=watch.probe_payload,
        failed_rounds=watch.failed_rounds,
        heartbeat_to=watch.echo_peer if watch.echoed else None,
        busy_rx_bytes=watch.busy_rx,
        hold_down=hold[0],
        hold_down_reason=hold[1],
        metered=uplink.link.metered_name,
        metered_marked=marked,
        metered_warning=metered_warning(uplink.index, uplink.link, marked),
        routing_table=routing.table,
        routing_rules=routing.rules,
        routing_routes=routing.routes,
        order=engine.why(uplink),
        ipv6_health=watch.health6.health.value
        if uplink.link.gateway6 is not None and watch.health6.health is not Health.UNKNOWN
        else None,
        ipv6_default_route=uplink.index not in actuator.ipv6_withdrawn,
        dns_health=_dns_health(uplink),
        dns_moved_to=dns.moved_to + dns.in_front,
    )
