"""Probe scheduling: each uplink's loop probes at the pace its role and health ask for and folds every round
into its health with the pure policy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from loguru import logger

from ..config import Settings
from ..echo import echo_target
from ..policy import Health, PolicyParams, RttEstimate, observe, probe_timeout, record, rtt_sample
from ..probe import Link, RoundResult, Target
from .state import Uplink
from .supervisor import Supervisor

Prober = Callable[[Link, Sequence[Target], float, int], Awaitable[RoundResult]]
Echo = Callable[[str | None, str, float, int], Awaitable[RoundResult]]  # interface, address, timeout, count

MIN_ROUND_GAP = 0.05
# Heartbeats a peer that has never answered one may miss, each time with HTTP passing right after, before
# it is taken for one that filters ICMP and the uplink goes back to HTTP rounds only.
ECHO_STRIKES = 3
RxCounter = Callable[[str | None], int | None]


class ProbeScheduler:
    def __init__(
        self,
        settings: Settings,
        prober: Prober,
        params: PolicyParams,
        supervisor: Supervisor,
        current: Callable[[], int | None],
        after_round: Callable[[], Awaitable[None]],
        rx_counter: RxCounter | None = None,
        echo: Echo | None = None,
    ) -> None:
        self.settings = settings
        self.prober = prober
        self.params = params
        self.supervisor = supervisor
        self.clock = supervisor.clock
        self._current = current
        self._after_round = after_round
        self._rx_counter = rx_counter or rx_bytes
        self._echo = echo if settings.heartbeat else None

    def interval(self, uplink: Uplink) -> float:
        # A busy link's probes prove nothing either way: ask again soon, so that the moment its traffic
        # stops arriving (a cut under load) is the moment the rounds start to count.
        if uplink.health.suspect or uplink.busy_rx is not None:
            # Confirm as soon as the round that raised the doubt has timed out: start to start, its timeout.
            last = uplink.round_timeout if uplink.round_timeout is not None else self.settings.probe_timeout
            return min(self.settings.suspect_interval, last)
        return self.settings.standby_interval if self._standby(uplink) else self.settings.active_interval

    def _standby(self, uplink: Uplink) -> bool:
        # Uplinks we would rather be on are watched as closely as the one carrying traffic, so a recovered
        # primary is noticed in seconds; the rest (often metered) less often.
        current = self._current()
        return current is not None and uplink.index > current

    def heartbeat(self, uplink: Uplink) -> tuple[str, int] | None:
        """Where this round's echo requests go and how many, or None when the round must be HTTP: before a
        first proof, once the last proof is older than the proof interval (unless the link is busy), when
        an event asked for one, and whenever a doubt did not come from a heartbeat to a peer known to
        answer them."""
        if self._echo is None or uplink.echo_off or uplink.echo_peer is None or uplink.proved_at is None:
            return None
        if uplink.health.health is not Health.UP or uplink.proof_due:
            return None
        if uplink.health.consecutive_failures:
            return (
                (uplink.echo_peer, self.settings.echo_burst)
                if uplink.echoed and uplink.echo_answered
                else None
            )
        # A proof is due; behind the user's own download it would only time out in the queue: it waits for
        # the link to quieten down, and heartbeats tell a cut meanwhile.
        if uplink.busy_rx is not None:
            return uplink.echo_peer, 1
        settings = self.settings
        every = settings.standby_proof_interval if self._standby(uplink) else settings.proof_interval
        return (uplink.echo_peer, 1) if self.clock() - uplink.proved_at < every else None

    def max_silence(self) -> float:
        """How long a healthy loop may go without a round: the longest interval plus a round, twice."""
        longest = max(
            self.settings.active_interval, self.settings.standby_interval, self.settings.suspect_interval
        )
        return 2 * (longest + self.settings.probe_timeout) + 1.0

    async def loop(self, uplink: Uplink, name: str) -> None:
        live = self.supervisor.liveness(name, self.max_silence())
        # Start to start from the last round, whoever ran it (the first round, or this loop before a crash).
        last_start = (
            uplink.probed_at if uplink.probed_at is not None else self.clock() - self.interval(uplink)
        )
        while True:
            # Intervals run start to start: a round that takes longer is followed at once by the next.
            delay = last_start + self.interval(uplink) - self.clock()
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
            live.beat()
            await self.probe(uplink)
            live.beat()
            await self._after_round()

    def round_timeout(self, uplink: Uplink, targets: Sequence[Target]) -> float:
        """The longest of the targets' own timeouts, from their answer times through this uplink; a round
        that confirms a doubt waits the full NMFAILOVER_PROBE_TIMEOUT: a server or a path that has just
        become slower passes it (and its answer times teach the new pace), a dead link fails it as surely."""
        floor, ceiling = self.settings.timeout_floor, self.settings.probe_timeout
        # No patience for a link whose traffic has just stopped dead: that is how a cut under load looks.
        doubt = uplink.health.health is Health.UP and uplink.health.consecutive_failures > 0
        if doubt and not uplink.went_silent:
            return ceiling
        return max(probe_timeout(uplink.rtt.get(t.url, RttEstimate()), floor, ceiling) for t in targets)

    def round_targets(self, uplink: Uplink) -> Sequence[Target]:
        """Every target while anything is in doubt; on a steadily healthy uplink only as many as the quorum,
        in rotation, which cuts probe traffic (backups are often metered) without slowing detection: a
        failed lean round makes the uplink suspect, and the next round asks every target at once."""
        targets = self.settings.probe_targets
        if uplink.health.health != Health.UP or uplink.health.suspect or uplink.excused:
            return targets
        uplink.rotation += 1
        return [targets[(uplink.rotation + i) % len(targets)] for i in range(self.settings.probe_quorum)]

    async def probe(self, uplink: Uplink) -> None:
        uplink.probed_at = self.clock()
        interface = uplink.link.interface if uplink.link.activated else None
        heartbeat = self.heartbeat(uplink)
        if heartbeat is not None and self._echo is not None:
            peer, count = heartbeat
            timeout = self._echo_timeout(uplink, peer)
            pending = self._echo(interface, peer, timeout, count)
        else:
            uplink.proof_due = False
            targets = self.round_targets(uplink)
            timeout = self.round_timeout(uplink, targets)
            pending = self.prober(
                Link(interface, uplink.link.nameservers), targets, timeout, self.settings.probe_quorum
            )
        received_before = self._rx_counter(interface)
        started = self.clock()
        result = await pending
        received_after = self._rx_counter(interface)
        received = (
            received_after - received_before
            if received_before is not None and received_after is not None
            else 0
        )
        if heartbeat is None:
            self._proved(uplink, result)
        elif result.ok:
            uplink.echo_answered, uplink.echo_unanswered = True, 0
        uplink.echoed = heartbeat is not None
        uplink.last_round, uplink.round_timeout = result, timeout
        uplink.probe_payload += result.payload
        uplink.failed_rounds += not result.ok
        # Busy is not dead: answers that time out while the device keeps receiving traffic only show a
        # full queue (bufferbloat under the user's own download), so the round proves nothing either way.
        rate = self.settings.busy_rx_rate
        loaded = rate > 0 and received >= rate * max(self.clock() - started, timeout)
        if not loaded:
            # Answer times behind the user's own download measure the queue, not the path: learnt, they
            # would stretch the timeouts and slow down finding a cut under load.
            learn_answer_times(uplink, result)
            if heartbeat is None and result.ok:
                await self._meet_echo_peer(uplink, interface)  # after the answer times above: its timeout
        busy = loaded and not result.ok and all(r.unanswered for r in result.results)
        uplink.went_silent = (
            not result.ok and not loaded and (uplink.busy_rx is not None or uplink.went_silent)
        )
        uplink.busy_rx = received if busy else None
        before = uplink.health
        if busy:
            logger.info(
                "{} slow, not failed: {} while it received {} bytes", uplink.label, result.summary, received
            )
            return
        if heartbeat is None and await self._excused(uplink, result, interface):
            return
        now = self.clock()
        uplink.health = observe(
            before, result.ok, now, self.params, hard=result.hard_failure, portal=result.portal
        )
        if not loaded:
            # Answer times under the user's own download show the queue, not the line: no brownout evidence.
            if not result.portal:  # a portal's answers are wrong, not lost
                answers = [(r.ok, r.latency) for r in result.results]
                uplink.health = record(uplink.health, answers, now, self.params)
        if uplink.health.health != before.health:
            logger.info("{} {}: {}", uplink.label, uplink.health.health.value, result.summary)
        elif before.health == Health.UP and not result.ok:
            logger.warning(
                "{} failing ({}/{}): {}",
                uplink.label,
                uplink.health.consecutive_failures,
                self.params.fail_count,
                result.summary,
            )
        if not loaded:
            await self._check_ipv6(uplink, interface)

    def _echo_timeout(self, uplink: Uplink, peer: str) -> float:
        """From the peer's echo answer times; until it has answered one on a quiet link, from the quickest
        HTTP target's, which a single echo beats (a whole HTTP exchange takes several round trips)."""
        estimate = uplink.rtt.get(echo_target(peer).url)
        if estimate is None:
            http = [e for url, e in uplink.rtt.items() if e.srtt is not None and not url.startswith("icmp:")]
            estimate = min(http, key=lambda e: e.srtt or 0.0, default=RttEstimate())
        return probe_timeout(estimate, self.settings.timeout_floor, self.settings.probe_timeout)

    async def _meet_echo_peer(self, uplink: Uplink, interface: str | None) -> None:
        """One echo to a new heartbeat peer right after the proof that chose it: once it is known to answer,
        a missed heartbeat is confirmed by a burst at once; before, only by an HTTP round at the full
        timeout (the peer might filter ICMP). Without this, a cut in the first second after start-up or
        after a peer change would take that slower path."""
        peer = uplink.echo_peer
        if self._echo is None or peer is None or uplink.echo_answered or uplink.echo_off:
            return
        result = await self._echo(interface, peer, self._echo_timeout(uplink, peer), 1)
        uplink.probe_payload += result.payload
        learn_answer_times(uplink, result)
        uplink.echo_answered = result.ok

    async def _check_ipv6(self, uplink: Uplink, interface: str | None) -> None:
        """Judge the uplink's IPv6 path on its own, by echoes to a target's IPv6 address, so that IPv6 can
        move to another uplink while IPv4 stays (the actuator ranks the families apart)."""
        peer = uplink.echo_peer6
        if self._echo is None or peer is None or uplink.link.gateway6 is None or uplink.echo_off:
            return
        if uplink.health.health is not Health.UP or uplink.health.consecutive_failures:
            # The uplink as a whole decides first, and a cut must not wait for an IPv6 echo's timeout.
            return
        health6, now = uplink.health6, self.clock()
        due = uplink.checked6_at is None or now - uplink.checked6_at >= self.settings.ipv6_interval
        if not (due or health6.suspect):
            return
        uplink.checked6_at = now
        count = (
            self.settings.echo_burst if health6.health is Health.UP and health6.consecutive_failures else 1
        )
        result = await self._echo(interface, peer, self._echo_timeout(uplink, peer), count)
        uplink.probe_payload += result.payload
        learn_answer_times(uplink, result)
        if health6.health is Health.UNKNOWN and not result.ok:
            return  # no verdict before a first answer: the peer may filter ICMPv6, which proves nothing
        uplink.health6 = observe(health6, result.ok, now, self.params, hard=result.hard_failure)
        if uplink.health6.health != health6.health:
            logger.info("{} IPv6 {}: {}", uplink.label, uplink.health6.health.value, result.summary)

    async def _excused(self, uplink: Uplink, result: RoundResult, interface: str | None) -> bool:
        """True when a failed HTTP round looks like loss, not failure: every answer timed out, yet the
        address it proves the path to answers an echo burst, NMFAILOVER_LOSS_EXCUSES times in a row at most.

        Each HTTP round needs some ten packets to arrive in time, so a lossy link fails some by timeouts;
        excused ones ask every target next (at 15 % loss all of them fail once in 10^4 tries). Silence at
        the HTTP level alone (a dead resolver behind a live path) is found that many rounds later."""
        lost = not result.ok and bool(result.results) and all(r.unanswered for r in result.results)
        peer = uplink.echo_peer
        if not lost or uplink.health.health is not Health.UP or uplink.excused >= self.settings.loss_excuses:
            return False
        if self._echo is None or peer is None or not uplink.echo_answered or uplink.echo_off:
            return False
        burst = await self._echo(interface, peer, self._echo_timeout(uplink, peer), self.settings.echo_burst)
        uplink.probe_payload += burst.payload
        if not burst.ok:
            # The path is silent too: a cut, seen first by a proof. Confirmed like a missed heartbeat, by
            # a burst at the echo's own timeout rather than an HTTP round at the full one.
            uplink.echoed = True
            return False
        uplink.excused += 1
        logger.info(
            "{} lossy, not failed: {}, yet {} answers echoes ({}/{})",
            uplink.label,
            result.summary,
            peer,
            uplink.excused,
            self.settings.loss_excuses,
        )
        return True

    def _proved(self, uplink: Uplink, result: RoundResult) -> None:
        """Note an HTTP round that passed, and whom heartbeats go to until the next one."""
        if not result.ok:
            return
        uplink.proved_at, uplink.excused = self.clock(), 0
        if uplink.echoed and uplink.last_round is not None and not uplink.last_round.ok:
            # The heartbeat before this round went unanswered, yet HTTP passes.
            if not uplink.echo_answered:
                uplink.echo_unanswered += 1
                if uplink.echo_unanswered >= ECHO_STRIKES:
                    uplink.echo_off = True
                    logger.warning(
                        "{}: the probe targets never answered an ICMP echo (filtered?); probing by HTTP "
                        "only, which costs more traffic (see NMFAILOVER_HEARTBEAT)",
                        uplink.label,
                    )
                    return
        if uplink.echo_peer6 is None:
            uplink.echo_peer6 = next((r.ipv6 for r in result.results if r.ok and r.ipv6), None)
        answered = [r.address for r in result.results if r.ok and r.address]
        # A peer that answers echoes is kept; one that never has is swapped for another target's.
        if (
            answered
            and (uplink.echo_peer is None or not uplink.echo_answered)
            and answered[0] != uplink.echo_peer
        ):
            uplink.echo_peer, uplink.echo_answered = answered[0], False


def learn_answer_times(uplink: Uplink, result: RoundResult) -> None:
    """Fold the round's answers into each target's smoothed answer time; timeouts never (Karn's rule)."""
    for answer in result.results:
        if answer.ok:
            url = answer.target.url
            uplink.rtt[url] = rtt_sample(uplink.rtt.get(url, RttEstimate()), answer.latency)


def rx_bytes(interface: str | None) -> int | None:
    """The device's received-bytes counter, or None when there is no device to read."""
    if interface is None:
        return None
    try:
        return int(Path(f"/sys/class/net/{interface}/statistics/rx_bytes").read_text())
    except (OSError, ValueError):
        return None
