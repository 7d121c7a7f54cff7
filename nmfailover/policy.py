"""Pure decision core: per-uplink health hysteresis and the choice of which uplink carries the default route.

Everything here is a function of its arguments. Time comes in as float seconds so the controller
(and the tests) own the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

MIN_LATENCY_RISE = 0.1  # seconds: 5x of a few milliseconds is no brownout
BASELINE_GAIN = 16  # the usual answer time moves by 1/16 of each new fastest answer


class Health(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    PORTAL = "portal"  # a captive portal answers instead of the internet: unusable, but not broken


@dataclass(frozen=True)
class PolicyParams:
    fail_count: int
    rise_count: int
    failback_hold_down: float
    # Route-flap damping (the idea of RFC 2439): each further failure within the window doubles the
    # hold-down, up to the cap; failures older than the window no longer count.
    max_hold_down: float | None = None  # None: no damping beyond failback_hold_down
    flap_window: float = 3600.0
    # Brownout: over the window, this share of lost answers, or a median answer time this many times the
    # uplink's usual one, makes it degraded (given enough answers to judge by).
    brownout_window: float = 20.0
    brownout_loss: float = 0.5
    brownout_latency: float = 5.0
    brownout_min_samples: int = 6

    def __post_init__(self) -> None:
        # A zero count would make a state unreachable or flip on no evidence at all.
        if self.fail_count < 1:
            raise ValueError(f"fail_count must be >= 1, got {self.fail_count}")
        if self.rise_count < 1:
            raise ValueError(f"rise_count must be >= 1, got {self.rise_count}")
        if self.failback_hold_down < 0:
            raise ValueError(f"failback_hold_down must be >= 0, got {self.failback_hold_down}")
        if self.max_hold_down is not None and self.max_hold_down < self.failback_hold_down:
            raise ValueError(f"max_hold_down must be >= failback_hold_down, got {self.max_hold_down}")
        if self.flap_window <= 0:
            raise ValueError(f"flap_window must be > 0, got {self.flap_window}")


@dataclass(frozen=True)
class Sample:
    at: float
    ok: bool
    latency: float


@dataclass(frozen=True)
class Quality:
    loss: float  # 0..1 over the brownout window
    p50: float | None  # answer times (seconds) over the window
    p95: float | None
    samples: int
    degraded: str | None  # why it is degraded, or None


@dataclass(frozen=True)
class UplinkHealth:
    health: Health = Health.UNKNOWN
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    changed_at: float | None = None
    downs: tuple[float, ...] = ()  # when it went from up to down, within the flap window
    samples: tuple[Sample, ...] = ()  # answers (or their absence) within the brownout window
    baseline: float | None = None  # its usual answer time, learnt while it is not degraded
    degraded_at: float | None = None  # when it was last found degraded
    # Its link went away and came back (a new activation): once proved it needs no hold-down, unless its
    # path failed since or it flapped.
    relinked: bool = False

    @property
    def suspect(self) -> bool:
        """True while the verdict may be about to change, so the controller should probe faster."""
        if self.health is Health.UP:
            return self.consecutive_failures > 0
        if self.health in (Health.DOWN, Health.PORTAL):
            return self.consecutive_successes > 0
        return True


def observe(
    state: UplinkHealth,
    ok: bool,
    now: float,
    params: PolicyParams,
    *,
    hard: bool = False,
    portal: bool = False,
) -> UplinkHealth:
    """Fold one probe round into `state`. `portal`: the round failed because a captive portal answered."""
    if ok:
        failures, successes = 0, state.consecutive_successes + 1
    else:
        failures, successes = state.consecutive_failures + 1, 0
    failed = Health.PORTAL if portal else Health.DOWN

    health = state.health
    if health is Health.UNKNOWN:
        # At start-up one round is enough: waiting rise_count rounds would leave the machine without a route.
        health = Health.UP if ok else failed
    elif not ok and hard:
        # The link is physically gone; counting more rounds would only delay the inevitable failover.
        health = Health.DOWN
    elif health is Health.UP and failures >= params.fail_count:
        health = failed
    elif health in (Health.DOWN, Health.PORTAL) and not ok:
        health = failed  # a portal that goes away, or appears on a dead link, is seen at once
    elif health in (Health.DOWN, Health.PORTAL) and successes >= params.rise_count:
        health = Health.UP

    changed_at = now if health is not state.health else state.changed_at
    downs = tuple(t for t in state.downs if now - t < params.flap_window)
    relinked = state.relinked
    if state.health is Health.UP and health is Health.DOWN and not hard:
        # A portal is the user's to click through, and a link that went away (a cable pulled, networking
        # off, a suspend) did so by itself: neither is a flap of the path.
        downs += (now,)
        relinked = False
    return replace(
        state,
        health=health,
        consecutive_failures=failures,
        consecutive_successes=successes,
        changed_at=changed_at,
        downs=downs,
        relinked=relinked,
    )


def _percentile(ordered: Sequence[float], share: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None


def quality(state: UplinkHealth, now: float, params: PolicyParams) -> Quality:
    """Loss and answer times over the brownout window, and whether they make the uplink degraded."""
    window = [s for s in state.samples if now - s.at < params.brownout_window]
    if not window:
        return Quality(0.0, None, None, 0, None)
    loss = sum(not s.ok for s in window) / len(window)
    answered = sorted(s.latency for s in window if s.ok)
    p50, p95 = _percentile(answered, 0.5), _percentile(answered, 0.95)
    why = None
    # Sustained means over most of the window: a few slow or lost answers right after a change prove little.
    sustained = now - window[0].at >= params.brownout_window / 2
    if len(window) >= params.brownout_min_samples and sustained:
        baseline = state.baseline
        if loss >= params.brownout_loss:
            why = f"{loss:.0%} of answers lost over {_secs(params.brownout_window)}"
        elif (
            p50 is not None
            and baseline is not None
            and p50 >= params.brownout_latency * baseline
            and p50 - baseline >= MIN_LATENCY_RISE
        ):
            why = (
                f"answers take {p50 * 1000:.0f} ms, {p50 / baseline:.0f}x its usual {baseline * 1000:.0f} ms"
            )
    return Quality(loss, p50, p95, len(window), why)


def record(
    state: UplinkHealth, answers: Sequence[tuple[bool, float]], now: float, params: PolicyParams
) -> UplinkHealth:
    """Add one round's answers, as (ok, seconds), to the brownout window and the usual answer time."""
    samples = tuple(s for s in state.samples if now - s.at < params.brownout_window)
    state = replace(state, samples=samples + tuple(Sample(now, ok, latency) for ok, latency in answers))
    degraded = quality(state, now, params).degraded is not None
    fastest = min((latency for ok, latency in answers if ok), default=None)
    baseline = state.baseline
    if fastest is not None and not degraded:
        baseline = fastest if baseline is None else baseline + (fastest - baseline) / BASELINE_GAIN
    return replace(state, baseline=baseline, degraded_at=now if degraded else state.degraded_at)


def hold_down(state: UplinkHealth, now: float, params: PolicyParams) -> tuple[float, str]:
    """How long `state`'s uplink must stay up before traffic moves back to it, and why."""
    base = params.failback_hold_down
    recent = sum(1 for t in state.downs if now - t < params.flap_window)
    if state.relinked and recent == 0:
        return 0.0, "its link came back"
    if params.max_hold_down is None or recent <= 1:
        return base, "the configured hold-down"
    seconds = min(base * 2 ** (recent - 1), params.max_hold_down)
    return seconds, f"{recent} failures in the last {_secs(params.flap_window)}"


@dataclass(frozen=True)
class RttEstimate:
    """Smoothed answer time of one target through one uplink and its variation (RFC 6298's estimator)."""

    srtt: float | None = None
    rttvar: float = 0.0


def rtt_sample(estimate: RttEstimate, rtt: float) -> RttEstimate:
    """Fold one answer time in. Only answers count, never timeouts (Karn's rule)."""
    if estimate.srtt is None:
        return RttEstimate(rtt, rtt / 2)
    rttvar = 0.75 * estimate.rttvar + 0.25 * abs(estimate.srtt - rtt)
    return RttEstimate(0.875 * estimate.srtt + 0.125 * rtt, rttvar)


def probe_timeout(estimate: RttEstimate, floor: float, ceiling: float) -> float:
    """How long a healthy answer can take: SRTT + 4 RTTVAR, within [floor, ceiling]; the ceiling until a
    first answer has been seen."""
    if estimate.srtt is None:
        return ceiling
    return min(ceiling, max(floor, estimate.srtt + 4 * estimate.rttvar))


class Action(StrEnum):
    KEEP = "keep"
    INITIAL = "initial"
    FAILOVER = "failover"
    FAILBACK = "failback"
    PIN = "pin"
    AVOID = "avoid"


@dataclass(frozen=True)
class Decision:
    preferred: int | None
    action: Action
    reason: str
    recheck_at: float | None = None


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"


def decide(
    uplinks: Sequence[UplinkHealth],
    current: int | None,
    now: float,
    params: PolicyParams,
    *,
    names: Sequence[str] | None = None,
    pinned: int | None = None,
    avoid: frozenset[int] = frozenset(),
) -> Decision:
    """Pick the uplink that should carry the default route. Uplinks are in priority order, 0 first."""
    if names is None:
        names = [f"uplink {i}" for i in range(len(uplinks))]
    elif len(names) != len(uplinks):
        raise ValueError(f"{len(names)} names for {len(uplinks)} uplinks")
    if current is not None and not 0 <= current < len(uplinks):
        raise ValueError(f"current uplink {current} out of range for {len(uplinks)} uplinks")

    up = [i for i, u in enumerate(uplinks) if u.health is Health.UP]
    # An uplink with a failed round since its last success may be dying too (both uplinks often fail
    # together): traffic never moves to it, it stays where it is until the doubt is settled.
    proven = [i for i in up if i == current or uplinks[i].consecutive_failures == 0]
    # A forced test must never cut the internet, so an avoided uplink is still better than none.
    candidates = [i for i in proven if i not in avoid] or proven

    if not candidates:
        if current is None:
            return Decision(None, Action.KEEP, "no uplink is healthy")
        if up:
            return Decision(
                current, Action.KEEP, f"no other uplink is proven healthy; keeping {names[current]}"
            )
        return Decision(current, Action.KEEP, f"no uplink is healthy; keeping {names[current]}")

    # Requiring a candidate (not merely UP) lets a forced test failover override a pin.
    if pinned is not None and pinned in candidates:
        if pinned == current:
            return Decision(pinned, Action.KEEP, f"{names[pinned]} is pinned")
        return Decision(pinned, Action.PIN, f"{names[pinned]} is pinned and healthy")

    best = candidates[0]
    if current is None:
        return Decision(best, Action.INITIAL, f"starting on {names[best]}")

    if current in avoid and best not in avoid:
        return Decision(best, Action.AVOID, f"avoiding {names[current]}; moving to {names[best]}")

    if uplinks[current].health in (Health.DOWN, Health.PORTAL):
        state = "down" if uplinks[current].health is Health.DOWN else "behind a captive portal"
        return Decision(best, Action.FAILOVER, f"{names[current]} is {state}; moving to {names[best]}")

    degraded = {
        i: why for i, u in enumerate(uplinks) if (why := quality(u, now, params).degraded) is not None
    }
    if current in degraded:
        better = [i for i in candidates if i != current and i not in degraded]
        if better:
            reason = f"{names[current]} is degraded ({degraded[current]}); moving to {names[better[0]]}"
            return Decision(better[0], Action.FAILOVER, reason)

    # Among uplinks more preferred than current, take the most preferred one that has served its
    # hold-down: a still-settling primary must not keep us off an already settled backup.
    target, target_since = current, 0.0
    settling: list[tuple[int, float, float]] = []  # (index, UP since, hold-down) of those still settling
    for i in candidates:
        if i >= current:
            break
        since = uplinks[i].changed_at
        if since is None or i in degraded:
            continue  # no proof of stability, and no expiry to wake up for
        # Healthy means up and not degraded: a brownout that ends starts its hold-down afresh.
        since = max(since, uplinks[i].degraded_at or since)
        hold, _ = hold_down(uplinks[i], now, params)
        if now - since >= hold:
            target, target_since = i, since
            break
        settling.append((i, since, hold))

    # The earliest-settling one is what the next decision hinges on, so that is the one to wake up for.
    first = min(settling, key=lambda s: s[1] + s[2], default=None)
    recheck_at = None if first is None else first[1] + first[2]
    if target != current:
        reason = f"{names[target]} healthy for {_secs(now - target_since)}; moving back"
        return Decision(target, Action.FAILBACK, reason, recheck_at)
    if first is not None:
        i, since, hold = first
        reason = f"{names[i]} healthy for {_secs(now - since)} of {_secs(hold)} hold-down"
        return Decision(current, Action.KEEP, reason, recheck_at)

    if current in avoid:
        return Decision(current, Action.KEEP, f"no alternative to avoided {names[current]}; keeping it")
    if current == best:
        return Decision(current, Action.KEEP, f"{names[current]} is the best healthy uplink")
    if best in degraded:
        return Decision(
            current, Action.KEEP, f"{names[best]} is degraded ({degraded[best]}); keeping {names[current]}"
        )
    return Decision(current, Action.KEEP, f"keeping {names[current]} ({uplinks[current].health})")


def on_demand_wanted(
    uplinks: Sequence[UplinkHealth],
    current: int | None,
    on_demand: frozenset[int],
    left_at: Mapping[int, float],
    now: float,
    linger: float,
) -> frozenset[int]:
    """The on-demand uplinks that should be up now: the one carrying traffic; one traffic left less than
    `linger` ago (connections still on it finish); and any with no more preferred uplink up, which is
    what it is there for. The rest are kept down."""
    wanted = set()
    for index in on_demand:
        better_up = any(u.health is Health.UP for u in uplinks[:index])
        lingering = index in left_at and now - left_at[index] < linger
        if index == current or lingering or not better_up:
            wanted.add(index)
    return frozenset(wanted)
