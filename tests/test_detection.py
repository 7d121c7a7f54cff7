"""The pure detection core, by tables: a state and an observation in, the next step and state out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nmfailover.config import load_settings
from nmfailover.detection import (
    ECHO_STRIKES,
    LOSS_BURST_GROWTH,
    MAX_LOSS_BURSTS,
    DetectionParams,
    DnsCheck,
    DnsHealth,
    Echo,
    Evidence,
    HttpCheck,
    Observed,
    Proof,
    Purpose,
    Situation,
    Step,
    Watch,
    fold,
    interval,
    loss_score,
    plan,
    read_traffic,
)
from nmfailover.engine.core import detection_params
from nmfailover.policy import Health, PolicyParams, UplinkHealth
from nmfailover.probe import ProbeResult, Reason, RoundResult, Target
from nmfailover.traffic import LinkStats, TrafficCounters

T1 = Target("http://one.example/generate_204", 204)
T2 = Target("http://two.example/generate_204", 204)
PEER = "203.0.113.10"
POLICY = PolicyParams(fail_count=2, rise_count=3, failback_hold_down=10)
# The defaults of the settings, as the daemon runs with them.
SETTINGS = load_settings(
    {
        "NMFAILOVER_UPLINKS": "a,b",
        "NMFAILOVER_ENV_FILE": "/dev/null",
        "NMFAILOVER_PROBE_URLS": f"{T1.url},{T2.url}",
    }
)
PARAMS = detection_params(SETTINGS, POLICY, echoes=True, dns_checks=True, http_checks=True)
PROOF_DUE = 100.0 + PARAMS.proof_interval
UP = UplinkHealth(Health.UP, changed_at=0.0)
DOUBT = UplinkHealth(Health.UP, consecutive_failures=1, changed_at=0.0)
# A steadily healthy uplink on heartbeats: proved at 100, its peer answers echoes, both layers just checked.
HEALTHY = Watch(
    health=UP,
    proved_at=100.0,
    echo_peer=PEER,
    echo_answered=True,
    dns_checked_at=100.0,
    http_checked_at=100.0,
    http_target=T1,
    http_address=PEER,
)


def answer(
    target: Target = T1,
    ok: bool = True,
    reason: Reason | None = None,
    *,
    unanswered: bool = False,
    sent: int = 1,
    answered: int | None = None,
    address: str = PEER,
) -> ProbeResult:
    reason = reason or (Reason.OK if ok else Reason.TIMEOUT)
    return ProbeResult(
        target, ok, reason, 0.02, str(reason), 10, unanswered, address, sent=sent, answered=answered
    )


def round_of(*answers: ProbeResult) -> RoundResult:
    return RoundResult(any(a.ok for a in answers), answers, 1)


def echoes(answered: int, sent: int) -> RoundResult:
    target = Target(f"icmp://{PEER}", 0)
    ok = answered > 0
    return round_of(answer(target, ok, unanswered=not ok, sent=sent, answered=answered))


def at(now: float, **kw: object) -> Situation:
    return Situation(now, **kw)  # type: ignore[arg-type]


# -- planning ---------------------------------------------------------------------------------------

PLAN_CASES: list[tuple[str, Watch, Situation, type[Step], Purpose | None]] = [
    ("never proved: a proof", Watch(), at(100.5), Proof, None),
    ("healthy: one echo", HEALTHY, at(100.5), Echo, Purpose.HEARTBEAT),
    ("an event asked for a proof", HEALTHY, at(100.5, proof_due=True), Proof, None),
    ("down: proofs only", replace(HEALTHY, health=UplinkHealth(Health.DOWN)), at(100.5), Proof, None),
    ("doubt from a heartbeat: a burst", replace(HEALTHY, health=DOUBT, echoed=True), at(100.5), Echo, Purpose.CONFIRM),
    ("doubt from a proof: a proof", replace(HEALTHY, health=DOUBT, echoed=False), at(100.5), Proof, None),
    ("the user's traffic went silent: a burst", HEALTHY, at(100.5, evidence=Evidence(silent=True)), Echo, Purpose.CONFIRM),
    ("the user's connections refused: a proof", HEALTHY, at(100.5, evidence=Evidence(refused=True)), Proof, None),
    ("the user's lookups fail: a DNS check", HEALTHY, at(100.5, evidence=Evidence(dns_failing=True)), DnsCheck, None),
    ("proof interval over: a proof", HEALTHY, at(PROOF_DUE), Proof, None),
    ("busy: an echo even with a proof due", replace(HEALTHY, busy_rx=10**6), at(PROOF_DUE), Echo, Purpose.HEARTBEAT),
    ("standby: its proof interval", HEALTHY, at(PROOF_DUE - 1, standby=True), Echo, Purpose.HEARTBEAT),
    ("standby: no cheap layers", HEALTHY, at(130.0, standby=True), Echo, Purpose.HEARTBEAT),
    ("DNS check due", HEALTHY, at(115.0), DnsCheck, None),
    ("no resolvers of its own: no DNS check", replace(HEALTHY, http_target=None), at(115.0, resolvers=False), Echo, Purpose.HEARTBEAT),
    ("DNS in doubt: checked again", replace(HEALTHY, dns=DnsHealth(failures=1)), at(100.5), DnsCheck, None),
    ("HTTP check due", replace(HEALTHY, dns_checked_at=110.0), at(115.0), HttpCheck, None),
    ("no address for HTTP yet", replace(HEALTHY, dns_checked_at=110.0, http_address=None), at(115.0), Echo, Purpose.HEARTBEAT),
    ("user traffic: the cheap layers faster", HEALTHY, at(103.0, evidence=Evidence(active=True)), DnsCheck, None),
    ("idle: not yet", HEALTHY, at(103.0), Echo, Purpose.HEARTBEAT),
    ("peer filters ICMP: proofs", replace(HEALTHY, echo_off=True), at(100.5), Proof, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("watch", "situation", "kind", "purpose"), [c[1:] for c in PLAN_CASES], ids=[c[0] for c in PLAN_CASES]
)
def test_plan(watch: Watch, situation: Situation, kind: type[Step], purpose: Purpose | None) -> None:
    _, step = plan(watch, situation, PARAMS)
    assert isinstance(step, kind), step
    if purpose is not None:
        assert isinstance(step, Echo) and step.purpose is purpose and step.peer == PEER
        assert step.count == (PARAMS.echo_burst if purpose is Purpose.CONFIRM else 1)


def test_cheap_layers_are_off_without_a_checker() -> None:
    params = replace(PARAMS, dns_checks=False, http_checks=False)
    assert isinstance(plan(HEALTHY, at(130.0), params)[1], Echo)


def test_a_lean_proof_rotates_through_the_targets_and_a_doubtful_one_asks_all() -> None:
    healthy = replace(HEALTHY, proved_at=0.0)
    first = plan(healthy, at(PARAMS.proof_interval), PARAMS)
    second = plan(first[0], at(2 * PARAMS.proof_interval), PARAMS)
    assert isinstance(first[1], Proof) and isinstance(second[1], Proof)
    assert {first[1].targets, second[1].targets} == {(T1,), (T2,)}
    doubtful = plan(replace(healthy, health=DOUBT), at(PARAMS.proof_interval), PARAMS)[1]
    assert isinstance(doubtful, Proof) and doubtful.targets == (T1, T2)
    assert doubtful.timeout == PARAMS.timeout_ceiling  # a doubt is confirmed with full patience


def test_interval_follows_role_and_doubt() -> None:
    assert interval(HEALTHY, at(0), PARAMS) == PARAMS.active_interval
    assert interval(HEALTHY, at(0, standby=True), PARAMS) == PARAMS.standby_interval
    assert interval(replace(HEALTHY, health=DOUBT), at(0), PARAMS) == PARAMS.suspect_interval
    assert interval(replace(HEALTHY, dns=DnsHealth(failures=1)), at(0), PARAMS) == PARAMS.suspect_interval
    assert interval(replace(HEALTHY, dns=DnsHealth(failures=2, dead=True)), at(0), PARAMS) == 1.0


# -- the path: heartbeats, bursts and the loss test ----------------------------------------------------


def run_bursts(watch: Watch, answered: float, limit: int = 50) -> tuple[Watch, int]:
    """Feed bursts answered `answered` in 8 (of whatever size detection asks) until it stops asking for
    more; how many it took."""
    step: Step | None = Echo(PEER, PARAMS.echo_burst, 0.25, Purpose.CONFIRM)
    bursts = 0
    while isinstance(step, Echo) and step.purpose is Purpose.CONFIRM and bursts < limit:
        got = echoes(round(answered * step.count / 8), step.count)
        watch, step, _ = fold(watch, step, Observed(got), at(101.0), PARAMS)
        bursts += 1
    return watch, bursts


def test_an_undecided_loss_test_asks_larger_bursts() -> None:
    # Near the heavy share a verdict needs dozens of echoes: after the first burst they come in larger ones.
    first = Echo(PEER, PARAMS.echo_burst, 0.25, Purpose.CONFIRM)
    doubt = replace(HEALTHY, health=DOUBT, echoed=True)
    _, step, _ = fold(doubt, first, Observed(echoes(3, PARAMS.echo_burst)), at(101.0), PARAMS)
    assert isinstance(step, Echo) and step.purpose is Purpose.CONFIRM
    assert step.count == PARAMS.echo_burst * LOSS_BURST_GROWTH
    watch, step, _ = fold(
        HEALTHY, DnsCheck("one.example", 0.25), Observed(dns_result(False)), at(101.0), PARAMS
    )
    _, step, _ = then_burst(watch, step, 2, 101.3)  # the excuse burst opens the test, undecided
    assert isinstance(step, Echo) and step.count == PARAMS.echo_burst * LOSS_BURST_GROWTH


def test_a_missed_heartbeat_is_one_failure_and_opens_the_loss_test() -> None:
    watch, step, notes = fold(
        HEALTHY, Echo(PEER, 1, 0.25, Purpose.HEARTBEAT), Observed(echoes(0, 1)), at(101.0), PARAMS
    )
    assert watch.health.consecutive_failures == 1 and watch.health.health is Health.UP
    assert watch.loss_score > 0 and watch.echoed and watch.doubt_since == 101.0
    assert notes and notes[0].warning and step is None


def test_a_silent_burst_after_a_missed_heartbeat_is_down() -> None:
    watch, bursts = run_bursts(replace(HEALTHY, health=DOUBT, echoed=True), answered=0)
    assert bursts == 1 and watch.health.health is Health.DOWN


LOSS_CASES = [
    # (answered of 8 per burst, verdict, at most this many bursts)
    (8, Health.UP, 1),  # no loss
    (6, Health.UP, 2),  # 25 % lost: tolerated
    (1, Health.DOWN, 2),  # ~88 % lost (60 % each way)
    (3, Health.DOWN, 3),  # ~63 % lost (60 % one way): 56 echoes, the last 48 in two larger bursts
]


@pytest.mark.parametrize(("answered", "verdict", "most"), LOSS_CASES)
def test_bursts_tell_heavy_loss_from_tolerated(answered: int, verdict: Health, most: int) -> None:
    watch, bursts = run_bursts(replace(HEALTHY, health=DOUBT, echoed=True, loss_score=0.76), answered)
    assert watch.health.health is verdict and bursts <= most, (watch.health, bursts)
    assert watch.loss_score == 0.0  # a verdict closes the test


def test_the_loss_test_weighs_answers_against_losses() -> None:
    assert loss_score(0.0, 8, 8, PARAMS) < 0 < loss_score(0.0, 0, 8, PARAMS)
    # 15 % each way (72 % answered) drifts down, 60 % one way (40 % answered) up.
    assert loss_score(0.0, 72, 100, PARAMS) < 0 < loss_score(0.0, 40, 100, PARAMS)


def test_an_undecided_loss_test_ends_not_proven_lossy() -> None:
    # Close to the point between tolerated and heavy (13 of 24 answered, 46 % lost): no verdict within its
    # most bursts, so it ends as healthy.
    watch, bursts = run_bursts(replace(HEALTHY, health=DOUBT, echoed=True), answered=13 / 3)
    assert bursts == MAX_LOSS_BURSTS and watch.health.consecutive_failures == 0


# -- proofs -------------------------------------------------------------------------------------------


def fold_proof(watch: Watch, result: RoundResult, **kw: object) -> tuple[Watch, Step | None, str]:
    new, step, notes = fold(watch, Proof((T1,), 1.0), Observed(result), at(101.0, **kw), PARAMS)
    return new, step, " ".join(n.text for n in notes)


def test_a_passing_proof_chooses_the_peer_and_meets_it() -> None:
    watch, step, _ = fold_proof(Watch(), round_of(answer(address="203.0.113.20")))
    assert (
        watch.echo_peer == "203.0.113.20"
        and watch.proved_at == 101.0
        and watch.http_address == "203.0.113.20"
    )
    assert isinstance(step, Echo) and step.purpose is Purpose.MEET


def test_a_proof_that_only_timed_out_asks_a_burst_first() -> None:
    watch, step, _ = fold_proof(HEALTHY, round_of(answer(ok=False, unanswered=True)))
    assert isinstance(step, Echo) and step.purpose is Purpose.EXCUSE
    assert watch.health == HEALTHY.health  # no verdict before the burst


EXCUSE_CASES = [
    # (burst answers of 8, failures after, excused after, why)
    (0, 2, 0, "the path is silent too: a cut, the step missed and the burst confirming it"),
    (8, 1, 0, "not one echo lost: HTTP itself does not answer"),
    (5, 0, 1, "some lost: loss, excused"),
]


@pytest.mark.parametrize(("answers", "failures", "excused", "why"), EXCUSE_CASES)
def test_the_excuse_burst_tells_loss_from_failure(
    answers: int, failures: int, excused: int, why: str
) -> None:
    failed = round_of(answer(ok=False, unanswered=True))
    watch, step, _ = fold_proof(HEALTHY, failed)
    assert isinstance(step, Echo)
    watch, step, _ = fold(watch, step, Observed(echoes(answers, 8)), at(101.3), PARAMS)
    assert (watch.health.consecutive_failures, watch.excused) == (failures, excused), why


def test_excuses_run_out() -> None:
    watch = replace(HEALTHY, excused=PARAMS.loss_excuses)
    watch, step, _ = fold_proof(watch, round_of(answer(ok=False, unanswered=True)))
    assert step is None and watch.health.consecutive_failures == 1


def test_a_proof_failing_only_at_dns_is_a_dns_fault_not_a_failure() -> None:
    result = round_of(answer(ok=False, reason=Reason.DNS))  # SERVFAIL: an answer, nothing to excuse
    watch, _, text = fold_proof(HEALTHY, result)
    assert watch.health.consecutive_failures == 0 and watch.dns.failures == 1 and "resolvers" in text
    off, _, _ = fold(
        HEALTHY, Proof((T1,), 1.0), Observed(result), at(101.0), replace(PARAMS, dns_failover=False)
    )
    assert off.health.consecutive_failures == 1


def test_a_portal_is_a_portal() -> None:
    portal = round_of(answer(ok=False, reason=Reason.UNEXPECTED))
    watch, _, _ = fold_proof(replace(HEALTHY, health=DOUBT), portal)
    assert watch.health.health is Health.PORTAL


def test_a_busy_link_whose_proof_timed_out_is_slow_not_failed() -> None:
    timed_out = round_of(answer(ok=False, unanswered=True))
    watch, step, text = fold(
        HEALTHY, Proof((T1,), 1.0), Observed(timed_out, received=10**6, elapsed=1.0), at(101.0), PARAMS
    )
    assert (
        watch.busy_rx == 10**6 and watch.health == HEALTHY.health and step is None and "slow" in text[0].text
    )


def test_a_peer_that_never_answers_echoes_is_given_up_after_strikes() -> None:
    watch = replace(HEALTHY, echo_answered=False, echoed=True, last_round=echoes(0, 1))
    for _ in range(ECHO_STRIKES):
        watch = replace(watch, echoed=True, last_round=echoes(0, 1))
        watch, _, text = fold_proof(watch, round_of(answer()))
    assert watch.echo_off and "filtered" in text


# -- the cheap layers ---------------------------------------------------------------------------------


def dns_result(ok: bool) -> RoundResult:
    target = Target("dns://one.example", 0)
    return round_of(answer(target, ok, None if ok else Reason.DNS, unanswered=not ok))


def then_burst(
    watch: Watch, step: Step | None, answered: int, now: float, params: DetectionParams = PARAMS
) -> tuple[Watch, Step | None, str]:
    """Answer the excuse burst a step nothing answered called for, with `answered` echoes of the burst."""
    assert isinstance(step, Echo) and step.purpose is Purpose.EXCUSE, step
    watch, step, notes = fold(watch, step, Observed(echoes(answered, step.count)), at(now), params)
    return watch, step, " ".join(n.text for n in notes)


def check_dns(watch: Watch, ok: bool, now: float, params: DetectionParams = PARAMS) -> Watch:
    """A DNS check; one that timed out is followed by its burst, which the path answers in full."""
    watch, step, _ = fold(watch, DnsCheck("one.example", 0.25), Observed(dns_result(ok)), at(now), params)
    if isinstance(step, Echo):
        watch, step, _ = then_burst(watch, step, PARAMS.echo_burst, now + 0.05, params)
    assert step is None
    return watch


def test_dead_resolvers_behind_a_live_path_are_a_dns_fault_and_come_back() -> None:
    watch = HEALTHY
    for now in (101.0, 101.5):
        watch = check_dns(watch, False, now)
    assert watch.dns.dead and watch.health.health is Health.UP and watch.health.consecutive_failures == 0
    for now in (120.0, 135.0, 150.0):
        watch = check_dns(watch, True, now)
    assert not watch.dns.dead


def test_dead_resolvers_are_a_failure_when_moving_dns_is_off() -> None:
    params = replace(PARAMS, dns_failover=False)
    watch = HEALTHY
    for now in (101.0, 101.5):
        watch = check_dns(watch, False, now, params)
    assert watch.health.health is Health.DOWN


def test_resolvers_are_not_judged_while_the_path_is_in_doubt() -> None:
    watch = replace(HEALTHY, health=DOUBT)
    for now in (101.0, 101.5):
        watch = check_dns(watch, False, now)
    assert not watch.dns.dead


def test_a_dns_check_nothing_answered_on_a_silent_path_is_a_path_failure() -> None:
    watch, step, _ = fold(
        HEALTHY, DnsCheck("one.example", 0.25), Observed(dns_result(False)), at(101.0), PARAMS
    )
    assert watch.dns == HEALTHY.dns  # no verdict on the resolvers before the burst
    watch, step, _ = then_burst(watch, step, 0, 101.3)
    # The check missed and the silent burst confirmed it: down, as a missed heartbeat and its burst.
    assert watch.health.health is Health.DOWN and watch.echoed and watch.dns.failures == 0


def test_a_refusing_resolver_needs_no_burst_and_known_dead_ones_no_more() -> None:
    servfail = round_of(answer(Target("dns://one.example", 0), False, Reason.DNS))
    watch, step, _ = fold(HEALTHY, DnsCheck("one.example", 0.25), Observed(servfail), at(101.0), PARAMS)
    assert step is None and watch.dns.failures == 1
    dead = replace(HEALTHY, dns=DnsHealth(failures=2, dead=True))
    _, step, _ = fold(dead, DnsCheck("one.example", 0.25), Observed(dns_result(False)), at(101.0), PARAMS)
    assert step is None


def test_a_proof_that_timed_out_at_dns_is_a_dns_fault_only_while_the_path_answers() -> None:
    timed_out = round_of(answer(ok=False, reason=Reason.DNS, unanswered=True))
    watch, step, _ = fold_proof(HEALTHY, timed_out)
    alive, _, text = then_burst(watch, step, PARAMS.echo_burst, 101.3)
    assert alive.dns.failures == 1 and alive.health.consecutive_failures == 0 and "resolvers" in text
    silent, _, _ = then_burst(watch, step, 0, 101.3)
    assert silent.dns.failures == 0 and silent.health.health is Health.DOWN


def test_a_failed_kept_alive_check_calls_a_proof_at_once() -> None:
    portal = round_of(answer(ok=False, reason=Reason.UNEXPECTED))
    watch, step, notes = fold(HEALTHY, HttpCheck(T1, PEER, 0.25), Observed(portal), at(115.0), PARAMS)
    assert isinstance(step, Proof) and notes and watch.health == HEALTHY.health
    passed, step, _ = fold(
        HEALTHY, HttpCheck(T1, PEER, 0.25), Observed(round_of(answer())), at(115.0), PARAMS
    )
    assert step is None


@pytest.mark.parametrize(
    ("answered", "next_step", "failures"),
    [(0, None, 2), (8, Proof, 0), (7, Proof, 0), (3, Echo, 0)],
    ids=[
        "silent: a cut (the check missed, the burst confirms)",
        "clean: HTTP's own",
        "tolerated loss: its proof",
        "undecided: the loss test",
    ],
)
def test_a_kept_alive_check_nothing_answered_asks_the_path_first(
    answered: int, next_step: type[Step] | None, failures: int
) -> None:
    hang = round_of(answer(ok=False, unanswered=True))
    watch, step, _ = fold(HEALTHY, HttpCheck(T1, PEER, 0.25), Observed(hang), at(115.0), PARAMS)
    watch, step, _ = then_burst(watch, step, answered, 115.3)
    assert (type(step) if step else None, watch.health.consecutive_failures) == (next_step, failures)


def test_ipv6_is_checked_after_the_verdict_when_due() -> None:
    watch = replace(HEALTHY, echo_peer6="2001:db8:ffff::10")
    _, step, _ = fold(
        watch, Echo(PEER, 1, 0.25, Purpose.HEARTBEAT), Observed(echoes(1, 1)), at(101.0, ipv6=True), PARAMS
    )
    assert isinstance(step, Echo) and step.purpose is Purpose.IPV6
    _, none, _ = fold(
        watch, Echo(PEER, 1, 0.25, Purpose.HEARTBEAT), Observed(echoes(1, 1)), at(101.0), PARAMS
    )
    assert none is None  # no IPv6 gateway


def test_params_refuse_a_tolerated_loss_above_the_heavy_one() -> None:
    with pytest.raises(ValueError, match="loss_tolerated"):
        replace(PARAMS, loss_tolerated=0.7)


# -- the user's own traffic ---------------------------------------------------------------------------

LINK = LinkStats(7, rx_bytes=0, tx_bytes=0, rx_packets=100, tx_packets=100)


def counters(at: float, link: LinkStats = LINK, **counts: int) -> TrafficCounters:
    return TrafficCounters(at, link=link, **counts)


TRAFFIC_CASES: list[tuple[str, TrafficCounters, Evidence]] = [
    ("nothing new", counters(11.0), Evidence()),
    ("a connection attempt unanswered", counters(11.0, syn_unanswered=1), Evidence(silent=True)),
    ("a connection attempt refused", counters(11.0, syn_refused=1), Evidence(refused=True)),
    ("two resets: servers closing", counters(11.0, resets=2), Evidence()),
    ("a burst of resets", counters(11.0, resets=3), Evidence(refused=True)),
    ("a lookup unanswered", counters(11.0, dns_unanswered=1), Evidence(dns_failing=True)),
    ("a lookup failed (SERVFAIL)", counters(11.0, dns_failed=1), Evidence(dns_failing=True)),
    ("sending, receiving nothing", counters(11.0, replace(LINK, tx_packets=104)), Evidence(silent=True)),
    ("sending and receiving", counters(11.0, replace(LINK, tx_packets=104, rx_packets=101)), Evidence()),
    ("too short to tell silence", counters(10.2, replace(LINK, tx_packets=104)), Evidence()),
    ("a new device: counters start again", counters(11.0, replace(LINK, ifindex=8, tx_packets=104, rx_packets=0)), Evidence()),
    ("the user's pace of new connections", counters(11.0, syn_sent=3, syn_answered=3, dns_sent=3, dns_answered=3), Evidence(active=True)),
    ("our own pace stays below it", counters(11.0, syn_sent=1, syn_answered=1, dns_sent=1, dns_answered=1), Evidence()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("after", "evidence"), [c[1:] for c in TRAFFIC_CASES], ids=[c[0] for c in TRAFFIC_CASES]
)
def test_read_traffic(after: TrafficCounters, evidence: Evidence) -> None:
    before = counters(10.0)
    assert read_traffic(before, after, window=counters(8.0)) == evidence


def test_the_users_silence_is_a_strike_confirmed_by_a_burst() -> None:
    watch, step = plan(HEALTHY, at(100.5, evidence=Evidence(silent=True)), PARAMS)
    assert isinstance(step, Echo) and step.purpose is Purpose.CONFIRM
    assert watch.health.consecutive_failures == 1  # so one silent burst makes it down
    watch, _, _ = fold(watch, step, Observed(echoes(0, 8)), at(100.8), PARAMS)
    assert watch.health.health is Health.DOWN


def test_a_passing_proof_counts_as_both_cheap_checks() -> None:
    stale = replace(HEALTHY, dns_checked_at=0.0, http_checked_at=0.0)
    proved, _, _ = fold_proof(stale, round_of(answer()))
    _, step = plan(proved, at(103.0), PARAMS)
    assert isinstance(step, Echo) and step.purpose is Purpose.HEARTBEAT


DNS_BURST_CASES = [
    # (burst answers of 8, DNS failures after, path failures after, next step, why)
    (8, 1, 0, None, "a clean path: the resolvers' fault"),
    (7, 0, 0, None, "tolerated loss: the query may have been lost, nothing judged"),
    (2, 0, 0, Echo, "heavy-looking loss: the loss test goes on"),
    (0, 0, 2, None, "a silent path: a cut, the check missed and the burst confirming it"),
]


@pytest.mark.parametrize(
    ("answers", "dns_failures", "failures", "next_step", "why"),
    DNS_BURST_CASES,
    ids=[c[-1] for c in DNS_BURST_CASES],
)
def test_a_lossy_path_is_no_dead_resolver(
    answers: int, dns_failures: int, failures: int, next_step: type[Step] | None, why: str
) -> None:
    watch, step, _ = fold(
        HEALTHY, DnsCheck("one.example", 0.25), Observed(dns_result(False)), at(101.0), PARAMS
    )
    watch, step, _ = then_burst(watch, step, answers, 101.3)
    assert (watch.dns.failures, watch.health.consecutive_failures) == (dns_failures, failures), why
    assert (type(step) if step else None) is next_step, why
    if isinstance(step, Echo):
        assert step.purpose is Purpose.CONFIRM and watch.loss_score > 0


def test_heavy_loss_behind_a_failed_check_is_found_by_the_loss_test() -> None:
    watch, step, _ = fold(
        HEALTHY, DnsCheck("one.example", 0.25), Observed(dns_result(False)), at(101.0), PARAMS
    )
    watch, step, text = then_burst(watch, step, 1, 101.3)
    now = 101.6
    while isinstance(step, Echo):
        watch, step, notes = fold(watch, step, Observed(echoes(2, 8)), at(now), PARAMS)
        text = " ".join(n.text for n in notes)
        now += 0.3
    assert watch.health.consecutive_failures == 1 and "heavy loss" in text and watch.dns.failures == 0
