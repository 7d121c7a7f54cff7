"""The policy's parameter checks by their exact bounds and messages: scripts/mutation found bounds and
messages that tests/test_policy.py let change unnoticed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nmfailover.policy import (
    Health,
    PolicyParams,
    Sample,
    UplinkHealth,
    decide,
    hold_down,
    observe,
    on_demand_wanted,
    quality,
    record,
)

INVALID: list[tuple[str, dict[str, float | None], str]] = [
    ("no failures needed", {"fail_count": 0}, "fail_count must be >= 1, got 0"),
    ("no successes needed", {"rise_count": 0}, "rise_count must be >= 1, got 0"),
    ("negative hold-down", {"failback_hold_down": -0.5}, "failback_hold_down must be >= 0, got -0.5"),
    (
        "cap below the hold-down",
        {"max_hold_down": 29.0},
        "max_hold_down must be >= failback_hold_down, got 29.0",
    ),
    ("no flap window", {"flap_window": 0.0}, "flap_window must be > 0, got 0.0"),
]
VALID: list[tuple[str, dict[str, float | None]]] = [
    ("one failure, one success", {"fail_count": 1, "rise_count": 1}),
    ("no hold-down", {"failback_hold_down": 0.0, "max_hold_down": 0.0}),
    ("cap at the hold-down", {"max_hold_down": 30.0}),
    ("the shortest flap window", {"flap_window": 0.001}),
]


def params(**changes: float | None) -> PolicyParams:
    values: dict[str, float | None] = {"fail_count": 3, "rise_count": 2, "failback_hold_down": 30.0}
    values.update(changes)
    return PolicyParams(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_params_are_refused_saying_which_and_what(
    changes: dict[str, float | None], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        params(**changes)
    assert str(raised.value) == message


@pytest.mark.parametrize("changes", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_params_at_their_bounds_are_accepted(changes: dict[str, float | None]) -> None:
    assert params(**changes)


P = params()


def answered_at(at: float, *latencies: float) -> tuple[Sample, ...]:
    return tuple(Sample(at, True, latency) for latency in latencies)


def test_answer_time_percentiles_pick_by_rank() -> None:
    ten = UplinkHealth(Health.UP, samples=answered_at(100.0, *(i / 10 for i in range(10, 0, -1))))
    q = quality(ten, 100.0, P)
    assert (q.loss, q.p50, q.p95, q.samples) == (0.0, 0.6, 1.0, 10)
    forty = UplinkHealth(Health.UP, samples=answered_at(100.0, *(i / 100 for i in range(1, 41))))
    q = quality(forty, 100.0, P)
    assert (q.p50, q.p95) == (0.21, 0.39)


def test_the_brownout_window_holds_answers_younger_than_it() -> None:
    state = UplinkHealth(Health.UP, samples=answered_at(80.0, 0.1) + answered_at(81.0, 0.2))
    assert quality(state, 100.0, P).samples == 1  # 20 s old is out of a 20 s window
    kept = record(state, [(True, 0.3)], 100.0, P).samples
    assert [s.at for s in kept] == [81.0, 100.0]


LOST = tuple(Sample(at, False, 1.0) for at in (90.0, 91.0, 92.0, 93.0, 94.0, 95.0))
# (first sample's time, how many): sustained over half the 20 s window, and at least 6 samples.
SUSTAINED_CASES: list[tuple[str, tuple[Sample, ...], bool]] = [
    ("six losses over half the window", LOST, True),
    ("six losses over a third of it", tuple(replace(s, at=s.at + 3.0) for s in LOST), False),
    ("five losses over half of it", LOST[:5], False),
]


@pytest.mark.parametrize(
    ("samples", "degraded"), [c[1:] for c in SUSTAINED_CASES], ids=[c[0] for c in SUSTAINED_CASES]
)
def test_loss_degrades_only_when_sustained_and_counted(samples: tuple[Sample, ...], degraded: bool) -> None:
    why = quality(UplinkHealth(Health.UP, samples=samples), 100.0, P).degraded
    assert why == ("100% of answers lost over 20s" if degraded else None)


def test_slow_answers_degrade_when_five_times_and_a_tenth_of_a_second_slower() -> None:
    slow = UplinkHealth(Health.UP, samples=answered_at(90.0, *[3.6] * 6), baseline=0.6)
    assert quality(slow, 100.0, P).degraded == "answers take 3600 ms, 6x its usual 600 ms"
    exactly = UplinkHealth(Health.UP, samples=answered_at(90.0, *[0.5] * 6), baseline=0.1)
    assert quality(exactly, 100.0, P).degraded is not None  # 5x and 0.4 s more: at the bounds
    quick = UplinkHealth(Health.UP, samples=answered_at(90.0, *[0.05] * 6), baseline=0.01)
    assert quality(quick, 100.0, P).degraded is None  # 5x, but only 40 ms more


def test_each_failure_within_the_flap_window_doubles_the_hold_down() -> None:
    damped = params(max_hold_down=1000.0, flap_window=3600.0)
    downs = (1400.0, 2000.0, 4000.0, 4900.0)  # at 5000: the first is exactly 3600 s old, out
    assert hold_down(UplinkHealth(Health.UP, downs=downs), 5000.0, damped) == (
        120.0,
        "3 failures in the last 3600s",
    )
    assert hold_down(UplinkHealth(Health.UP, downs=(*downs, 4950.0)), 5000.0, damped)[0] == 240.0
    assert observe(UplinkHealth(Health.UP, downs=downs), True, 5000.0, damped).downs == downs[1:]


def test_the_flap_window_in_words() -> None:
    assert (
        hold_down(
            UplinkHealth(Health.UP, downs=(99.0, 98.0)), 100.0, params(max_hold_down=1000.0, flap_window=90.5)
        )[1]
        == "2 failures in the last 90.5s"
    )


def test_an_on_demand_uplink_lingers_for_less_than_its_linger() -> None:
    up = UplinkHealth(Health.UP)
    assert on_demand_wanted([up, up], 0, frozenset({1}), {1: 70.0}, 99.9, 30.0) == frozenset({1})
    assert on_demand_wanted([up, up], 0, frozenset({1}), {1: 70.0}, 100.0, 30.0) == frozenset()


def test_decide_says_what_is_wrong_with_its_arguments() -> None:
    up = UplinkHealth(Health.UP)
    with pytest.raises(ValueError) as raised:
        decide([up, up], 2, 0.0, P)
    assert str(raised.value) == "current uplink 2 out of range for 2 uplinks"
    with pytest.raises(ValueError) as raised:
        decide([up, up], 0, 0.0, P, names=("primary",))
    assert str(raised.value) == "1 names for 2 uplinks"


def test_the_uplink_carrying_traffic_never_waits_out_its_own_hold_down() -> None:
    down, backup = UplinkHealth(Health.DOWN, changed_at=90.0), UplinkHealth(Health.UP, changed_at=95.0)
    decision = decide([down, backup], 1, 100.0, P)
    assert (decision.preferred, decision.recheck_at) == (1, None)


def test_the_next_decision_waits_for_the_uplink_whose_hold_down_ends_first() -> None:
    damped = params(max_hold_down=1000.0)
    flapping = UplinkHealth(Health.UP, changed_at=95.0, downs=(80.0, 85.0))  # 60 s: ready at 155
    steady = UplinkHealth(Health.UP, changed_at=90.0)  # 30 s: ready at 120
    decision = decide([flapping, steady, UplinkHealth(Health.UP, changed_at=0.0)], 2, 100.0, damped)
    assert (decision.preferred, decision.recheck_at) == (2, 120.0)


def test_slow_answers_must_be_a_tenth_of_a_second_slower_than_usual() -> None:
    at_the_bound = UplinkHealth(Health.UP, samples=answered_at(90.0, *[0.101] * 6), baseline=0.001)
    assert quality(at_the_bound, 100.0, P).degraded is not None  # 101x and exactly 0.1 s more
    under = UplinkHealth(Health.UP, samples=answered_at(90.0, *[0.095] * 6), baseline=0.01)
    assert quality(under, 100.0, P).degraded is None  # 9.5x, but 85 ms more
