from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from nmfailover.policy import (
    Action,
    Decision,
    Health,
    PolicyParams,
    Quality,
    RttEstimate,
    Sample,
    UplinkHealth,
    decide,
    hold_down,
    observe,
    on_demand_wanted,
    probe_timeout,
    quality,
    record,
    rtt_sample,
)

UNKNOWN, UP, DOWN = Health.UNKNOWN, Health.UP, Health.DOWN
KEEP, INITIAL, FAILOVER, FAILBACK, PIN, AVOID = (
    Action.KEEP,
    Action.INITIAL,
    Action.FAILOVER,
    Action.FAILBACK,
    Action.PIN,
    Action.AVOID,
)

# fail_count != rise_count so a mix-up between the two shows.
P = PolicyParams(fail_count=3, rise_count=2, failback_hold_down=30.0)


def H(
    health: Health, f: int = 0, s: int = 0, at: float | None = 5.0, downs: tuple[float, ...] = ()
) -> UplinkHealth:
    return UplinkHealth(health, consecutive_failures=f, consecutive_successes=s, changed_at=at, downs=downs)


NEW = UplinkHealth()


# --- PolicyParams -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail", "rise", "hold"),
    [(0, 1, 0.0), (1, 0, 0.0), (1, 1, -0.1), (-1, 2, 30.0)],
    ids=["fail0", "rise0", "negative-hold", "fail-negative"],
)
def test_params_rejects_invalid(fail: int, rise: int, hold: float) -> None:
    with pytest.raises(ValueError):
        PolicyParams(fail, rise, hold)


def test_params_accepts_minimum() -> None:
    assert PolicyParams(1, 1, 0.0) == PolicyParams(fail_count=1, rise_count=1, failback_hold_down=0.0)


# --- observe --------------------------------------------------------------------------------------

OBSERVE_CASES: list[tuple[str, UplinkHealth, bool, bool, PolicyParams, UplinkHealth]] = [
    # id, before, ok, hard, params, after (all at now=10)
    ("unknown-ok-up-at-once", NEW, True, False, P, H(UP, 0, 1, 10.0)),
    ("unknown-fail-down-at-once", NEW, False, False, P, H(DOWN, 1, 0, 10.0)),
    ("unknown-hard-down", NEW, False, True, P, H(DOWN, 1, 0, 10.0)),
    ("unknown-ok-hard-ignored", NEW, True, True, P, H(UP, 0, 1, 10.0)),
    ("up-ok-stays-kept", H(UP, 0, 4), True, False, P, H(UP, 0, 5, 5.0)),
    ("up-ok-resets-failures", H(UP, 2, 0), True, False, P, H(UP, 0, 1, 5.0)),
    ("up-fail-first", H(UP, 0, 7), False, False, P, H(UP, 1, 0, 5.0)),
    ("up-fail-one-below", H(UP, 1, 0), False, False, P, H(UP, 2, 0, 5.0)),
    ("up-fail-at-threshold", H(UP, 2, 0), False, False, P, H(DOWN, 3, 0, 10.0, (10.0,))),
    ("up-hard-down-at-once", H(UP, 0, 9), False, True, P, H(DOWN, 1, 0, 10.0, ())),
    ("up-ok-hard-ignored", H(UP, 1, 0), True, True, P, H(UP, 0, 1, 5.0)),
    ("up-fail-count-1", H(UP, 0, 3), False, False, PolicyParams(1, 5, 0.0), H(DOWN, 1, 0, 10.0, (10.0,))),
    ("down-fail-stays-kept", H(DOWN, 3, 0), False, False, P, H(DOWN, 4, 0, 5.0)),
    ("down-fail-resets-successes", H(DOWN, 0, 1), False, False, P, H(DOWN, 1, 0, 5.0)),
    ("down-ok-one-below", H(DOWN, 4, 0), True, False, P, H(DOWN, 0, 1, 5.0)),
    ("down-ok-at-threshold", H(DOWN, 0, 1), True, False, P, H(UP, 0, 2, 10.0)),
    ("down-hard-stays-kept", H(DOWN, 3, 0), False, True, P, H(DOWN, 4, 0, 5.0)),
    ("down-ok-hard-ignored", H(DOWN, 0, 1), True, True, P, H(UP, 0, 2, 10.0)),
    ("down-rise-count-1", H(DOWN, 6, 0), True, False, PolicyParams(5, 1, 0.0), H(UP, 0, 1, 10.0)),
    ("down-fail-count-irrelevant", H(DOWN, 0, 1), True, False, PolicyParams(1, 3, 0.0), H(DOWN, 0, 2, 5.0)),
    ("up-rise-count-irrelevant", H(UP, 1, 0), False, False, PolicyParams(3, 1, 0.0), H(UP, 2, 0, 5.0)),
]


@pytest.mark.parametrize(
    ("before", "ok", "hard", "params", "after"),
    [c[1:] for c in OBSERVE_CASES],
    ids=[c[0] for c in OBSERVE_CASES],
)
def test_observe(
    before: UplinkHealth, ok: bool, hard: bool, params: PolicyParams, after: UplinkHealth
) -> None:
    assert observe(before, ok, 10.0, params, hard=hard) == after


def test_observe_counts_rounds_exactly_to_fail_count() -> None:
    state = H(UP, 0, 1)
    healths = []
    for t in range(1, 5):
        state = observe(state, False, float(t), P)
        healths.append(state.health)
    assert healths == [UP, UP, DOWN, DOWN]
    assert state == H(DOWN, 4, 0, 3.0, (3.0,))


SUSPECT_CASES: list[tuple[str, UplinkHealth, bool]] = [
    ("unknown", NEW, True),
    ("up-clean", H(UP, 0, 3), False),
    ("up-one-failure", H(UP, 1, 0), True),
    ("down-clean", H(DOWN, 5, 0), False),
    ("down-one-success", H(DOWN, 0, 1), True),
    ("up-zero-counts", H(UP, 0, 0), False),
    ("down-zero-counts", H(DOWN, 0, 0), False),
]


@pytest.mark.parametrize(
    ("state", "suspect"), [c[1:] for c in SUSPECT_CASES], ids=[c[0] for c in SUSPECT_CASES]
)
def test_suspect(state: UplinkHealth, suspect: bool) -> None:
    assert state.suspect is suspect


# --- decide ---------------------------------------------------------------------------------------

N2 = ("primary", "backup")
N3 = ("primary", "backup", "fallback")


def U(at: float = 0.0) -> UplinkHealth:
    return H(UP, at=at)


D = H(DOWN, 3, 0, 0.0)
X = NEW  # UNKNOWN


def keep(cur: int | None, reason: str, recheck: float | None = None) -> Decision:
    return Decision(cur, KEEP, reason, recheck)


# fmt: off
DECIDE_CASES: list[tuple[str, list[UplinkHealth], int | None, float, dict[str, object], Decision]] = [
    # id, uplinks, current, now, kwargs (names default to N2/N3 by length), expected
    # nothing healthy
    ("none-up-no-current", [D, D], None, 100, {}, keep(None, "no uplink is healthy")),
    ("none-up-keeps-current", [D, D], 1, 100, {}, keep(1, "no uplink is healthy; keeping backup")),
    ("all-unknown-no-current", [X, X], None, 100, {}, keep(None, "no uplink is healthy")),
    ("none-up-ignores-pin", [D, D], 0, 100, {"pinned": 1}, keep(0, "no uplink is healthy; keeping primary")),
    ("none-up-ignores-avoid", [D, X], 0, 100, {"avoid": frozenset({0})},
     keep(0, "no uplink is healthy; keeping primary")),
    # start-up
    ("initial-primary", [U(), U()], None, 100, {}, Decision(0, INITIAL, "starting on primary")),
    ("initial-backup-primary-down", [D, U()], None, 100, {}, Decision(1, INITIAL, "starting on backup")),
    ("initial-backup-primary-unknown", [X, U()], None, 100, {}, Decision(1, INITIAL, "starting on backup")),
    ("initial-ignores-hold-down", [U(100), U(100)], None, 100, {}, Decision(0, INITIAL, "starting on primary")),
    ("initial-skips-avoided", [U(), U()], None, 100, {"avoid": frozenset({0})},
     Decision(1, INITIAL, "starting on backup")),
    ("initial-avoided-if-only-one", [U(), D], None, 100, {"avoid": frozenset({0})},
     Decision(0, INITIAL, "starting on primary")),
    # steady state
    ("keep-primary", [U(), U()], 0, 100, {}, keep(0, "primary is the best healthy uplink")),
    ("keep-primary-backup-down", [U(), D], 0, 100, {}, keep(0, "primary is the best healthy uplink")),
    ("keep-primary-backup-failing", [U(), H(UP, 2, 0)], 0, 100, {}, keep(0, "primary is the best healthy uplink")),
    ("keep-primary-backup-unknown", [U(), X], 0, 100, {}, keep(0, "primary is the best healthy uplink")),
    ("keep-primary-itself-failing", [H(UP, 2, 0), U()], 0, 100, {}, keep(0, "primary is the best healthy uplink")),
    ("keep-unknown-current", [X, U()], 0, 100, {}, keep(0, "keeping primary (unknown)")),
    ("keep-backup-primary-down", [D, U()], 1, 100, {}, keep(1, "backup is the best healthy uplink")),
    ("keep-backup-primary-recovering", [H(DOWN, 0, 1), U()], 1, 100, {}, keep(1, "backup is the best healthy uplink")),
    ("keep-backup-primary-no-timestamp", [UplinkHealth(UP), U()], 1, 100, {}, keep(1, "keeping backup (up)")),
    # failover
    ("failover-to-backup", [D, U()], 0, 100, {}, Decision(1, FAILOVER, "primary is down; moving to backup")),
    ("failover-to-primary-no-hold-down", [U(99), D], 1, 100, {},
     Decision(0, FAILOVER, "backup is down; moving to primary")),
    ("failover-default-names", [D, U()], 0, 100, {"names": None},
     Decision(1, FAILOVER, "uplink 0 is down; moving to uplink 1")),
    # failback hold-down
    ("hold-down-before", [U(100), U()], 1, 112, {}, keep(1, "primary healthy for 12s of 30s hold-down", 130)),
    ("hold-down-just-before", [U(100), U()], 1, 129.9, {},
     keep(1, "primary healthy for 29.9s of 30s hold-down", 130)),
    ("hold-down-fractional", [U(100.25), U()], 1, 112.75, {},
     keep(1, "primary healthy for 12.5s of 30s hold-down", 130.25)),
    ("hold-down-at", [U(100), U()], 1, 130, {}, Decision(0, FAILBACK, "primary healthy for 30s; moving back")),
    ("hold-down-after", [U(100), U()], 1, 500, {}, Decision(0, FAILBACK, "primary healthy for 400s; moving back")),
    ("hold-down-zero", [U(100), U()], 1, 100, {"params": PolicyParams(3, 2, 0.0)},
     Decision(0, FAILBACK, "primary healthy for 0s; moving back")),
    ("hold-down-from-unknown-current", [U(90), X], 1, 100, {}, keep(1, "primary healthy for 10s of 30s hold-down", 120)),
    ("failback-from-unknown-current", [U(50), X], 1, 100, {}, Decision(0, FAILBACK, "primary healthy for 50s; moving back")),
    # pin
    ("pin-to-backup", [U(), U()], 0, 100, {"pinned": 1}, Decision(1, PIN, "backup is pinned and healthy")),
    ("pin-already-there", [U(), U()], 1, 100, {"pinned": 1}, keep(1, "backup is pinned")),
    ("pin-beats-failback", [U(0), U()], 1, 1000, {"pinned": 1}, keep(1, "backup is pinned")),
    ("pin-ignores-hold-down", [U(), U(100)], 0, 100, {"pinned": 1}, Decision(1, PIN, "backup is pinned and healthy")),
    ("pin-no-current", [U(), U()], None, 100, {"pinned": 1}, Decision(1, PIN, "backup is pinned and healthy")),
    ("pin-beats-failover", [U(), D], 1, 100, {"pinned": 0}, Decision(0, PIN, "primary is pinned and healthy")),
    ("pin-down-ignored-failover", [U(), D], 1, 100, {"pinned": 1},
     Decision(0, FAILOVER, "backup is down; moving to primary")),
    ("pin-down-ignored-keep", [U(), D], 0, 100, {"pinned": 1}, keep(0, "primary is the best healthy uplink")),
    ("pin-unknown-ignored", [U(), X], 0, 100, {"pinned": 1}, keep(0, "primary is the best healthy uplink")),
    ("pin-out-of-range-ignored", [U(), U()], 0, 100, {"pinned": 7}, keep(0, "primary is the best healthy uplink")),
    # avoid
    ("avoid-current", [U(), U()], 0, 100, {"avoid": frozenset({0})},
     Decision(1, AVOID, "avoiding primary; moving to backup")),
    ("avoid-ignores-hold-down", [U(100), U()], 1, 100, {"avoid": frozenset({1})},
     Decision(0, AVOID, "avoiding backup; moving to primary")),
    ("avoid-current-down", [D, U()], 0, 100, {"avoid": frozenset({0})},
     Decision(1, AVOID, "avoiding primary; moving to backup")),
    ("avoid-no-alternative", [U(), D], 0, 100, {"avoid": frozenset({0})},
     keep(0, "no alternative to avoided primary; keeping it")),
    ("avoid-no-alternative-unknown", [U(), X], 0, 100, {"avoid": frozenset({0})},
     keep(0, "no alternative to avoided primary; keeping it")),
    ("avoid-blocks-failback", [U(0), U()], 1, 1000, {"avoid": frozenset({0})},
     keep(1, "backup is the best healthy uplink")),
    ("avoid-other-irrelevant", [U(), U()], 0, 100, {"avoid": frozenset({1})},
     keep(0, "primary is the best healthy uplink")),
    ("avoid-beats-pin", [U(), U()], 0, 100, {"pinned": 0, "avoid": frozenset({0})},
     Decision(1, AVOID, "avoiding primary; moving to backup")),
    ("avoided-pin-if-only-one", [U(), D], 1, 100, {"pinned": 0, "avoid": frozenset({0})},
     Decision(0, PIN, "primary is pinned and healthy")),
    ("avoided-failover-if-only-one", [U(), D], 1, 100, {"avoid": frozenset({0})},
     Decision(0, FAILOVER, "backup is down; moving to primary")),
    # three uplinks
    ("3-failover-primary-to-backup", [D, U(), U()], 0, 100, {},
     Decision(1, FAILOVER, "primary is down; moving to backup")),
    ("3-failover-primary-to-fallback", [D, D, U()], 0, 100, {},
     Decision(2, FAILOVER, "primary is down; moving to fallback")),
    ("3-failover-backup-to-fallback", [D, D, U()], 1, 100, {},
     Decision(2, FAILOVER, "backup is down; moving to fallback")),
    ("3-failover-fallback-to-primary", [U(), D, D], 2, 100, {},
     Decision(0, FAILOVER, "fallback is down; moving to primary")),
    ("3-keep-backup-fallback-failing", [D, U(), D], 1, 100, {}, keep(1, "backup is the best healthy uplink")),
    ("3-none-up", [D, D, D], 2, 100, {}, keep(2, "no uplink is healthy; keeping fallback")),
    ("3-backup-settling", [D, U(100), U()], 2, 110, {}, keep(2, "backup healthy for 10s of 30s hold-down", 130)),
    ("3-backup-settled", [D, U(100), U()], 2, 130, {}, Decision(1, FAILBACK, "backup healthy for 30s; moving back")),
    ("3-settled-backup-beats-settling-primary", [U(120), U(90), U()], 2, 125, {},
     Decision(1, FAILBACK, "backup healthy for 35s; moving back", 150)),
    ("3-both-settling-earliest-reported", [U(110), U(100), U()], 2, 115, {},
     keep(2, "backup healthy for 15s of 30s hold-down", 130)),
    ("3-both-settling-tie-prefers-primary", [U(100), U(100), U()], 2, 115, {},
     keep(2, "primary healthy for 15s of 30s hold-down", 130)),
    ("3-both-settled-primary-wins", [U(0), U(0), U()], 2, 100, {},
     Decision(0, FAILBACK, "primary healthy for 100s; moving back")),
    ("3-on-backup-primary-settling", [U(100), U(), U()], 1, 120, {},
     keep(1, "primary healthy for 20s of 30s hold-down", 130)),
    ("3-on-backup-primary-settled", [U(100), U(), D], 1, 140, {},
     Decision(0, FAILBACK, "primary healthy for 40s; moving back")),
    ("3-primary-no-timestamp-backup-settled", [UplinkHealth(UP), U(0), U()], 2, 100, {},
     Decision(1, FAILBACK, "backup healthy for 100s; moving back")),
    ("3-avoid-backup-from-fallback", [D, U(0), U()], 2, 100, {"avoid": frozenset({1})},
     keep(2, "fallback is the best healthy uplink")),
    ("3-avoid-two-third-down", [U(), U(), D], 2, 100, {"avoid": frozenset({0, 1})},
     Decision(0, FAILOVER, "fallback is down; moving to primary")),
    ("3-avoid-current-skips-avoided", [U(), U(), U()], 2, 100, {"avoid": frozenset({0, 2})},
     Decision(1, AVOID, "avoiding fallback; moving to backup")),
]
# fmt: on


@pytest.mark.parametrize(
    ("uplinks", "current", "now", "kwargs", "expected"),
    [c[1:] for c in DECIDE_CASES],
    ids=[c[0] for c in DECIDE_CASES],
)
def test_decide(
    uplinks: list[UplinkHealth],
    current: int | None,
    now: float,
    kwargs: dict[str, object],
    expected: Decision,
) -> None:
    kw = dict(kwargs)
    params = kw.pop("params", P)
    assert isinstance(params, PolicyParams)
    names = kw.pop("names", N2 if len(uplinks) == 2 else N3)
    pinned = kw.pop("pinned", None)
    avoid = kw.pop("avoid", frozenset())
    assert not kw
    assert names is None or isinstance(names, tuple)
    assert pinned is None or isinstance(pinned, int)
    assert isinstance(avoid, frozenset)
    got = decide(uplinks, current, float(now), params, names=names, pinned=pinned, avoid=avoid)
    assert got == expected


def test_decide_ids_unique() -> None:
    ids = [c[0] for c in DECIDE_CASES]
    assert len(ids) == len(set(ids))


def test_decide_rejects_wrong_name_count() -> None:
    with pytest.raises(ValueError):
        decide([U(), U()], 0, 0.0, P, names=("only",))


@pytest.mark.parametrize("current", [-1, 2], ids=["negative", "past-end"])
def test_decide_rejects_current_out_of_range(current: int) -> None:
    with pytest.raises(ValueError):
        decide([U(), U()], current, 0.0, P)


# --- timeline scenarios ---------------------------------------------------------------------------

Probe = Callable[[float], Sequence[tuple[bool, bool]]]  # now -> (ok, hard) per uplink
Switch = tuple[float, int | None, Action]


def simulate(n: int, params: PolicyParams, probe: Probe, times: Sequence[float]) -> list[Switch]:
    """Drive observe+decide like the controller: one round per time, plus a decide at every recheck_at."""
    states = [UplinkHealth()] * n
    current: int | None = None
    recheck: float | None = None
    switches: list[Switch] = []

    def apply(now: float) -> None:
        nonlocal current, recheck
        d = decide(states, current, now, params)
        # Invariants that hold for every decision, whatever the timeline.
        assert (d.action is KEEP) == (d.preferred == current), d
        assert d.recheck_at is None or d.recheck_at > now, d
        if d.preferred != current:
            switches.append((now, d.preferred, d.action))
            current = d.preferred
        recheck = d.recheck_at

    for now in times:
        while recheck is not None and recheck < now:
            apply(recheck)
        results = probe(now)
        states = [
            observe(s, ok, now, params, hard=hard) for s, (ok, hard) in zip(states, results, strict=True)
        ]
        apply(now)
    return switches


def ok(*flags: bool) -> list[tuple[bool, bool]]:
    return [(f, False) for f in flags]


def test_scenario_two_uplinks_die_heal_flap() -> None:
    params = PolicyParams(fail_count=2, rise_count=2, failback_hold_down=30.0)

    def primary_ok(t: float) -> bool:
        if 10 <= t < 20:  # silently dead: link up, no internet
            return False
        if 100 <= t < 160:  # flapping: down 2 s, up 2 s
            return (int(t) - 100) // 2 % 2 == 1
        return True

    def backup_ok(t: float) -> bool:
        return not 60 <= t < 80  # standby failing while primary is fine must change nothing

    switches = simulate(2, params, lambda t: ok(primary_ok(t), backup_ok(t)), [float(t) for t in range(300)])
    assert switches == [
        (0.0, 0, INITIAL),
        (11.0, 1, FAILOVER),  # 2nd failed round
        (51.0, 0, FAILBACK),  # UP at 21 (2nd good round) + 30 s hold-down
        (101.0, 1, FAILOVER),  # flapping starts down
        (189.0, 0, FAILBACK),  # last flap UP at 159 + 30 s
    ]
    assert len([s for s in switches if 100 <= s[0] < 160]) == 1


@pytest.mark.parametrize(
    ("fail", "rise", "step"),
    [(1, 1, 1), (1, 1, 2), (2, 2, 1), (3, 3, 1), (1, 3, 1), (3, 1, 1), (1, 1, 0.5), (2, 1, 0.5)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("phase", [0, 1, 2, 3])
def test_flapping_primary_switches_at_most_once(fail: int, rise: int, step: float, phase: int) -> None:
    params = PolicyParams(fail_count=fail, rise_count=rise, failback_hold_down=30.0)

    def primary_ok(t: float) -> bool:
        if 20 <= t < 80:
            return int(t + phase) // 2 % 2 == 0
        return True

    times = [i * step for i in range(int(200 / step))]
    switches = simulate(2, params, lambda t: ok(primary_ok(t), True), times)
    assert switches[0] == (0.0, 0, INITIAL)
    assert len([s for s in switches if 20 <= s[0] < 80]) <= 1
    if len(switches) > 1:
        # One failover into the backup, then back only after the flapping stopped and the primary settled.
        assert [(p, a) for _, p, a in switches[1:]] == [(1, FAILOVER), (0, FAILBACK)]
        assert switches[2][0] >= 80 + 30 - 2


def test_scenario_cable_pull_fails_over_in_same_round() -> None:
    # Hold-down 25 with 2 s rounds puts the expiry between rounds, so the switch comes from recheck_at.
    params = PolicyParams(fail_count=3, rise_count=3, failback_hold_down=25.0)

    def probe(t: float) -> list[tuple[bool, bool]]:
        pulled = 10 <= t < 20
        return [(not pulled, pulled), (True, False)]

    switches = simulate(2, params, probe, [float(t) for t in range(0, 100, 2)])
    assert switches == [
        (0.0, 0, INITIAL),
        (10.0, 1, FAILOVER),
        (49.0, 0, FAILBACK),  # UP at 24 (3rd good round) + 25
    ]


def test_scenario_three_uplink_cascade() -> None:
    params = PolicyParams(fail_count=2, rise_count=2, failback_hold_down=30.0)

    def probe(t: float) -> list[tuple[bool, bool]]:
        return ok(not 10 <= t < 50, not 20 <= t < 40, True)

    switches = simulate(3, params, probe, [float(t) for t in range(200)])
    assert switches == [
        (0.0, 0, INITIAL),
        (11.0, 1, FAILOVER),
        (21.0, 2, FAILOVER),  # backup dies too
        (71.0, 1, FAILBACK),  # backup UP at 41 + 30
        (81.0, 0, FAILBACK),  # primary UP at 51 + 30
    ]


# --- captive portals, flap damping, failing candidates -------------------------------------------

PORTAL = Health.PORTAL
DAMPED = PolicyParams(
    fail_count=3, rise_count=2, failback_hold_down=30.0, max_hold_down=200.0, flap_window=3600.0
)

PORTAL_CASES: list[tuple[str, UplinkHealth, bool, UplinkHealth]] = [
    # id, before, ok, after (portal rounds, at now=10)
    ("unknown-portal-at-once", NEW, False, H(PORTAL, 1, 0, 10.0)),
    ("up-portal-counts-like-a-failure", H(UP, 0, 4), False, H(UP, 1, 0, 5.0)),
    ("up-portal-at-threshold-no-flap", H(UP, 2, 0), False, H(PORTAL, 3, 0, 10.0)),
    ("down-turns-portal-at-once", H(DOWN, 3, 0, 0.0, (0.0,)), False, H(PORTAL, 4, 0, 10.0, (0.0,))),
    ("portal-stays", H(PORTAL, 3, 0), False, H(PORTAL, 4, 0, 5.0)),
    ("portal-ok-one-below", H(PORTAL, 3, 0), True, H(PORTAL, 0, 1, 5.0)),
    ("portal-ok-at-threshold", H(PORTAL, 0, 1), True, H(UP, 0, 2, 10.0)),
]


@pytest.mark.parametrize(
    ("before", "ok", "after"), [c[1:] for c in PORTAL_CASES], ids=[c[0] for c in PORTAL_CASES]
)
def test_observe_portal(before: UplinkHealth, ok: bool, after: UplinkHealth) -> None:
    assert observe(before, ok, 10.0, P, portal=not ok) == after


def test_portal_gone_on_a_dead_link_is_down_at_once() -> None:
    assert observe(H(PORTAL, 4, 0), False, 10.0, P).health is DOWN


def test_downs_older_than_the_window_are_forgotten() -> None:
    params = PolicyParams(1, 1, 30.0, 200.0, flap_window=100.0)
    state = H(UP, 0, 1, 0.0, (10.0, 60.0))
    after = observe(state, False, 120.0, params)  # 10.0 is 110 s old: out of the window
    assert after.downs == (60.0, 120.0)


HOLD_DOWN_CASES: list[tuple[str, tuple[float, ...], float, PolicyParams, tuple[float, str]]] = [
    # id, downs, now, params, (seconds, why)
    ("never-down", (), 1000.0, DAMPED, (30.0, "the configured hold-down")),
    ("one-down", (900.0,), 1000.0, DAMPED, (30.0, "the configured hold-down")),
    ("two-downs-double", (800.0, 900.0), 1000.0, DAMPED, (60.0, "2 failures in the last 3600s")),
    ("three-downs-quadruple", (700.0, 800.0, 900.0), 1000.0, DAMPED, (120.0, "3 failures in the last 3600s")),
    ("capped", (1.0, 2.0, 3.0, 4.0, 5.0), 1000.0, DAMPED, (200.0, "5 failures in the last 3600s")),
    ("old-downs-decay", (0.0, 10.0, 900.0), 3700.0, DAMPED, (30.0, "the configured hold-down")),
    ("no-damping-configured", (1.0, 2.0, 3.0), 10.0, P, (30.0, "the configured hold-down")),
]


@pytest.mark.parametrize(
    ("downs", "now", "params", "expected"),
    [c[1:] for c in HOLD_DOWN_CASES],
    ids=[c[0] for c in HOLD_DOWN_CASES],
)
def test_hold_down(
    downs: tuple[float, ...], now: float, params: PolicyParams, expected: tuple[float, str]
) -> None:
    assert hold_down(H(UP, downs=downs), now, params) == expected


def test_params_reject_a_cap_below_the_hold_down_and_an_empty_window() -> None:
    with pytest.raises(ValueError, match="max_hold_down"):
        PolicyParams(1, 1, 30.0, 29.0)
    with pytest.raises(ValueError, match="flap_window"):
        PolicyParams(1, 1, 30.0, 60.0, 0.0)


FAILING = H(UP, 1, 0, 0.0)  # up, but its last round failed
TWICE_DOWN = (50.0, 90.0)

MORE_DECIDE_CASES: list[tuple[str, list[UplinkHealth], int | None, float, dict[str, object], Decision]] = [
    # both die at once: the backup's first failure keeps traffic where it is
    (
        "both-failing-no-switch",
        [D, FAILING],
        0,
        100,
        {},
        keep(0, "no other uplink is proven healthy; keeping primary"),
    ),
    (
        "failing-backup-skipped-for-fallback",
        [D, FAILING, U()],
        0,
        100,
        {},
        Decision(2, FAILOVER, "primary is down; moving to fallback"),
    ),
    (
        "failing-primary-no-failback",
        [H(UP, 1, 0, 0.0), U()],
        1,
        100,
        {},
        keep(1, "backup is the best healthy uplink"),
    ),
    (
        "failing-pin-ignored",
        [U(), FAILING],
        0,
        100,
        {"pinned": 1},
        keep(0, "primary is the best healthy uplink"),
    ),
    ("failing-current-kept", [FAILING, U()], 0, 100, {}, keep(0, "primary is the best healthy uplink")),
    # a captive portal is left like a dead link
    (
        "portal-fails-over",
        [H(PORTAL, 3, 0, 0.0), U()],
        0,
        100,
        {},
        Decision(1, FAILOVER, "primary is behind a captive portal; moving to backup"),
    ),
    (
        "portal-never-a-target",
        [H(PORTAL, 3, 0, 0.0), U()],
        1,
        1000,
        {},
        keep(1, "backup is the best healthy uplink"),
    ),
    # damping: two recent failures double the hold-down
    (
        "damped-hold-down-keeps",
        [H(UP, at=100, downs=TWICE_DOWN), U()],
        1,
        150,
        {"params": DAMPED},
        keep(1, "primary healthy for 50s of 60s hold-down", 160),
    ),
    (
        "damped-hold-down-served",
        [H(UP, at=100, downs=TWICE_DOWN), U()],
        1,
        160,
        {"params": DAMPED},
        Decision(0, FAILBACK, "primary healthy for 60s; moving back"),
    ),
    (
        "undamped-same-history",
        [H(UP, at=100, downs=TWICE_DOWN), U()],
        1,
        130,
        {},
        Decision(0, FAILBACK, "primary healthy for 30s; moving back"),
    ),
]


@pytest.mark.parametrize(
    ("uplinks", "current", "now", "kwargs", "expected"),
    [c[1:] for c in MORE_DECIDE_CASES],
    ids=[c[0] for c in MORE_DECIDE_CASES],
)
def test_decide_failing_portal_damping(
    uplinks: list[UplinkHealth],
    current: int | None,
    now: float,
    kwargs: dict[str, object],
    expected: Decision,
) -> None:
    names = N2 if len(uplinks) == 2 else N3
    # A copy: popping from the shared table would change the case for a second run in the same process.
    options = dict(kwargs)
    params = options.pop("params", P)
    assert decide(uplinks, current, now, params, names=names, **options) == expected  # type: ignore[arg-type]


def test_scenario_both_die_together_then_backup_returns() -> None:
    """Both uplinks die at the same moment: no switch to the dying backup; traffic moves when it recovers."""
    ups = [H(UP, 0, 5, 0.0), H(UP, 0, 5, 0.0)]
    current = 0
    moves = []
    for t in range(1, 6):  # every round fails on both
        ups = [observe(u, False, float(t), P) for u in ups]
        decision = decide(ups, current, float(t), P, names=N2)
        if decision.preferred != current:
            moves.append(t)
    assert moves == [] and [u.health for u in ups] == [DOWN, DOWN]
    for t in range(6, 8):  # only the backup comes back
        ups = [observe(ups[0], False, float(t), P), observe(ups[1], True, float(t), P)]
    assert decide(ups, current, 8.0, P, names=N2).preferred == 1


# --- answer times and timeouts -------------------------------------------------------------------

RTT_CASES: list[tuple[str, RttEstimate, float, RttEstimate]] = [
    # id, before, sample, after (RFC 6298: first sample sets SRTT and RTTVAR = R/2; then 1/8 and 1/4 gains)
    ("first-sample", RttEstimate(), 0.02, RttEstimate(0.02, 0.01)),
    ("steady", RttEstimate(0.02, 0.0), 0.02, RttEstimate(0.02, 0.0)),
    ("slower", RttEstimate(0.02, 0.0), 0.1, RttEstimate(0.03, 0.02)),
    ("faster", RttEstimate(0.1, 0.04), 0.02, RttEstimate(0.09, 0.05)),
]


@pytest.mark.parametrize(
    ("before", "sample", "after"), [c[1:] for c in RTT_CASES], ids=[c[0] for c in RTT_CASES]
)
def test_rtt_sample(before: RttEstimate, sample: float, after: RttEstimate) -> None:
    got = rtt_sample(before, sample)
    assert got.srtt == pytest.approx(after.srtt) and got.rttvar == pytest.approx(after.rttvar)


TIMEOUT_CASES: list[tuple[str, RttEstimate, float]] = [
    # id, estimate, timeout within floor 0.25 and ceiling 1.0
    ("no-answer-yet-ceiling", RttEstimate(), 1.0),
    ("fast-link-floor", RttEstimate(0.02, 0.005), 0.25),
    ("slower-link-srtt-plus-4-var", RttEstimate(0.2, 0.05), 0.4),
    ("jittery-link-capped", RttEstimate(0.5, 0.3), 1.0),
]


@pytest.mark.parametrize(
    ("estimate", "expected"), [c[1:] for c in TIMEOUT_CASES], ids=[c[0] for c in TIMEOUT_CASES]
)
def test_probe_timeout(estimate: RttEstimate, expected: float) -> None:
    assert probe_timeout(estimate, 0.25, 1.0) == pytest.approx(expected)


# --- brownouts -----------------------------------------------------------------------------------

BROWN = PolicyParams(fail_count=3, rise_count=2, failback_hold_down=30.0, brownout_window=20.0)


def window(pattern: str, latency: float = 0.02, end: float = 100.0) -> tuple[Sample, ...]:
    """One sample every 2 s ending at `end`: '+' answered in `latency`, '-' lost."""
    return tuple(
        Sample(end - 2 * (len(pattern) - 1 - i), c == "+", latency if c == "+" else 1.0)
        for i, c in enumerate(pattern)
    )


QUALITY_CASES: list[tuple[str, UplinkHealth, Quality]] = [
    ("no-samples", H(UP), Quality(0.0, None, None, 0, None)),
    (
        "clean",
        replace(H(UP), samples=window("++++++++++"), baseline=0.02),
        Quality(0.0, 0.02, 0.02, 10, None),
    ),
    (
        "light-loss-20pct",
        replace(H(UP), samples=window("++-+++++-+"), baseline=0.02),
        Quality(0.2, 0.02, 0.02, 10, None),
    ),
    (
        "heavy-loss-50pct",
        replace(H(UP), samples=window("+-+-+-+-+-"), baseline=0.02),
        Quality(0.5, 0.02, 0.02, 10, "50% of answers lost over 20s"),
    ),
    (
        "too-few-to-judge",
        replace(H(UP), samples=window("+--+-"), baseline=0.02),
        Quality(0.6, 0.02, 0.02, 5, None),
    ),
    (
        "old-samples-forgotten",
        replace(H(UP), samples=window("----------", end=70.0) + window("++++++")),
        Quality(0.0, 0.02, 0.02, 6, None),
    ),
    (
        "slow-answers",
        replace(H(UP), samples=window("++++++", latency=0.3), baseline=0.05),
        Quality(0.0, 0.3, 0.3, 6, "answers take 300 ms, 6x its usual 50 ms"),
    ),
    (
        "slow-but-fast-link-no-brownout",
        replace(H(UP), samples=window("++++++", latency=0.03), baseline=0.005),
        Quality(0.0, 0.03, 0.03, 6, None),
    ),
]


@pytest.mark.parametrize(
    ("state", "expected"), [c[1:] for c in QUALITY_CASES], ids=[c[0] for c in QUALITY_CASES]
)
def test_quality(state: UplinkHealth, expected: Quality) -> None:
    assert quality(state, 100.0, BROWN) == expected


def test_record_learns_the_usual_answer_time_only_while_not_degraded() -> None:
    state = record(H(UP), [(True, 0.02)], 1.0, BROWN)
    assert state.baseline == 0.02 and state.degraded_at is None
    state = record(state, [(True, 0.036)], 2.0, BROWN)
    assert state.baseline == pytest.approx(0.021)  # 1/16 of the way
    for t in range(3, 15):  # two answers in three lost, for over half the window: degraded
        state = record(state, [(t % 3 == 0, 0.5)], float(t), BROWN)
        if t == 12:
            learnt = state.baseline
    assert state.degraded_at == 14.0
    assert state.baseline == learnt  # the slow answers of a brownout teach nothing about the usual time


DEGRADED = replace(H(UP, at=0.0), samples=window("+-+-+-+-+-"), baseline=0.02, degraded_at=100.0)
RECOVERED = replace(H(UP, at=0.0), samples=window("++++++++++"), baseline=0.02, degraded_at=80.0)

BROWN_DECIDE_CASES: list[tuple[str, list[UplinkHealth], int, Decision]] = [
    (
        "degraded-primary-moves",
        [DEGRADED, U()],
        0,
        Decision(1, FAILOVER, "primary is degraded (50% of answers lost over 20s); moving to backup"),
    ),
    ("both-degraded-stays", [DEGRADED, DEGRADED], 0, keep(0, "primary is the best healthy uplink")),
    (
        "degraded-primary-no-failback",
        [DEGRADED, U()],
        1,
        keep(1, "primary is degraded (50% of answers lost over 20s); keeping backup"),
    ),
    (
        "recovered-waits-a-hold-down",
        [RECOVERED, U()],
        1,
        keep(1, "primary healthy for 20s of 30s hold-down", 110),
    ),
    (
        "light-loss-keeps",
        [replace(U(), samples=window("++-+++++-+"), baseline=0.02), U()],
        0,
        keep(0, "primary is the best healthy uplink"),
    ),
]


@pytest.mark.parametrize(
    ("uplinks", "current", "expected"),
    [c[1:] for c in BROWN_DECIDE_CASES],
    ids=[c[0] for c in BROWN_DECIDE_CASES],
)
def test_decide_brownout(uplinks: list[UplinkHealth], current: int, expected: Decision) -> None:
    assert decide(uplinks, current, 100.0, BROWN, names=N2) == expected


RELINKED_CASES: list[tuple[str, tuple[float, ...], tuple[float, str]]] = [
    # id, downs of its path, (seconds, why)
    ("its link came back: no hold-down", (), (0.0, "its link came back")),
    ("its path failed within the window: the hold-down", (900.0,), (30.0, "the configured hold-down")),
    ("and flapped: the damped one", (800.0, 900.0), (60.0, "2 failures in the last 3600s")),
]


@pytest.mark.parametrize(
    ("downs", "expected"), [c[1:] for c in RELINKED_CASES], ids=[c[0] for c in RELINKED_CASES]
)
def test_a_link_that_came_back_needs_no_hold_down_unless_its_path_failed(
    downs: tuple[float, ...], expected: tuple[float, str]
) -> None:
    assert hold_down(replace(H(UP, downs=downs), relinked=True), 1000.0, DAMPED) == expected


def test_a_link_going_away_is_no_flap_and_a_path_failure_ends_the_waiver() -> None:
    relinked = replace(H(UP, 0, 3, 0.0), relinked=True)
    gone = observe(relinked, False, 10.0, P, hard=True)
    assert gone.health is DOWN and gone.downs == () and gone.relinked
    failed = relinked
    for now in range(10, 10 + P.fail_count):
        failed = observe(failed, False, float(now), P)
    assert failed.health is DOWN and failed.downs == (12.0,) and not failed.relinked


ON_DEMAND_CASES: list[tuple[str, list[UplinkHealth], int | None, dict[int, float], set[int]]] = [
    # id, healths (the backup, 1, on demand), current, when traffic left each, wanted
    ("primary up: kept down", [H(UP), H(DOWN)], 0, {}, set()),
    ("primary down: brought up", [H(DOWN), H(DOWN)], 0, {}, {1}),
    ("primary not judged yet: brought up (nothing better is up)", [H(UNKNOWN), H(DOWN)], None, {}, {1}),
    ("carrying traffic: up, whatever the primary", [H(UP), H(UP)], 1, {}, {1}),
    ("traffic left it 10 s ago: lingers", [H(UP), H(UP)], 0, {1: 990.0}, {1}),
    ("traffic left it 40 s ago: down", [H(UP), H(UP)], 0, {1: 960.0}, set()),
    ("a primary in doubt is still up: no activation", [H(UP, 1, 0), H(DOWN)], 0, {}, set()),
]


@pytest.mark.parametrize(
    ("healths", "current", "left_at", "wanted"),
    [c[1:] for c in ON_DEMAND_CASES],
    ids=[c[0] for c in ON_DEMAND_CASES],
)
def test_on_demand_wanted(
    healths: list[UplinkHealth], current: int | None, left_at: dict[int, float], wanted: set[int]
) -> None:
    assert on_demand_wanted(healths, current, frozenset({1}), left_at, 1000.0, 30.0) == wanted


def test_only_on_demand_uplinks_are_ever_wanted_or_not() -> None:
    assert on_demand_wanted([H(DOWN), H(DOWN), H(DOWN)], 0, frozenset({2}), {}, 0.0, 30.0) == {2}
    assert on_demand_wanted([H(DOWN), H(UP), H(DOWN)], 1, frozenset({2}), {}, 0.0, 30.0) == set()
