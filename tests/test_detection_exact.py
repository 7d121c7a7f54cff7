"""The detection core's exact next state and log notes, step by step, where tests/test_detection.py checks
only the verdict: scripts/mutation found these fields and notes free to change unnoticed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nmfailover.detection import (
    ECHO_STRIKES,
    LOSS_BURST_GROWTH,
    MAX_LOSS_BURSTS,
    DnsCheck,
    DnsHealth,
    Echo,
    Evidence,
    HttpCheck,
    Note,
    Observed,
    Proof,
    Purpose,
    Step,
    Unanswered,
    Watch,
    echo_timeout,
    fold,
    interval,
    loss_score,
    max_silence,
    plan,
    read_traffic,
)
from nmfailover.echo import echo_target
from nmfailover.policy import Health, RttEstimate, Sample, UplinkHealth
from nmfailover.probe import Reason, RoundResult, Target
from nmfailover.traffic import LinkStats, TrafficCounters
from tests.test_detection import (
    DOUBT,
    HEALTHY,
    PARAMS,
    PEER,
    T1,
    T2,
    UP,
    answer,
    at,
    dns_result,
    echoes,
    round_of,
)

CHECK = DnsCheck("one.example", 0.25)
HEARTBEAT = Echo(PEER, 1, 0.5, Purpose.HEARTBEAT)
CONFIRM = Echo(PEER, 5, 0.5, Purpose.CONFIRM)
# The resolvers answer, with a failure (SERVFAIL): the path is fine, no burst needed to tell.
SERVFAIL = round_of(answer(Target("dns://one.example", 0), False, Reason.DNS))


def dns_step(watch: Watch, result: RoundResult, now: float) -> tuple[Watch, tuple[Note, ...]]:
    watch, step, notes = fold(watch, CHECK, Observed(result), at(now), PARAMS)
    assert step is None
    return watch, tuple(notes)


def test_resolvers_failing_then_dead_then_back_state_and_notes_at_each_check() -> None:
    # fail_count 2, rise_count 3; the path answers throughout (no failure of its own).
    failed, answered = SERVFAIL, dns_result(True)
    why = failed.summary
    expected: list[tuple[RoundResult, DnsHealth, tuple[Note, ...]]] = [
        (failed, DnsHealth(1, 0, False, why), (Note(f"resolvers failing (1/2): {why}", warning=True),)),
        (
            failed,
            DnsHealth(2, 0, True, why),
            (Note(f"its resolvers fail while its path answers: {why}", warning=True),),
        ),
        (failed, DnsHealth(3, 0, True, why), ()),
        (answered, DnsHealth(0, 1, True, why), ()),
        (answered, DnsHealth(0, 2, True, why), ()),
        (answered, DnsHealth(), (Note(f"its resolvers answer again: {answered.summary}"),)),
    ]
    watch = HEALTHY
    for now, (result, dns, notes) in enumerate(expected, start=101):
        watch, said = dns_step(watch, result, float(now))
        assert (watch.dns, said) == (dns, notes), now
        assert watch.health == HEALTHY.health  # the path is not blamed


def test_an_answer_before_the_resolvers_are_dead_starts_the_count_afresh() -> None:
    watch, _ = dns_step(HEALTHY, SERVFAIL, 101.0)
    watch, said = dns_step(watch, dns_result(True), 101.5)
    assert (watch.dns, said) == (DnsHealth(0, 1, False, SERVFAIL.summary), ())
    watch, said = dns_step(watch, SERVFAIL, 102.0)
    assert watch.dns.failures == 1 and not watch.dns.dead  # one failure again, not the second


def test_an_answered_heartbeat_clears_the_loss_test_and_the_unanswered_count() -> None:
    before = replace(HEALTHY, echo_answered=False, echo_unanswered=2, loss_score=1.5, loss_bursts=3)
    watch, _, notes = fold(before, HEARTBEAT, Observed(echoes(1, 1)), at(101.0), PARAMS)
    assert (watch.echo_answered, watch.echo_unanswered, watch.echoed) == (True, 0, True)
    assert (watch.loss_score, watch.loss_bursts) == (0.0, 0)
    assert notes == ()


def test_a_missed_heartbeat_opens_the_loss_test_with_its_own_evidence_only() -> None:
    before = replace(HEALTHY, loss_score=1.5, loss_bursts=3)
    missed = echoes(0, 1)
    watch, _, notes = fold(before, HEARTBEAT, Observed(missed), at(101.0), PARAMS)
    assert (watch.loss_score, watch.loss_bursts) == (loss_score(0.0, 0, 1, PARAMS), 0)
    assert watch.health.consecutive_failures == 1
    assert notes == (Note(f"failing (1/2): {missed.summary}", warning=True),)


def test_a_burst_nothing_answered_ends_the_loss_test_as_a_dead_path() -> None:
    before = replace(HEALTHY, loss_score=1.5, loss_bursts=2)
    watch, _, _ = fold(before, CONFIRM, Observed(echoes(0, 5)), at(101.0), PARAMS)
    assert (watch.loss_score, watch.loss_bursts) == (0.0, 0)
    assert watch.health.consecutive_failures == 1


def test_a_busy_device_is_slow_not_failed_and_says_so() -> None:
    missed = echoes(0, 1)
    received = 10 * PARAMS.busy_rx_rate
    watch, step, notes = fold(HEALTHY, HEARTBEAT, Observed(missed, received, 0.5), at(101.0), PARAMS)
    assert step is None and watch.busy_rx == received
    assert notes == (Note(f"slow, not failed: {missed.summary} while busy"),)
    assert watch.health == HEALTHY.health


def test_max_silence_is_the_longest_interval_plus_a_round_twice_and_a_second() -> None:
    base = replace(
        PARAMS, active_interval=2.0, standby_interval=7.0, suspect_interval=1.0, timeout_ceiling=3.0
    )
    assert max_silence(base) == 2 * (7.0 + 3.0) + 1.0
    assert max_silence(replace(base, active_interval=9.0)) == 2 * (9.0 + 3.0) + 1.0
    assert max_silence(replace(base, suspect_interval=11.0)) == 2 * (11.0 + 3.0) + 1.0


@pytest.mark.parametrize(
    ("tolerated", "heavy", "valid"),
    [
        (0.0, 0.5, True),
        (0.15, 0.99, True),
        (-0.01, 0.5, False),
        (0.5, 0.5, False),
        (0.6, 0.5, False),
        (0.1, 1.0, False),
    ],
)
def test_loss_shares_must_be_ordered_within_zero_and_one(tolerated: float, heavy: float, valid: bool) -> None:
    if valid:
        assert replace(PARAMS, loss_tolerated=tolerated, loss_heavy=heavy).loss_heavy == heavy
        return
    with pytest.raises(ValueError) as raised:
        replace(PARAMS, loss_tolerated=tolerated, loss_heavy=heavy)
    assert str(raised.value) == (
        f"loss_tolerated must be below loss_heavy, both in [0, 1): {tolerated}, {heavy}"
    )


PEER6 = "2001:db8:ffff::10"
V6 = replace(HEALTHY, echo_peer6=PEER6)
UP6 = UplinkHealth(Health.UP, changed_at=0.0)
# After an answered heartbeat at 101: which IPv6 echo, if any (count; None: no step).
IPV6_STEP_CASES: list[tuple[str, Watch, dict[str, object], int | None]] = [
    ("never checked: one echo", V6, {}, 1),
    ("no IPv6 gateway", V6, {"ipv6": False}, None),
    ("no IPv6 peer", replace(V6, echo_peer6=None), {}, None),
    ("the peer filters ICMP", replace(V6, echo_off=True), {}, None),
    ("checked just now", replace(V6, health6=UP6, checked6_at=100.9), {}, None),
    ("checked an interval ago", replace(V6, health6=UP6, checked6_at=101.0 - PARAMS.ipv6_interval), {}, 1),
    (
        "IPv6 in doubt: a burst, even between checks",
        replace(V6, health6=replace(UP6, consecutive_failures=1), checked6_at=100.9),
        {},
        PARAMS.echo_burst,
    ),
    ("heartbeats off", V6, {"heartbeat": False}, None),
]


@pytest.mark.parametrize(
    ("watch", "changes", "count"), [c[1:] for c in IPV6_STEP_CASES], ids=[c[0] for c in IPV6_STEP_CASES]
)
def test_the_ipv6_echo_after_a_verdict(watch: Watch, changes: dict[str, object], count: int | None) -> None:
    options = dict(changes)  # the table's own dict stays as it is, for a second run in the same process
    ipv6 = bool(options.pop("ipv6", True))
    params = replace(PARAMS, **options)  # type: ignore[arg-type]
    after, step, _ = fold(watch, HEARTBEAT, Observed(echoes(1, 1)), at(101.0, ipv6=ipv6), params)
    if count is None:
        assert step is None
    else:
        assert step == Echo(PEER6, count, echo_timeout(after, PEER6, params), Purpose.IPV6)


def test_ipv6_echoes_give_their_own_verdict_and_say_when_it_changes() -> None:
    step = Echo(PEER6, 1, 0.5, Purpose.IPV6)
    missed, answered = echoes(0, 1), echoes(1, 1)
    # No verdict before a first answer: the peer may filter ICMPv6.
    watch, nothing, notes = fold(V6, step, Observed(missed), at(101.0, ipv6=True), PARAMS)
    assert (watch.health6, watch.checked6_at, nothing, notes) == (V6.health6, 101.0, None, ())
    watch, nothing, notes = fold(V6, step, Observed(answered), at(102.0, ipv6=True), PARAMS)
    assert (watch.health6.health, watch.checked6_at, nothing) == (Health.UP, 102.0, None)
    assert notes == (Note(f"IPv6 up: {answered.summary}"),)
    # fail_count 2: the first miss is doubt, the second the verdict; the uplink's own health is untouched.
    watch, _, notes = fold(watch, step, Observed(missed), at(103.0, ipv6=True), PARAMS)
    assert (watch.health6.health, watch.health6.consecutive_failures, notes) == (Health.UP, 1, ())
    watch, _, notes = fold(watch, step, Observed(missed), at(104.0, ipv6=True), PARAMS)
    assert watch.health6.health is Health.DOWN and watch.checked6_at == 104.0
    assert notes == (Note(f"IPv6 down: {missed.summary}"),)
    assert watch.health == V6.health


def excuse_burst(
    check: DnsCheck | HttpCheck, answered: int, sent: int
) -> tuple[Watch, Step | None, tuple[Note, ...], RoundResult]:
    """A cheap check nothing answered, then its excuse burst with `answered` of `sent` echoes back."""
    failed = (
        round_of(answer(T1, False, unanswered=True)) if isinstance(check, HttpCheck) else dns_result(False)
    )
    watch, burst, _ = fold(HEALTHY, check, Observed(failed), at(101.0), PARAMS)
    assert isinstance(burst, Echo) and burst.purpose is Purpose.EXCUSE
    watch, step, notes = fold(watch, burst, Observed(echoes(answered, sent)), at(101.1), PARAMS)
    return watch, step, tuple(notes), failed


def test_heavy_loss_in_the_burst_of_a_cheap_check_is_a_failure() -> None:
    watch, step, notes, _ = excuse_burst(CHECK, 1, 20)
    assert step is None and watch.echoed and watch.health.consecutive_failures == 1
    assert notes == (Note("failing (1/2): heavy loss: 1/20 echoes answered in the last burst", warning=True),)


def test_light_loss_in_the_burst_excuses_a_dns_check_and_calls_the_proof_of_a_kept_alive_check() -> None:
    watch, step, notes, failed = excuse_burst(CHECK, 7, 8)
    assert (step, watch.health, watch.dns) == (None, HEALTHY.health, HEALTHY.dns)
    assert notes == (Note(f"lossy, not failed: {failed.summary}; 7/8 echoes answered"),)
    watch, step, notes, failed = excuse_burst(HttpCheck(T1, PEER, 0.5), 7, 8)
    assert isinstance(step, Proof) and watch.health == HEALTHY.health
    assert notes == (Note(f"kept-alive check failed: {failed.summary}; proving at once"),)


def test_undecided_loss_asks_another_burst_with_the_score_so_far() -> None:
    watch, step, notes, _ = excuse_burst(CHECK, 4, 8)
    more = PARAMS.echo_burst * LOSS_BURST_GROWTH  # an undecided test's further bursts are larger
    assert step == Echo(PEER, more, echo_timeout(watch, PEER, PARAMS), Purpose.CONFIRM)
    assert (watch.loss_score, watch.loss_bursts, notes) == (loss_score(0.0, 4, 8, PARAMS), 1, ())
    assert watch.health == HEALTHY.health


def test_a_passing_proof_records_who_answered_for_heartbeats_and_kept_alive_checks() -> None:
    before = replace(Watch(), excused=2)
    proof = Proof((T1, T2), 1.0)
    result = round_of(answer(T1, False, address="192.0.2.1"), answer(T2, address="192.0.2.2"))
    result = replace(result, results=(*result.results[:1], replace(result.results[1], ipv6="2001:db8::2")))
    watch, _, _ = fold(before, proof, Observed(result), at(101.0, ipv6=True), PARAMS)
    assert (watch.proved_at, watch.excused) == (101.0, 0)
    assert (watch.http_target, watch.http_address) == (T2, "192.0.2.2")
    assert (watch.echo_peer, watch.echo_answered, watch.echo_peer6) == ("192.0.2.2", False, "2001:db8::2")
    assert (watch.dns_checked_at, watch.http_checked_at) == (101.0, 101.0)


ICMP = f"icmp://{PEER}"
# floor 0.25 s, ceiling 1 s; rttvar 0, so a known estimate's timeout is its srtt within those.
ECHO_TIMEOUT_CASES: list[tuple[str, dict[str, RttEstimate], float]] = [
    ("nothing known: the ceiling", {}, 1.0),
    ("the peer's own answer times first", {ICMP: RttEstimate(0.4), T1.url: RttEstimate(0.3)}, 0.4),
    ("else the quickest HTTP target's", {T1.url: RttEstimate(0.6), T2.url: RttEstimate(0.3)}, 0.3),
    ("an answer in no time is the quickest", {T1.url: RttEstimate(0.3), T2.url: RttEstimate(0.0)}, 0.25),
    ("a target never answered is no estimate", {T1.url: RttEstimate(None), T2.url: RttEstimate(0.5)}, 0.5),
    ("only HTTP targets count", {"dns://one.example": RttEstimate(0.3), T1.url: RttEstimate(0.7)}, 0.7),
]


@pytest.mark.parametrize(
    ("rtt", "timeout"), [c[1:] for c in ECHO_TIMEOUT_CASES], ids=[c[0] for c in ECHO_TIMEOUT_CASES]
)
def test_echo_timeout(rtt: dict[str, RttEstimate], timeout: float) -> None:
    assert echo_timeout(replace(HEALTHY, rtt=rtt), PEER, PARAMS) == timeout


BUSY = 10 * PARAMS.busy_rx_rate  # received during a 0.5 s step: a loaded device
# A heartbeat's answer after a state: (went_silent, busy_rx) after it.
BUSY_CASES: list[tuple[str, Watch, bool, int, tuple[bool, int | None]]] = [
    ("missed on a quiet link", HEALTHY, False, 0, (False, None)),
    ("missed on a loaded link: busy", HEALTHY, False, BUSY, (False, BUSY)),
    ("busy, then missed with the traffic stopped", replace(HEALTHY, busy_rx=BUSY), False, 0, (True, None)),
    ("silent, still missed", replace(HEALTHY, went_silent=True), False, 0, (True, None)),
    ("busy, then answered", replace(HEALTHY, busy_rx=BUSY), True, 0, (False, None)),
    ("busy, still missed under load", replace(HEALTHY, busy_rx=BUSY), False, BUSY, (False, BUSY)),
]


@pytest.mark.parametrize(
    ("before", "ok", "received", "after"), [c[1:] for c in BUSY_CASES], ids=[c[0] for c in BUSY_CASES]
)
def test_busy_and_went_silent(before: Watch, ok: bool, received: int, after: tuple[bool, int | None]) -> None:
    watch, _, _ = fold(before, HEARTBEAT, Observed(echoes(int(ok), 1), received, 0.5), at(101.0), PARAMS)
    assert (watch.went_silent, watch.busy_rx) == after


def test_a_verdict_records_every_echo_of_every_answer_in_the_brownout_window() -> None:
    target = echoes(1, 1).results[0].target
    burst = round_of(answer(target, sent=8, answered=7), answer(target, sent=8, answered=8))
    watch, _, _ = fold(HEALTHY, CONFIRM, Observed(burst), at(101.0), PARAMS)
    latency = burst.results[0].latency
    assert (
        watch.health.samples
        == (Sample(101.0, True, latency),) * 7
        + (Sample(101.0, False, latency),)
        + (Sample(101.0, True, latency),) * 8
    )


def test_answers_behind_a_full_queue_or_a_portal_are_not_recorded() -> None:
    loaded, _, _ = fold(HEALTHY, HEARTBEAT, Observed(echoes(1, 1), BUSY, 0.5), at(101.0), PARAMS)
    assert loaded.health.samples == ()
    portal = round_of(answer(T1, False, Reason.UNEXPECTED), answer(T2, False, Reason.UNEXPECTED))
    behind, _, _ = fold(HEALTHY, Proof((T1, T2), 1.0), Observed(portal), at(101.0), PARAMS)
    assert behind.health.samples == ()
    quiet, _, _ = fold(HEALTHY, HEARTBEAT, Observed(echoes(1, 1)), at(101.0), PARAMS)
    assert len(quiet.health.samples) == 1


def test_no_device_is_down_at_once_and_says_so() -> None:
    gone = round_of(answer(T1, False, Reason.NO_DEVICE))
    watch, _, notes = fold(HEALTHY, Proof((T1,), 1.0), Observed(gone), at(101.0), PARAMS)
    assert (watch.health.health, watch.health.changed_at) == (Health.DOWN, 101.0)
    assert notes == (Note(f"down: {gone.summary}"),)


def test_a_failed_proof_says_failing_with_its_own_summary() -> None:
    refused = round_of(answer(T1, False, Reason.TIMEOUT))
    watch, _, notes = fold(HEALTHY, Proof((T1,), 1.0), Observed(refused), at(101.0), PARAMS)
    assert watch.last_round == refused
    assert notes == (Note(f"failing (1/2): {refused.summary}", warning=True),)


def test_doubt_begins_at_the_first_miss_and_ends_with_an_answer() -> None:
    missed = echoes(0, 1)
    watch, _, _ = fold(HEALTHY, HEARTBEAT, Observed(missed), at(101.0), PARAMS)
    assert (watch.doubt_since, watch.last_round) == (101.0, missed)
    watch, _, _ = fold(watch, HEARTBEAT, Observed(missed), at(102.0), PARAMS)
    assert (watch.health.health, watch.doubt_since) == (Health.DOWN, 101.0)
    answered, _, _ = fold(HEALTHY, HEARTBEAT, Observed(echoes(1, 1)), at(101.0), PARAMS)
    assert answered.doubt_since is None


def confirm(before: Watch, *answers: tuple[int, int]) -> tuple[Watch, Step | None, tuple[Note, ...]]:
    target = echoes(1, 1).results[0].target
    burst = round_of(
        *(answer(target, answered > 0, sent=sent, answered=answered) for answered, sent in answers)
    )
    watch, step, notes = fold(before, CONFIRM, Observed(burst), at(101.0), PARAMS)
    return watch, step, tuple(notes)


def test_the_loss_test_of_confirming_bursts_ends_and_starts_afresh() -> None:
    testing = replace(HEALTHY, loss_score=0.5, loss_bursts=2)
    light, step, notes = confirm(testing, (15, 16))
    assert (light.loss_score, light.loss_bursts, notes) == (
        0.0,
        0,
        (),
    ) and light.health.consecutive_failures == 0
    heavy, step, notes = confirm(testing, (1, 20))
    assert (heavy.loss_score, heavy.loss_bursts, heavy.health.consecutive_failures) == (0.0, 0, 1)
    assert notes == (Note("failing (1/2): heavy loss: 1/20 echoes answered in the last burst", warning=True),)
    undecided, step, notes = confirm(replace(HEALTHY, loss_bursts=1), (4, 8))
    assert (undecided.loss_score, undecided.loss_bursts, step, notes) == (
        loss_score(0.0, 4, 8, PARAMS),
        2,
        replace(CONFIRM, count=PARAMS.echo_burst * LOSS_BURST_GROWTH),
        (),
    )
    last, step, notes = confirm(replace(HEALTHY, loss_bursts=MAX_LOSS_BURSTS - 1), (4, 8))
    assert (last.loss_score, last.loss_bursts, notes) == (
        0.0,
        0,
        (),
    ) and last.health.consecutive_failures == 0


PROOF = Proof((T1,), 1.0)
PASSED = round_of(answer(T1, address="192.0.2.2"))


def test_a_peer_that_never_answers_echoes_while_http_passes_is_given_up_after_its_strikes() -> None:
    missed = echoes(0, 1)
    unanswered = replace(HEALTHY, echoed=True, last_round=missed, echo_answered=False)
    watch, _, notes = fold(unanswered, PROOF, Observed(PASSED), at(101.0), PARAMS)
    assert (watch.echo_unanswered, watch.echo_off, notes) == (1, False, ())
    last = replace(unanswered, echo_unanswered=ECHO_STRIKES - 1)
    watch, _, notes = fold(last, PROOF, Observed(PASSED), at(101.0), PARAMS)
    assert watch.echo_off and len(notes) == 1 and notes[0].warning and "filtered" in notes[0].text
    for innocent in (
        replace(unanswered, echoed=False),  # the round before was no echo
        replace(unanswered, last_round=echoes(1, 1)),  # it was answered
        replace(unanswered, echo_answered=True),  # the peer has answered echoes before
    ):
        watch, _, _ = fold(innocent, PROOF, Observed(PASSED), at(101.0), PARAMS)
        assert watch.echo_unanswered == 0 and not watch.echo_off


def test_which_peer_heartbeats_go_to_after_a_proof() -> None:
    answered = replace(HEALTHY, echo_peer="192.0.2.9", echo_answered=True)
    watch, _, _ = fold(answered, PROOF, Observed(PASSED), at(101.0), PARAMS)
    assert (watch.echo_peer, watch.echo_answered) == ("192.0.2.9", True)  # one that answers is kept
    silent = replace(HEALTHY, echo_peer="192.0.2.9", echo_answered=False)
    watch, _, _ = fold(silent, PROOF, Observed(PASSED), at(101.0), PARAMS)
    assert (watch.echo_peer, watch.echo_answered) == ("192.0.2.2", False)
    none = replace(HEALTHY, echo_peer=None, echo_answered=True)
    watch, _, _ = fold(none, PROOF, Observed(PASSED), at(101.0), PARAMS)
    assert (watch.echo_peer, watch.echo_answered) == ("192.0.2.2", False)
    failed6 = replace(answer(T2, False, address="192.0.2.3"), ipv6="2001:db8::3")
    watch, _, _ = fold(
        Watch(), Proof((T1, T2), 1.0), Observed(round_of(PASSED.results[0], failed6)), at(101.0), PARAMS
    )
    assert watch.echo_peer6 is None  # only a target that answered tells an IPv6 peer


# Answer times that tell each timeout apart: the peer's echoes, each resolver name's, each target's.
RTT = {
    ICMP: RttEstimate(0.4),
    "dns://one.example": RttEstimate(0.3),
    "dns://two.example": RttEstimate(0.5),
    T1.url: RttEstimate(0.7),
    T2.url: RttEstimate(0.6),
}
QUIET = replace(HEALTHY, rtt=RTT, dns_checked_at=101.0, http_checked_at=101.0)  # nothing due at 101
# A first step planned at 101, and what the plan wrote down: (step, checked field, its value).
PLAN_EXACT_CASES: list[tuple[str, Watch, Step]] = [
    ("heartbeat", QUIET, Echo(PEER, 1, 0.4, Purpose.HEARTBEAT)),
    (
        "DNS check of the kept-alive target's name",
        replace(QUIET, http_target=T2, dns_checked_at=None),
        DnsCheck("two.example", 0.5),
    ),
    (
        "DNS check of the first target's name",
        replace(QUIET, http_target=None, dns_checked_at=None),
        DnsCheck("one.example", 0.3),
    ),
    (
        "kept-alive check",
        replace(QUIET, http_target=T2, http_address="192.0.2.2", http_checked_at=None),
        HttpCheck(T2, "192.0.2.2", 0.6),
    ),
    (
        "in doubt from echoes: a burst",
        replace(QUIET, echoed=True, health=DOUBT),
        Echo(PEER, 8, 0.4, Purpose.CONFIRM),
    ),
]


@pytest.mark.parametrize(
    ("watch", "step"), [c[1:] for c in PLAN_EXACT_CASES], ids=[c[0] for c in PLAN_EXACT_CASES]
)
def test_the_first_step_of_a_round_exactly(watch: Watch, step: Step) -> None:
    planned, first = plan(watch, at(101.0), PARAMS)
    assert first == step
    assert planned.probed_at == 101.0
    if isinstance(step, DnsCheck):
        assert planned.dns_checked_at == 101.0 and planned.http_checked_at == watch.http_checked_at
    if isinstance(step, HttpCheck):
        assert planned.http_checked_at == 101.0 and planned.dns_checked_at == watch.dns_checked_at


def test_the_users_traffic_going_silent_counts_as_a_missed_heartbeat_and_asks_a_burst() -> None:
    once = replace(PARAMS, policy=replace(PARAMS.policy, fail_count=1))
    planned, first = plan(QUIET, at(101.0, evidence=Evidence(silent=True)), once)
    assert first == Echo(PEER, 8, 0.4, Purpose.CONFIRM)
    assert (planned.echoed, planned.doubt_since) == (True, 101.0)
    assert (planned.health.health, planned.health.changed_at) == (Health.DOWN, 101.0)


def test_a_standby_uplink_is_proved_at_its_own_pace() -> None:
    params = replace(PARAMS, standby_proof_interval=2 * PARAMS.proof_interval)
    now = 100.0 + PARAMS.proof_interval
    assert isinstance(plan(QUIET, at(now), params)[1], Proof)
    assert plan(QUIET, at(now, standby=True), params)[1] == Echo(PEER, 1, 0.4, Purpose.HEARTBEAT)
    assert isinstance(plan(QUIET, at(100.0 + 2 * PARAMS.proof_interval, standby=True), params)[1], Proof)


def test_every_step_counts_its_timeout_payload_and_failure() -> None:
    before = replace(HEALTHY, probe_payload=100, failed_rounds=2)
    missed, answered = echoes(0, 1), echoes(1, 1)
    watch, _, _ = fold(before, HEARTBEAT, Observed(missed), at(101.0), PARAMS)
    assert (watch.round_timeout, watch.probe_payload, watch.failed_rounds) == (0.5, 100 + missed.payload, 3)
    watch, _, _ = fold(before, HEARTBEAT, Observed(answered), at(101.0), PARAMS)
    assert (watch.probe_payload, watch.failed_rounds) == (100 + answered.payload, 2)


def test_answer_times_are_learnt_only_on_a_link_that_is_not_loaded() -> None:
    quiet, _, _ = fold(HEALTHY, HEARTBEAT, Observed(echoes(1, 1)), at(101.0), PARAMS)
    assert quiet.rtt[ICMP].srtt is not None
    loaded, _, _ = fold(HEALTHY, HEARTBEAT, Observed(echoes(1, 1), BUSY, 0.5), at(101.0), PARAMS)
    assert ICMP not in loaded.rtt


# Bytes received during a 0.5 s step (0.2 s elapsed), against the rate that makes the device busy.
LOADED_CASES: list[tuple[str, int, int, bool]] = [
    ("exactly the rate over the step's timeout", 1000, 500, True),
    ("just below it", 1000, 499, False),
    ("the lowest rate", 1, 1, True),
    ("off", 0, 0, False),
]


@pytest.mark.parametrize(
    ("rate", "received", "busy"), [c[1:] for c in LOADED_CASES], ids=[c[0] for c in LOADED_CASES]
)
def test_a_step_nothing_answered_on_a_busy_device(rate: int, received: int, busy: bool) -> None:
    params = replace(PARAMS, busy_rx_rate=rate)
    watch, _, _ = fold(HEALTHY, HEARTBEAT, Observed(echoes(0, 1), received, 0.2), at(101.0), params)
    assert (watch.busy_rx is not None) == busy


def test_meeting_a_new_peer_notes_whether_it_answers_and_goes_on_to_ipv6() -> None:
    meet = Echo(PEER, 1, 0.5, Purpose.MEET)
    new = replace(V6, echo_answered=False)
    watch, step, notes = fold(new, meet, Observed(echoes(1, 1)), at(101.0, ipv6=True), PARAMS)
    assert watch.echo_answered and notes == ()
    assert step == Echo(PEER6, 1, echo_timeout(watch, PEER6, PARAMS), Purpose.IPV6)
    watch, step, _ = fold(replace(new, echo_answered=True), meet, Observed(echoes(0, 1)), at(101.0), PARAMS)
    assert (watch.echo_answered, step) == (False, None)


PASSED_NEW = round_of(answer(T1, address="192.0.2.2"))


def test_a_passing_proof_meets_a_new_peer_with_one_echo() -> None:
    fresh = replace(HEALTHY, echo_peer=None, echo_answered=False, echoed=True)
    watch, step, notes = fold(fresh, PROOF, Observed(PASSED_NEW), at(101.0), PARAMS)
    assert step == Echo("192.0.2.2", 1, echo_timeout(watch, "192.0.2.2", PARAMS), Purpose.MEET)
    assert (watch.echoed, watch.last_round, notes) == (False, PASSED_NEW, ())
    for no_meeting in (replace(PARAMS, heartbeat=False),):
        assert fold(fresh, PROOF, Observed(PASSED_NEW), at(101.0), no_meeting)[1] is None
    off = replace(fresh, echo_off=True)
    assert fold(off, PROOF, Observed(PASSED_NEW), at(101.0), PARAMS)[1] is None


def test_a_passing_proof_on_a_known_peer_goes_on_to_ipv6_unless_loaded() -> None:
    watch, step, _ = fold(V6, PROOF, Observed(PASSED), at(101.0, ipv6=True), PARAMS)
    assert step == Echo(PEER6, 1, echo_timeout(watch, PEER6, PARAMS), Purpose.IPV6)
    loaded, step, notes = fold(V6, PROOF, Observed(PASSED, BUSY, 0.5), at(101.0, ipv6=True), PARAMS)
    assert (step, notes, loaded.health.samples) == (None, (), ())


def test_a_peer_given_up_is_said_once_in_these_words() -> None:
    last = replace(
        HEALTHY, echoed=True, last_round=echoes(0, 1), echo_answered=False, echo_unanswered=ECHO_STRIKES - 1
    )
    _, _, notes = fold(last, PROOF, Observed(PASSED), at(101.0), PARAMS)
    assert notes == (
        Note(
            "the probe targets never answered an ICMP echo (filtered?); probing by HTTP only, which costs more "
            "traffic (see NMFAILOVER_HEARTBEAT)",
            warning=True,
        ),
    )


PROOF_TIMEOUT_CASES: list[tuple[str, UplinkHealth, bool, bool]] = [
    # (health, went silent, waits the full ceiling)
    ("healthy: the targets' own", UP, False, False),
    ("in doubt: the ceiling", DOUBT, False, True),
    ("in doubt but gone silent: the targets' own", DOUBT, True, False),
    (
        "down: the targets' own",
        UplinkHealth(Health.DOWN, consecutive_failures=1, changed_at=0.0),
        False,
        False,
    ),
    ("twice in doubt: the ceiling", replace(DOUBT, consecutive_failures=2), False, True),
]


@pytest.mark.parametrize(
    ("health", "silent", "ceiling"),
    [c[1:] for c in PROOF_TIMEOUT_CASES],
    ids=[c[0] for c in PROOF_TIMEOUT_CASES],
)
def test_proof_timeout(health: UplinkHealth, silent: bool, ceiling: bool) -> None:
    watch = replace(QUIET, health=health, went_silent=silent)
    _, proof = plan(watch, at(101.0, proof_due=True), PARAMS)
    assert isinstance(proof, Proof)
    own = max(RTT[t.url].srtt or 0.0 for t in proof.targets)
    assert proof.timeout == (PARAMS.timeout_ceiling if ceiling else own)


def test_a_check_nothing_answered_gets_a_burst_only_from_a_peer_known_to_answer() -> None:
    watch = replace(QUIET, echo_answered=True)
    failed = dns_result(False)
    _, step, _ = fold(watch, CHECK, Observed(failed), at(101.0), PARAMS)
    assert step == Echo(PEER, PARAMS.echo_burst, 0.4, Purpose.EXCUSE, Unanswered(CHECK, failed))
    for no_burst, params in (
        (replace(watch, echo_answered=False), PARAMS),
        (watch, replace(PARAMS, heartbeat=False)),
    ):
        assert fold(no_burst, CHECK, Observed(failed), at(101.0), params)[1] is None
    nothing = RoundResult(False, (), 1)
    assert fold(watch, CHECK, Observed(nothing), at(101.0), PARAMS)[1] is None


def proof_then_burst(answered: int, sent: int) -> tuple[Watch, tuple[Note, ...], RoundResult]:
    failed = round_of(answer(T1, False, unanswered=True))
    watch, burst, _ = fold(QUIET, PROOF, Observed(failed), at(101.0), PARAMS)
    assert isinstance(burst, Echo) and burst.purpose is Purpose.EXCUSE
    watch, step, notes = fold(watch, burst, Observed(echoes(answered, sent)), at(101.1), PARAMS)
    assert step is None
    return watch, tuple(notes), failed


def test_a_proof_nothing_answered_on_a_clean_path_is_http_s_own_failure() -> None:
    watch, notes, failed = proof_then_burst(2, 2)
    assert notes == (Note(f"failing (1/2): {failed.summary}, while {PEER} answers every echo", warning=True),)
    assert watch.health.consecutive_failures == 1


def test_a_proof_nothing_answered_on_a_lossy_path_is_excused() -> None:
    for answered, sent in ((7, 8), (1, 1)):
        watch, notes, failed = proof_then_burst(answered, sent)
        assert watch.excused == 1 and watch.health.consecutive_failures == 0
        assert notes == (
            Note(
                f"lossy, not failed: {failed.summary}, yet {PEER} answers {answered}/{sent} echoes "
                f"(1/{PARAMS.loss_excuses})"
            ),
        )


def link(ifindex: int = 7, *, tx: int = 100, rx: int = 100) -> LinkStats:
    return LinkStats(ifindex, tx_packets=tx, rx_packets=rx)


BEFORE = TrafficCounters(10.0, link=link(), syn_sent=2, dns_sent=3, resets=10, dns_unanswered=2, dns_failed=2)
# (after, window: the older snapshot the pace is judged over, what the traffic showed)
READ_CASES: list[tuple[str, TrafficCounters, TrafficCounters, Evidence]] = [
    (
        "one attempt a second: active",
        replace(BEFORE, at=20.0, syn_sent=8, dns_sent=7),
        replace(BEFORE, at=10.0),
        Evidence(active=True),
    ),
    (
        "just under it: not",
        replace(BEFORE, at=20.0, syn_sent=7, dns_sent=7),
        replace(BEFORE, at=10.0),
        Evidence(),
    ),
    (
        "half a second: judged over a second",
        replace(BEFORE, at=10.5, syn_sent=3),
        replace(BEFORE, at=10.0),
        Evidence(active=True),
    ),
    (
        "sending, nothing back for half a second: silent",
        replace(BEFORE, at=10.5, link=link(tx=104)),
        BEFORE,
        Evidence(silent=True),
    ),
    (
        "the same on a new device: nothing to compare",
        replace(BEFORE, at=10.5, link=link(8, tx=104)),
        BEFORE,
        Evidence(),
    ),
    ("one reset among many old ones", replace(BEFORE, at=11.0, resets=11), BEFORE, Evidence()),
    ("no new failed lookup", replace(BEFORE, at=11.0), BEFORE, Evidence()),
]


@pytest.mark.parametrize(
    ("after", "window", "evidence"), [c[1:] for c in READ_CASES], ids=[c[0] for c in READ_CASES]
)
def test_read_traffic_at_its_bounds(
    after: TrafficCounters, window: TrafficCounters, evidence: Evidence
) -> None:
    assert read_traffic(BEFORE, after, window) == evidence


def test_dead_resolvers_are_the_uplinks_failure_when_moving_dns_is_off() -> None:
    off = replace(PARAMS, dns_failover=False)
    watch, step, notes = fold(HEALTHY, CHECK, Observed(SERVFAIL), at(101.0), off)
    assert (step, watch.health.consecutive_failures, len(watch.health.samples)) == (None, 1, 1)
    assert notes == (Note(f"failing (1/2): {SERVFAIL.summary}", warning=True),)
    # The same after a burst the path answered in full: the resolvers' failure, not HTTP's.
    failed = dns_result(False)
    watch, burst, _ = fold(QUIET, CHECK, Observed(failed), at(101.0), off)
    assert isinstance(burst, Echo)
    watch, _, notes = fold(watch, burst, Observed(echoes(8, 8)), at(101.1), off)
    assert notes == (Note(f"failing (1/2): {failed.summary}", warning=True),)


def test_a_burst_behind_a_full_queue_records_no_answers() -> None:
    failed = dns_result(False)
    for answered, sent in ((0, 8), (1, 20)):
        watch, burst, _ = fold(QUIET, CHECK, Observed(failed), at(101.0), PARAMS)
        assert isinstance(burst, Echo)
        watch, _, _ = fold(watch, burst, Observed(echoes(answered, sent), BUSY, 0.5), at(101.1), PARAMS)
        assert watch.health.consecutive_failures == 1 and watch.health.samples == ()
    watch, burst, _ = fold(
        QUIET, PROOF, Observed(round_of(answer(T1, False, unanswered=True))), at(101.0), PARAMS
    )
    assert isinstance(burst, Echo)
    watch, _, _ = fold(watch, burst, Observed(echoes(2, 2), BUSY, 0.5), at(101.1), PARAMS)
    assert watch.health.consecutive_failures == 1 and watch.health.samples == ()


def test_ipv6_verdicts_take_their_time_and_a_missing_device() -> None:
    step = Echo(PEER6, 1, 0.5, Purpose.IPV6)
    up = replace(V6, health6=UP6)
    gone = round_of(answer(echo_target(PEER6), False, Reason.NO_DEVICE))
    watch, _, _ = fold(up, step, Observed(gone), at(103.0, ipv6=True), PARAMS)
    assert (watch.health6.health, watch.health6.changed_at) == (Health.DOWN, 103.0)


def test_echo_timeouts_of_the_peers_own_answer_times() -> None:
    rtt = {
        f"icmp://{PEER6}": RttEstimate(0.45),
        "icmp://192.0.2.2": RttEstimate(0.35),
        T1.url: RttEstimate(0.7),
    }
    watch, step, _ = fold(
        replace(V6, rtt=rtt), HEARTBEAT, Observed(echoes(1, 1)), at(101.0, ipv6=True), PARAMS
    )
    assert isinstance(step, Echo) and step.purpose is Purpose.IPV6 and step.timeout == 0.45
    fresh = replace(HEALTHY, echo_peer=None, echo_answered=False, rtt=rtt)
    _, meet, _ = fold(fresh, PROOF, Observed(PASSED_NEW), at(101.0), PARAMS)
    assert isinstance(meet, Echo) and meet.purpose is Purpose.MEET and meet.timeout == 0.35


def test_answer_times_are_smoothed_into_what_was_learnt() -> None:
    learnt = replace(HEALTHY, rtt={ICMP: RttEstimate(0.4, 0.0)})
    watch, _, _ = fold(learnt, HEARTBEAT, Observed(echoes(1, 1)), at(101.0), PARAMS)
    latency = echoes(1, 1).results[0].latency
    assert watch.rtt[ICMP].srtt == 0.875 * 0.4 + 0.125 * latency


def test_a_proof_nothing_answered_is_the_last_round_while_its_burst_judges_it() -> None:
    failed = round_of(answer(T1, False, unanswered=True))
    watch, burst, _ = fold(QUIET, PROOF, Observed(failed), at(101.0), PARAMS)
    assert isinstance(burst, Echo) and watch.last_round == failed


def test_no_ipv6_echo_while_the_uplink_is_in_doubt_or_down() -> None:
    _, step, _ = fold(V6, HEARTBEAT, Observed(echoes(0, 1)), at(101.0, ipv6=True), PARAMS)
    assert step is None


def test_a_proof_while_no_peer_is_known_even_if_proved() -> None:
    assert isinstance(plan(replace(QUIET, echo_peer=None), at(101.0), PARAMS)[1], Proof)


def test_lean_proofs_ask_the_targets_in_rotation() -> None:
    t3 = replace(T2, url="http://three.example/generate_204")
    params = replace(PARAMS, targets=(T1, T2, t3), quorum=2)
    watch, asked = QUIET, []
    for now in (401.0, 702.0, 1003.0):
        watch, proof = plan(watch, at(now), params)
        assert isinstance(proof, Proof)
        asked.append(proof.targets)
        watch = replace(watch, proved_at=now)
    assert asked == [(T2, t3), (t3, T1), (T1, T2)]


def test_a_doubt_is_confirmed_as_soon_as_the_round_that_raised_it_timed_out() -> None:
    doubt = replace(QUIET, health=DOUBT, round_timeout=0.3)
    assert interval(doubt, at(101.0), PARAMS) == 0.3
