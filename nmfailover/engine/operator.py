"""The operator's API (what the control interface and the CLI expose): re-check, failover test, pin, and a
status that only reads."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from ..errors import InvalidRequest
from ..policy import Health, Quality, hold_down, quality
from .actuator import metered_warning
from .core import Engine
from .state import Override, SwitchEvent, Uplink


def _duration(seconds: float, *, zero_ok: bool) -> float:
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        rule = "a finite number of 0 or more" if zero_ok else "a finite number greater than 0"
        raise InvalidRequest(f"seconds must be {rule}; got {seconds}")
    return seconds


class Operator:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The WireGuard tunnels moved at the last switch (tunnels.py); the daemon plugs it in.
        self.tunnels: Callable[[], dict[str, Any] | None] = lambda: None
        # The metered uplinks' bytes and budget (budget.py); the daemon plugs it in.
        self.metered_budget: Callable[[], dict[str, Any] | None] = lambda: None

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
        _duration(seconds, zero_ok=False)
        engine = self.engine
        if engine.current is None:
            raise InvalidRequest("no uplink carries traffic yet")
        engine.avoid = Override(engine.current, engine.clock() + seconds)
        logger.warning(
            "forced failover: avoiding {} for {:g} s", engine.uplinks[engine.current].label, seconds
        )
        await engine.reconcile()

    async def end_force(self) -> None:
        if self.engine.avoid is not None:
            logger.info("forced failover ended early")
        self.engine.avoid = None
        await self.engine.reconcile()

    async def prefer(self, name: str, seconds: float = 0) -> None:
        """Pin an uplink (while it is healthy) until cleared, or for `seconds` if > 0."""
        _duration(seconds, zero_ok=True)
        uplink = self.find_uplink(name)
        engine = self.engine
        engine.pin = Override(uplink.index, engine.clock() + seconds if seconds else None)
        logger.warning("preference pinned to {}{}", uplink.label, f" for {seconds:g} s" if seconds else "")
        await engine.reconcile()

    async def clear_preference(self) -> None:
        engine = self.engine
        if engine.pin is not None:
            logger.info("preference for {} cleared", engine.uplinks[engine.pin.index].label)
        engine.pin = None
        await engine.reconcile()

    def status(self) -> dict[str, Any]:
        """What an operator wants to see, JSON-friendly; times are seconds since the epoch. Reads only."""
        engine = self.engine
        now, wall = engine.clock(), time.time()
        decision = engine.decision(now)
        settling = max(0.0, decision.recheck_at - now) if decision.recheck_at is not None else 0.0
        avoid = engine.avoid if engine.avoid is not None and engine.avoid.active(now) else None
        pin = engine.pin if engine.pin is not None and engine.pin.active(now) else None
        return {
            "preferred": engine.uplinks[engine.current].role if engine.current is not None else None,
            "last_switch_at": None if engine.last_switch_at is None else wall - (now - engine.last_switch_at),
            "last_switch": _last_switch(engine.last_switch),
            "switches": engine.switches,
            "hold_down_remaining": round(settling, 3),
            "forced_failover_remaining": round(avoid.remaining(now), 3) if avoid is not None else 0.0,
            "pinned": engine.uplinks[pin.index].role if pin is not None else None,
            "task_restarts": dict(engine.supervisor.restarts),
            # Found at run time (NMFAILOVER_UPLINKS unset or auto), or named.
            "uplinks_found": engine.settings.auto_uplinks,
            # Active connections that are not uplinks, and why (only when they are found).
            "not_uplinks": [
                {"profile": left.candidate.profile.id, "device": left.candidate.interface, "why": left.why}
                for left in (engine.choice.left if engine.choice is not None else ())
            ],
            "tunnels": self.tunnels(),
            "metered_budget": self.metered_budget(),
            "uplinks": [
                _uplink_status(
                    u,
                    u.index == engine.current,
                    hold_down(u.health, now, engine.params),
                    quality(u.health, now, engine.params),
                    u.index in engine.actuator.metered,
                )
                # Its own routing table, with the rules and routes NetworkManager confirmed on it.
                | engine.actuator.source_routing_status(u.index)
                | {
                    "order": engine.why(u),  # why it stands where it does
                    # Its IPv6 path on its own (null: no IPv6, or not judged yet); IPv4 is "health".
                    "ipv6_health": u.watch.health6.health.value
                    if u.link.gateway6 is not None and u.watch.health6.health is not Health.UNKNOWN
                    else None,
                    # Taken away while it is down and the uplink carrying traffic has no IPv6.
                    "ipv6_default_route": u.index not in engine.actuator.ipv6_withdrawn,
                    # Its own resolvers, judged apart from its path: ok, failing or dead.
                    "dns_health": _dns_health(u),
                    # Where its lookups go while its own resolvers are dead: other uplinks' resolvers (its
                    # own then come last) or named ones put in front.
                    "dns_moved_to": list(
                        engine.actuator.dns_status(u.index).moved_to
                        + engine.actuator.dns_status(u.index).in_front
                    ),
                }
                for u in engine.uplinks
            ],
        }


def _last_switch(event: SwitchEvent | None) -> dict[str, str | None] | None:
    """What the last switch did, by roles (`from` is null at start-up); its time is `last_switch_at`."""
    if event is None:
        return None
    old = event.uplink(event.from_profile) if event.from_profile else None
    return {
        "action": event.action,
        "from": old.role if old is not None else None,
        "to": event.state.lower(),
        "reason": event.reason,
    }


def _dns_health(uplink: Uplink) -> str:
    dns = uplink.watch.dns
    return "dead" if dns.dead else "failing" if dns.failures else "ok"


def _uplink_status(
    uplink: Uplink, carrying: bool, hold: tuple[float, str], fit: Quality, marked: bool
) -> dict[str, Any]:
    watch = uplink.watch
    health, last = watch.health, watch.last_round
    if health.suspect and health.health != Health.UNKNOWN:
        state = "suspect"
    elif health.health is Health.UP and fit.degraded is not None:
        state = "degraded"
    else:
        state = health.health.value
    return {
        "role": uplink.role,
        "profile": uplink.profile.id,
        "uuid": uplink.profile.uuid,
        "device": uplink.link.interface,
        "kind": uplink.link.kind,  # wired, wireless or cellular: which icon a desktop shows for it
        "link": uplink.link.state_name,
        "health": state,
        "degraded": fit.degraded,  # why, or null
        "loss_pct": round(fit.loss * 100, 1),
        "rtt_p50_ms": round(fit.p50 * 1000, 1) if fit.p50 is not None else None,
        "rtt_p95_ms": round(fit.p95 * 1000, 1) if fit.p95 is not None else None,
        "consecutive_failures": health.consecutive_failures,
        "consecutive_successes": health.consecutive_successes,
        "latency_ms": round(min(r.latency for r in last.results) * 1000, 1)
        if last and last.results
        else None,
        "reason": last.summary if last else None,
        "carrying_traffic": carrying,
        "rtt_ms": {url: round(e.srtt * 1000, 1) for url, e in watch.rtt.items() if e.srtt is not None},
        "probe_timeout_ms": round(watch.round_timeout * 1000) if watch.round_timeout is not None else None,
        "probe_bytes": watch.probe_payload,  # above UDP/TCP: the wire adds about 40-60 bytes a packet
        "failed_rounds": watch.failed_rounds,
        "heartbeat_to": watch.echo_peer if watch.echoed else None,  # null: its last round was HTTP
        "busy_rx_bytes": watch.busy_rx,  # set when the last round timed out while the link was busy
        "hold_down": hold[0],  # what a failback to it would wait for now, and why
        "hold_down_reason": hold[1],
        "metered": uplink.link.metered_name,  # the device's Metered as NetworkManager reports it, or null
        "metered_marked": marked,  # NMFAILOVER_METERED names it
        "metered_warning": metered_warning(uplink.index, uplink.link, marked),
    }
