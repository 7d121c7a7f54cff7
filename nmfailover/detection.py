"""Pure detection core: what to ask an uplink next, and what its answer means.

A round is a short conversation with this module: `plan` names the first step (an HTTP proof, an ICMP
heartbeat or burst, a DNS query to the uplink's own resolvers, a request on a kept-alive HTTP connection),
`fold` takes that step's answer and returns the new state and, where the answer needs a follow-up (an echo
burst to tell loss from failure, the proof a failed cheap check calls for), the next step. Observations and
time come in as arguments; nothing here reads a clock, a socket or a file, so every rule is tested by tables
(tests/test_detection.py). engine/probing.py is the loop around it that sends what a step asks for.

The layers and what covers each between proofs:
- the path: one ICMP echo per tick; a miss (or the user's own traffic going silent) is confirmed by bursts
  whose answers are counted: none is a dead path, a share is judged by a sequential test between the loss
  that is tolerated and the loss that is heavy;
- DNS: a query to the uplink's own resolvers; dead resolvers behind a live path are a DNS fault (the engine
  moves name resolution, not the traffic) unless that is turned off;
- HTTP: a request on a kept-alive connection to the address a proof reached; any failure calls a proof;
- everything at once (a new connection, a real lookup, no portal): the HTTP proof, now and then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from urllib.parse import urlsplit

from .echo import echo_target
from .policy import (
    Health,
    PolicyParams,
    RttEstimate,
    UplinkHealth,
    observe,
    probe_timeout,
    record,
    rtt_sample,
)
from .probe import Reason, RoundResult, Target, dns_target
from .traffic import TrafficCounters

# Heartbeats a peer that has never answered one may miss, each time with HTTP passing right after, before
# it is taken for one that filters ICMP and the uplink goes back to HTTP rounds only.
ECHO_STRIKES = 3
# The loss test's error rates: calling a tolerable path lossy must be rarer than one in a million tests
# (one starts at every missed heartbeat, thousands a day on a lossy line); missing heavy loss once only
# delays the verdict to the next missed heartbeat, a second later.
FALSE_ALARM = 1e-6
MISS = 0.1
# Bursts one loss test may take; undecided after them, the path is not proven lossy.
MAX_LOSS_BURSTS = 12
# An undecided loss test's further bursts are this many times the first: near the heavy share (60 % lost
# one way) a verdict needs some 60 echoes, about a second of large bursts instead of three of small ones,
# and the extra echoes go out only while a test is open (most tests on a lightly lossy line end at the first).
LOSS_BURST_GROWTH = 3


class Purpose(StrEnum):
    HEARTBEAT = "heartbeat"  # one echo: is the path still open
    CONFIRM = "confirm"  # bursts after a doubt: silent, lossy, or fine after all
    MEET = "meet"  # one echo to a new peer right after the proof that chose it
    EXCUSE = "excuse"  # a burst after a step nothing answered: a silent path, loss, or a fault above it
    IPV6 = "ipv6"  # the IPv6 path on its own


@dataclass(frozen=True)
class Proof:
    """An HTTP round: DNS through the uplink's resolvers, a new connection, the answer judged."""

    targets: tuple[Target, ...]
    timeout: float


@dataclass(frozen=True)
class Echo:
    peer: str
    count: int
    timeout: float
    purpose: Purpose
    after: Unanswered | None = None  # what an excuse burst judges


@dataclass(frozen=True)
class DnsCheck:
    """One query for `name` to the uplink's own resolvers."""

    name: str
    timeout: float


@dataclass(frozen=True)
class HttpCheck:
    """One request for `target` on a kept-alive connection to `address`: no lookup, no handshake."""

    target: Target
    address: str
    timeout: float


Step = Proof | Echo | DnsCheck | HttpCheck


@dataclass(frozen=True)
class Unanswered:
    """A step that nothing answered: before it means anything about its layer, a burst asks the path."""

    step: Proof | DnsCheck | HttpCheck
    result: RoundResult


@dataclass(frozen=True)
class Observed:
    """A step's answer and what the device received meanwhile (busy is not dead)."""

    result: RoundResult
    received: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True)
class Evidence:
    """What the user's own traffic through the uplink showed since its last round (nmfailover.traffic)."""

    active: bool = False  # the user's connections or lookups go through it
    silent: bool = False  # connection attempts unanswered, or sending while receiving nothing
    refused: bool = False  # connection attempts refused or reset in a burst
    dns_failing: bool = False  # the user's lookups unanswered or failed


@dataclass(frozen=True)
class Situation:
    now: float
    standby: bool = False  # less preferred than the uplink carrying traffic: watched more frugally
    ipv6: bool = False  # it has an IPv6 default gateway, whose path is judged on its own
    proof_due: bool = False  # something happened to it (a link event, a request): a proof, not an echo
    resolvers: bool = True  # it has resolvers of its own to check
    evidence: Evidence = Evidence()


@dataclass(frozen=True)
class DetectionParams:
    """What detection needs of the settings (config.py explains each; engine.core.detection_params maps)."""

    targets: tuple[Target, ...]
    quorum: int
    policy: PolicyParams
    timeout_floor: float
    timeout_ceiling: float
    active_interval: float
    standby_interval: float
    suspect_interval: float
    heartbeat: bool
    proof_interval: float
    standby_proof_interval: float
    echo_burst: int
    loss_excuses: int
    ipv6_interval: float
    busy_rx_rate: int
    dns_interval: float
    http_interval: float
    traffic_check_interval: float  # the cheap layers' pace while the user's traffic flows
    loss_tolerated: float  # share of echoes a usable path may lose (15 % each way)
    loss_heavy: float  # share that makes it unusable
    dns_failover: bool  # dead resolvers behind a live path are a DNS fault, not a down uplink
    dns_checks: bool  # the cheap layers between proofs (off where nothing can send them)
    http_checks: bool

    def __post_init__(self) -> None:
        if not 0 <= self.loss_tolerated < self.loss_heavy < 1:
            raise ValueError(
                f"loss_tolerated must be below loss_heavy, both in [0, 1): "
                f"{self.loss_tolerated}, {self.loss_heavy}"
            )


@dataclass(frozen=True)
class Note:
    """A line for the log: what changed and why."""

    text: str
    warning: bool = False


@dataclass(frozen=True)
class DnsHealth:
    """The uplink's own resolvers, judged apart from its path."""

    failures: int = 0
    successes: int = 0
    dead: bool = False  # they fail while the path answers: name resolution should go elsewhere
    detail: str = ""


@dataclass(frozen=True)
class Watch:
    """Everything detection knows about one uplink."""

    health: UplinkHealth = UplinkHealth()
    health6: UplinkHealth = UplinkHealth()  # its IPv6 path's, judged by IPv6 echoes
    dns: DnsHealth = DnsHealth()
    rtt: Mapping[str, RttEstimate] = field(default_factory=dict)  # per target URL; never mutated
    last_round: RoundResult | None = None
    probed_at: float | None = None  # start of the last round
    round_timeout: float | None = None  # what the last step allowed each answer
    busy_rx: int | None = None  # bytes the device received during the last step, if it timed out busy
    went_silent: bool = False  # it was busy, and its traffic stopped with its probes unanswered
    rotation: int = 0  # which targets a lean proof asks next
    proved_at: float | None = None  # when an HTTP proof last passed
    doubt_since: float | None = None  # when the current doubt (or outage) began
    echo_peer: str | None = None  # where heartbeats go: the address that answered a proof
    echo_answered: bool = False  # the peer has answered an echo (so it does not filter ICMP)
    echo_unanswered: int = 0  # heartbeats it never answered while HTTP passed right after
    echo_off: bool = False  # the peer filters ICMP: proofs only
    echoed: bool = False  # the last verdict came from echoes
    excused: int = 0  # failed proofs in a row taken for loss, as echoes still passed
    loss_score: float = 0.0  # the running loss test: log-likelihood ratio, heavy against tolerated
    loss_bursts: int = 0
    echo_peer6: str | None = None
    checked6_at: float | None = None
    dns_checked_at: float | None = None
    http_checked_at: float | None = None
    http_target: Target | None = None  # what kept-alive checks ask, and where: a proof's answer
    http_address: str | None = None
    probe_payload: int = 0  # bytes our probes sent and received through it (above UDP/TCP)
    failed_rounds: int = 0


# -- planning ---------------------------------------------------------------------------------------


def interval(watch: Watch, situation: Situation, params: DetectionParams) -> float:
    """Start to start, how long until the uplink's next round."""
    dns_doubt = watch.dns.failures > 0 and not watch.dns.dead
    if watch.health.suspect or watch.busy_rx is not None or dns_doubt:
        # Confirm as soon as the round that raised the doubt has timed out: start to start, its timeout.
        last = watch.round_timeout if watch.round_timeout is not None else params.timeout_ceiling
        return min(params.suspect_interval, last)
    return params.standby_interval if situation.standby else params.active_interval


def max_silence(params: DetectionParams) -> float:
    """How long a healthy loop may go without a round: the longest interval plus a round, twice."""
    longest = max(params.active_interval, params.standby_interval, params.suspect_interval)
    return 2 * (longest + params.timeout_ceiling) + 1.0


def plan(watch: Watch, situation: Situation, params: DetectionParams) -> tuple[Watch, Step]:
    """The round's first step."""
    now, evidence = situation.now, situation.evidence
    watch = replace(watch, probed_at=now)
    peer, proved_at = watch.echo_peer, watch.proved_at
    echoes = params.heartbeat and not watch.echo_off
    if peer is None or proved_at is None or not echoes or watch.health.health is not Health.UP:
        return _proof(watch, params)
    if situation.proof_due:
        return _proof(watch, params)
    burst = Echo(peer, params.echo_burst, echo_timeout(watch, peer, params), Purpose.CONFIRM)
    if watch.health.consecutive_failures:
        # Only a doubt that echoes raised is settled by echoes; one a proof raised needs a proof.
        return (watch, burst) if watch.echoed and watch.echo_answered else _proof(watch, params)
    if evidence.silent and watch.echo_answered:
        # The user's traffic stopped coming back: a missed heartbeat of theirs, confirmed by a burst.
        health = observe(watch.health, False, now, params.policy)
        return replace(watch, health=health, echoed=True, doubt_since=now), burst
    if evidence.refused:
        return _proof(watch, params)
    heartbeat = Echo(peer, 1, echo_timeout(watch, peer, params), Purpose.HEARTBEAT)
    if watch.busy_rx is not None:
        # A proof behind the user's own download would only time out in the queue: it waits for the link
        # to quieten down, and heartbeats tell a cut meanwhile.
        return watch, heartbeat
    every = params.standby_proof_interval if situation.standby else params.proof_interval
    if now - proved_at >= every:
        return _proof(watch, params)
    if situation.standby:
        return watch, heartbeat  # a candidate is proved before it takes traffic (the engine sees to it)
    pace = params.traffic_check_interval if evidence.active else None
    dns_due = _due(watch.dns_checked_at, pace or params.dns_interval, now)
    dns_doubt = evidence.dns_failing or (watch.dns.failures and not watch.dns.dead)
    if params.dns_checks and situation.resolvers and (dns_due or dns_doubt):
        name = _host(watch.http_target or params.targets[0])
        return replace(watch, dns_checked_at=now), DnsCheck(
            name, _timeout(watch, dns_target(name).url, params)
        )
    if params.http_checks and watch.http_target is not None and watch.http_address is not None:
        if _due(watch.http_checked_at, pace or params.http_interval, now):
            target, address = watch.http_target, watch.http_address
            timeout = _timeout(watch, target.url, params)
            return replace(watch, http_checked_at=now), HttpCheck(target, address, timeout)
    return watch, heartbeat


def _due(last: float | None, every: float, now: float) -> bool:
    return last is None or now - last >= every


def _host(target: Target) -> str:
    return urlsplit(target.url).hostname or ""


def _proof(watch: Watch, params: DetectionParams) -> tuple[Watch, Proof]:
    targets = params.targets
    health = watch.health
    # Every target while anything is in doubt; on a steadily healthy uplink only as many as the quorum, in
    # rotation: a failed lean round makes the uplink suspect, and the next round asks every target.
    if health.health is Health.UP and not health.suspect and not watch.excused:
        watch = replace(watch, rotation=watch.rotation + 1)
        targets = tuple(targets[(watch.rotation + i) % len(targets)] for i in range(params.quorum))
    return watch, Proof(targets, _proof_timeout(watch, targets, params))


def _proof_timeout(watch: Watch, targets: tuple[Target, ...], params: DetectionParams) -> float:
    """The longest of the targets' own timeouts; a proof that confirms a doubt waits the full ceiling: a
    path that has just become slower passes it (and teaches the new pace), a dead one fails it as surely."""
    doubt = watch.health.health is Health.UP and watch.health.consecutive_failures > 0
    # No patience for a link whose traffic has just stopped dead: that is how a cut under load looks.
    if doubt and not watch.went_silent:
        return params.timeout_ceiling
    return max(_timeout(watch, t.url, params) for t in targets)


def _timeout(watch: Watch, key: str, params: DetectionParams) -> float:
    return probe_timeout(watch.rtt.get(key, RttEstimate()), params.timeout_floor, params.timeout_ceiling)


def echo_timeout(watch: Watch, peer: str, params: DetectionParams) -> float:
    """From the peer's echo answer times; until it has answered one on a quiet link, from the quickest
    HTTP target's, which a single echo beats (a whole HTTP exchange takes several round trips)."""
    estimate = watch.rtt.get(echo_target(peer).url)
    if estimate is None:
        http = [e for url, e in watch.rtt.items() if e.srtt is not None and url.startswith("http")]
        estimate = min(http, key=lambda e: e.srtt or 0.0, default=RttEstimate())
    return probe_timeout(estimate, params.timeout_floor, params.timeout_ceiling)


# -- the user's own traffic --------------------------------------------------------------------------

# Connection attempts and lookups per second, the user's and ours together, that make an uplink one the
# user's traffic goes through: ours alone stay far below (a proof a minute, a check every few seconds).
ACTIVE_ATTEMPTS = 1.0
# Sent while nothing came back, over at least SILENCE_SPAN seconds: the path stopped answering.
SILENT_PACKETS = 4
SILENCE_SPAN = 0.5
# Resets on connections not being opened happen (servers closing); a burst of them does not.
RESET_BURST = 3


def read_traffic(before: TrafficCounters, after: TrafficCounters, window: TrafficCounters) -> Evidence:
    """What the uplink's traffic showed between two snapshots of its watch (`window`: an older one, over
    which the pace of new connections and lookups is judged)."""
    span = max(after.at - window.at, 1.0)
    attempts = after.syn_sent - window.syn_sent + after.dns_sent - window.dns_sent
    same_device = after.link.ifindex is not None and after.link.ifindex == before.link.ifindex
    sent = after.link.tx_packets - before.link.tx_packets
    received = after.link.rx_packets - before.link.rx_packets
    mute = same_device and after.at - before.at >= SILENCE_SPAN and sent >= SILENT_PACKETS and received == 0
    return Evidence(
        active=attempts / span >= ACTIVE_ATTEMPTS,
        silent=after.syn_unanswered > before.syn_unanswered or mute,
        refused=after.syn_refused > before.syn_refused or after.resets - before.resets >= RESET_BURST,
        dns_failing=after.dns_unanswered + after.dns_failed > before.dns_unanswered + before.dns_failed,
    )


# -- folding ----------------------------------------------------------------------------------------


Folded = tuple[Watch, Step | None, tuple[Note, ...]]


def fold(
    watch: Watch, step: Step, observed: Observed, situation: Situation, params: DetectionParams
) -> Folded:
    """Take one step's answer: the new state, the follow-up step (None: the round is over), log notes."""
    result = observed.result
    # Busy is not dead: answers that time out while the device keeps receiving only show a full queue.
    loaded = params.busy_rx_rate > 0 and observed.received >= params.busy_rx_rate * max(
        observed.elapsed, step.timeout
    )
    watch = replace(
        watch,
        round_timeout=step.timeout,
        probe_payload=watch.probe_payload + result.payload,
        failed_rounds=watch.failed_rounds + (not result.ok),
    )
    if not loaded:
        # Answer times behind the user's own download measure the queue: learnt, they would stretch the
        # timeouts and slow down finding a cut under load.
        watch = learn_answer_times(watch, result)
    match step:
        case Echo(purpose=Purpose.MEET):
            return replace(watch, echo_answered=result.ok), _ipv6_step(watch, situation, params), ()
        case Echo(purpose=Purpose.IPV6):
            return _fold_ipv6(watch, result, situation, params)
        case Echo(purpose=Purpose.EXCUSE, after=Unanswered() as after):
            return _fold_excuse(watch, after, result, loaded, situation, params)
        case Echo():
            watch = _busy(watch, result, loaded, observed.received)
            return _fold_echo(watch, step, result, loaded, situation, params)
        case Proof():
            watch = _busy(watch, result, loaded, observed.received)
            return _fold_proof(watch, step, result, loaded, situation, params)
        case DnsCheck() | HttpCheck() if burst := _path_burst(watch, step, result, params):
            return watch, burst, ()
        case DnsCheck():
            return _fold_dns(watch, result, situation, params)
        case HttpCheck():
            return _http_failed(watch, result, params) if not result.ok else (watch, None, ())


def learn_answer_times(watch: Watch, result: RoundResult) -> Watch:
    """Fold the answers into each target's smoothed answer time; timeouts never (Karn's rule)."""
    rtt = dict(watch.rtt)
    for answer in result.results:
        if answer.ok:
            url = answer.target.url
            rtt[url] = rtt_sample(rtt.get(url, RttEstimate()), answer.latency)
    return replace(watch, rtt=rtt)


def _busy(watch: Watch, result: RoundResult, loaded: bool, received: int) -> Watch:
    busy = loaded and not result.ok and all(r.unanswered for r in result.results)
    went_silent = not result.ok and not loaded and (watch.busy_rx is not None or watch.went_silent)
    return replace(watch, went_silent=went_silent, busy_rx=received if busy else None)


def _verdict(
    watch: Watch,
    ok: bool,
    result: RoundResult,
    loaded: bool,
    now: float,
    params: DetectionParams,
    why: str = "",
) -> tuple[Watch, tuple[Note, ...]]:
    """Fold a round's verdict into the health hysteresis and the brownout window."""
    before = watch.health
    health = observe(before, ok, now, params.policy, hard=result.hard_failure, portal=result.portal)
    if not loaded and not result.portal:  # a portal's answers are wrong, not lost; a queue's are late
        answers: list[tuple[bool, float]] = []
        for r in result.results:
            answers += [(True, r.latency)] * r.answers + [(False, r.latency)] * (r.sent - r.answers)
        health = record(health, answers, now, params.policy)
    doubt = health.health is not Health.UP or health.consecutive_failures > 0
    watch = replace(
        watch,
        health=health,
        last_round=result,
        doubt_since=(watch.doubt_since or now) if doubt else None,
    )
    summary = why or result.summary
    if health.health != before.health:
        return watch, (Note(f"{health.health.value}: {summary}"),)
    if before.health is Health.UP and not ok:
        count = f"{health.consecutive_failures}/{params.policy.fail_count}"
        return watch, (Note(f"failing ({count}): {summary}", warning=True),)
    return watch, ()


def _fold_echo(
    watch: Watch,
    step: Echo,
    result: RoundResult,
    loaded: bool,
    situation: Situation,
    params: DetectionParams,
) -> Folded:
    now = situation.now
    if result.ok:
        watch = replace(watch, echo_answered=True, echo_unanswered=0)
    watch = replace(watch, echoed=True)
    if watch.busy_rx is not None:
        return watch, None, (Note(f"slow, not failed: {result.summary} while busy"),)
    ok, why = result.ok, ""
    answers = sum(r.answers for r in result.results)
    sent = sum(r.sent for r in result.results)
    if step.purpose is Purpose.HEARTBEAT:
        # A missed heartbeat opens the loss test with its own evidence; an answered one closes it.
        score = loss_score(0.0, answers, sent, params) if not ok else 0.0
        watch = replace(watch, loss_score=score, loss_bursts=0)
    elif answers:
        score = loss_score(watch.loss_score, answers, sent, params)
        bursts = watch.loss_bursts + 1
        if score >= math.log(1 / FALSE_ALARM):
            ok, why = False, f"heavy loss: {answers}/{sent} echoes answered in the last burst"
            watch = replace(watch, loss_score=0.0, loss_bursts=0)
        elif score <= math.log(MISS) or bursts >= MAX_LOSS_BURSTS:
            watch = replace(watch, loss_score=0.0, loss_bursts=0)
        else:
            # Undecided: the next burst at once, before any verdict.
            return replace(watch, loss_score=score, loss_bursts=bursts), _more_echoes(step, params), ()
    else:
        watch = replace(watch, loss_score=0.0, loss_bursts=0)  # nothing came back: a dead path
    watch, notes = _verdict(watch, ok, result, loaded, now, params, why)
    if not loaded:
        return watch, _ipv6_step(watch, situation, params), notes
    return watch, None, notes


def loss_score(score: float, answered: int, sent: int, params: DetectionParams) -> float:
    """Wald's sequential test: add the evidence of `answered` out of `sent` echoes for heavy loss against
    tolerated loss (positive: heavier). Light loss drifts it down, heavy loss up, each by about the
    same step per echo, so a verdict takes a few dozen echoes at most."""
    heavy, tolerated = 1 - params.loss_heavy, 1 - params.loss_tolerated  # chances of an answer
    lost = sent - answered
    return score + answered * math.log(heavy / tolerated) + lost * math.log((1 - heavy) / (1 - tolerated))


def _fold_proof(
    watch: Watch,
    step: Proof,
    result: RoundResult,
    loaded: bool,
    situation: Situation,
    params: DetectionParams,
) -> Folded:
    now = situation.now
    notes: list[Note] = []
    watch, filtered = _proved(watch, result, now)
    if filtered:
        notes.append(
            Note(
                "the probe targets never answered an ICMP echo (filtered?); probing by HTTP only, which "
                "costs more traffic (see NMFAILOVER_HEARTBEAT)",
                warning=True,
            )
        )
    watch = replace(watch, echoed=False)
    if watch.busy_rx is not None:
        return watch, None, (*notes, Note(f"slow, not failed: {result.summary} while busy"))
    watch = replace(watch, last_round=result)
    if watch.excused < params.loss_excuses and (burst := _path_burst(watch, step, result, params)):
        return watch, burst, tuple(notes)
    if not result.ok and _dns_fault(result, params) and watch.health.health is Health.UP:
        # The path answered up to name resolution: the resolvers' fault, which the DNS checks judge (and
        # the engine answers by moving name resolution; a proof bound to this uplink's device cannot reach
        # the resolvers it moves to, so its lookups keep failing meanwhile).
        watch, dns_notes = _dns_failed(watch, result, params)
        return watch, None, (*notes, *dns_notes)
    watch, verdict_notes = _verdict(watch, result.ok, result, loaded, now, params)
    notes += verdict_notes
    if result.ok:
        watch = replace(watch, dns_checked_at=now, http_checked_at=now)  # a proof covers both layers
        new_peer = watch.echo_peer
        if params.heartbeat and new_peer is not None and not watch.echo_answered and not watch.echo_off:
            # One echo to a new peer right after the proof that chose it: once it is known to answer, a
            # missed heartbeat is confirmed by a burst at once; before, only by a proof at the full timeout.
            meet = Echo(new_peer, 1, echo_timeout(watch, new_peer, params), Purpose.MEET)
            return watch, meet, tuple(notes)
    if loaded:
        return watch, None, tuple(notes)
    return watch, _ipv6_step(watch, situation, params), tuple(notes)


def _dns_fault(result: RoundResult, params: DetectionParams) -> bool:
    """A proof that failed only at name resolution is the resolvers' fault, where that is judged apart."""
    return (
        params.dns_failover and bool(result.results) and all(r.reason is Reason.DNS for r in result.results)
    )


def _path_burst(
    watch: Watch, step: Proof | DnsCheck | HttpCheck, result: RoundResult, params: DetectionParams
) -> Echo | None:
    """The burst that judges a step nothing answered, when echoes can: a cut path, loss, or a fault of the
    step's own layer look the same to the step (a timeout), not to a burst to a peer that answers echoes."""
    if result.ok or not result.results or not all(r.unanswered for r in result.results):
        return None
    if isinstance(step, DnsCheck) and watch.dns.dead:
        return None  # known dead resolvers, whose name resolution has moved: heartbeats watch the path
    if watch.health.health is not Health.UP or not params.heartbeat or watch.echo_off:
        return None
    peer = watch.echo_peer
    if peer is None or not watch.echo_answered:
        return None
    return Echo(
        peer, params.echo_burst, echo_timeout(watch, peer, params), Purpose.EXCUSE, Unanswered(step, result)
    )


def _fold_excuse(
    watch: Watch,
    after: Unanswered,
    burst: RoundResult,
    loaded: bool,
    situation: Situation,
    params: DetectionParams,
) -> Folded:
    failed, now = after.result, situation.now
    answers = sum(r.answers for r in burst.results)
    sent = sum(r.sent for r in burst.results)
    if not burst.ok:
        # The path is silent too: a cut, seen first by another layer. Its unanswered step counts as a missed
        # heartbeat and this burst as the one that confirms it, as on the echoes' own path; behind a full
        # queue the echoes may only be late, so the burst alone counts, as one failure.
        watch = replace(watch, echoed=True)
        watch, missed = _verdict(watch, False, failed, loaded, now, params)
        if loaded:
            return watch, None, missed
        watch, confirmed = _verdict(watch, False, burst, loaded, now, params)
        return watch, None, (*missed, *confirmed)
    if answers < sent and not isinstance(after.step, Proof):
        # Some echoes lost: the cheap check may have been lost too, so it says nothing of its own layer
        # until the loss test has spoken (a lossy path is no dead resolver).
        return _loss_test(watch, after, answers, sent, loaded, situation, params)
    match after.step:
        case DnsCheck():
            return _fold_dns(watch, failed, situation, params)
        case HttpCheck():
            return _http_failed(watch, failed, params)
    if _dns_fault(failed, params):
        watch, notes = _dns_failed(watch, failed, params)
        return watch, None, notes
    if answers == sent and sent > 1:
        # Not one echo lost: the path is clean, so HTTP's silence is HTTP's (a server or proxy that
        # accepts and never answers), not loss.
        why = f"{failed.summary}, while {watch.echo_peer} answers every echo"
        watch, notes = _verdict(watch, False, failed, loaded, now, params, why)
        return watch, None, notes
    watch = replace(watch, excused=watch.excused + 1)
    note = Note(
        f"lossy, not failed: {failed.summary}, yet {watch.echo_peer} answers {answers}/{sent} echoes "
        f"({watch.excused}/{params.loss_excuses})"
    )
    return watch, None, (note,)


def _loss_test(
    watch: Watch,
    after: Unanswered,
    answers: int,
    sent: int,
    loaded: bool,
    situation: Situation,
    params: DetectionParams,
) -> Folded:
    """The excuse burst of a cheap check opens the loss test: heavy loss is a failure, tolerated loss
    excuses the check (a failed kept-alive check still calls its proof), undecided asks more bursts."""
    score = loss_score(0.0, answers, sent, params)
    if score >= math.log(1 / FALSE_ALARM):
        why = f"heavy loss: {answers}/{sent} echoes answered in the last burst"
        watch, notes = _verdict(
            replace(watch, echoed=True), False, after.result, loaded, situation.now, params, why
        )
        return watch, None, notes
    if score <= math.log(MISS):
        if isinstance(after.step, HttpCheck):
            return _http_failed(watch, after.result, params)
        return (
            watch,
            None,
            (Note(f"lossy, not failed: {after.result.summary}; {answers}/{sent} echoes answered"),),
        )
    assert watch.echo_peer is not None  # the burst went to it
    burst = Echo(watch.echo_peer, 0, echo_timeout(watch, watch.echo_peer, params), Purpose.CONFIRM)
    return replace(watch, loss_score=score, loss_bursts=1), _more_echoes(burst, params), ()


def _more_echoes(burst: Echo, params: DetectionParams) -> Echo:
    """The loss test's next burst, once its first left it undecided."""
    return replace(burst, count=params.echo_burst * LOSS_BURST_GROWTH)


def _http_failed(watch: Watch, result: RoundResult, params: DetectionParams) -> Folded:
    note = Note(f"kept-alive check failed: {result.summary}; proving at once")
    proof_watch, proof = _proof(watch, params)
    return proof_watch, proof, (note,)


def _proved(watch: Watch, result: RoundResult, now: float) -> tuple[Watch, bool]:
    """Note a proof that passed, and whom heartbeats and kept-alive checks go to until the next one; True
    when the peer has just been found to filter ICMP."""
    if not result.ok:
        return watch, False
    watch = replace(watch, proved_at=now, excused=0)
    last = watch.last_round
    if watch.echoed and last is not None and not last.ok and not watch.echo_answered:
        # The heartbeat before this proof went unanswered, yet HTTP passes.
        watch = replace(watch, echo_unanswered=watch.echo_unanswered + 1)
        if watch.echo_unanswered >= ECHO_STRIKES:
            return replace(watch, echo_off=True), True
    answered = [r for r in result.results if r.ok and r.address]
    if watch.echo_peer6 is None:
        watch = replace(watch, echo_peer6=next((r.ipv6 for r in result.results if r.ok and r.ipv6), None))
    if answered:
        first = answered[0]
        watch = replace(watch, http_target=first.target, http_address=first.address)
        # A peer that answers echoes is kept; one that never has is swapped for another target's.
        if (watch.echo_peer is None or not watch.echo_answered) and first.address != watch.echo_peer:
            watch = replace(watch, echo_peer=first.address, echo_answered=False)
    return watch, False


def _fold_dns(watch: Watch, result: RoundResult, situation: Situation, params: DetectionParams) -> Folded:
    dns = watch.dns
    if result.ok:
        successes = dns.successes + 1
        if dns.dead and successes >= params.policy.rise_count:
            return (
                replace(watch, dns=DnsHealth()),
                None,
                (Note(f"its resolvers answer again: {result.summary}"),),
            )
        return replace(watch, dns=replace(dns, failures=0, successes=successes)), None, ()
    watch, notes = _dns_failed(watch, result, params)
    if not params.dns_failover:
        # Moving name resolution is off: dead resolvers make the uplink unusable, as a proof would find.
        watch, notes = _verdict(watch, False, result, False, situation.now, params)
    return watch, None, notes


def _dns_failed(watch: Watch, result: RoundResult, params: DetectionParams) -> tuple[Watch, tuple[Note, ...]]:
    dns = watch.dns
    failures = dns.failures + 1
    # Dead resolvers behind a live path: judged only while the path itself is in no doubt.
    dead = dns.dead or (failures >= params.policy.fail_count and watch.health.consecutive_failures == 0)
    watch = replace(watch, dns=DnsHealth(failures, 0, dead, result.summary))
    if dead and not dns.dead:
        return watch, (Note(f"its resolvers fail while its path answers: {result.summary}", warning=True),)
    if not dead:
        count = f"{failures}/{params.policy.fail_count}"
        return watch, (Note(f"resolvers failing ({count}): {result.summary}", warning=True),)
    return watch, ()


def _ipv6_step(watch: Watch, situation: Situation, params: DetectionParams) -> Echo | None:
    """An IPv6 echo after the round's verdict, when due: IPv6 may move to another uplink while IPv4 stays.
    Never while the uplink as a whole is in doubt: a cut must not wait for an IPv6 echo's timeout."""
    peer = watch.echo_peer6
    if not params.heartbeat or peer is None or watch.echo_off or not situation.ipv6:
        return None
    if watch.health.health is not Health.UP or watch.health.consecutive_failures:
        return None
    health6 = watch.health6
    if not health6.suspect and not _due(watch.checked6_at, params.ipv6_interval, situation.now):
        return None
    count = params.echo_burst if health6.health is Health.UP and health6.consecutive_failures else 1
    return Echo(peer, count, echo_timeout(watch, peer, params), Purpose.IPV6)


def _fold_ipv6(watch: Watch, result: RoundResult, situation: Situation, params: DetectionParams) -> Folded:
    now, before = situation.now, watch.health6
    watch = replace(watch, checked6_at=now)
    if before.health is Health.UNKNOWN and not result.ok:
        return watch, None, ()  # no verdict before a first answer: the peer may filter ICMPv6
    health6 = observe(before, result.ok, now, params.policy, hard=result.hard_failure)
    watch = replace(watch, health6=health6)
    if health6.health != before.health:
        return watch, None, (Note(f"IPv6 {health6.health.value}: {result.summary}"),)
    return watch, None, ()
