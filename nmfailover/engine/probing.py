"""Probe scheduling: each uplink's loop runs rounds at the pace detection asks for, sending what each step
of a round names and handing the answers back; every rule lives in nmfailover.detection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from loguru import logger

from ..detection import (
    DetectionParams,
    DnsCheck,
    Echo,
    Evidence,
    HttpCheck,
    Observed,
    Proof,
    Situation,
    Step,
    fold,
    interval,
    max_silence,
    plan,
)
from ..policy import Health
from ..probe import Link, RoundResult, Target
from .state import Uplink
from .supervisor import Supervisor

Prober = Callable[[Link, Sequence[Target], float, int], Awaitable[RoundResult]]
Echoer = Callable[[str | None, str, float, int], Awaitable[RoundResult]]  # interface, address, timeout, count
DnsChecker = Callable[[Link, str, float], Awaitable[RoundResult]]  # link, name, timeout
# One kept-alive connection per uplink (its profile UUID): link, target, address, timeout.
HttpChecker = Callable[[str, Link, Target, str, float], Awaitable[RoundResult]]
RxCounter = Callable[[str | None], int | None]
EvidenceSource = Callable[[Uplink], Evidence]

NO_EVIDENCE = Evidence()
# A burst of wake-ups must not turn into a burst of rounds.
MIN_ROUND_GAP = 0.05


class ProbeScheduler:
    def __init__(
        self,
        params: DetectionParams,
        prober: Prober,
        supervisor: Supervisor,
        current: Callable[[], Uplink | None],
        after_round: Callable[[], Awaitable[None]],
        *,
        rx_counter: RxCounter | None = None,
        echo: Echoer | None = None,
        dns_check: DnsChecker | None = None,
        http_check: HttpChecker | None = None,
        evidence: EvidenceSource | None = None,
        nameservers: Callable[[Uplink], tuple[str, ...]] | None = None,
    ) -> None:
        self.params = params
        self.prober = prober
        self.supervisor = supervisor
        self.clock = supervisor.clock
        self._current = current
        self._after_round = after_round
        self._rx_counter = rx_counter or rx_bytes
        self._echo = echo
        self._dns_check = dns_check
        self._http_check = http_check
        self._evidence = evidence or (lambda _: NO_EVIDENCE)
        # The uplink's own resolvers, which a DNS check judges even while name resolution is moved off them.
        self._nameservers = nameservers or (lambda u: u.link.nameservers)

    def situation(self, uplink: Uplink, evidence: Evidence = NO_EVIDENCE) -> Situation:
        current = self._current()
        return Situation(
            now=self.clock(),
            # Uplinks we would rather be on are watched as closely as the one carrying traffic, so a
            # recovered primary is noticed in seconds; the rest (often metered) less often, unless the one
            # carrying traffic is down: then they are all there is to hope for.
            standby=current is not None
            and uplink.index > current.index
            and current.health.health is Health.UP,
            ipv6=uplink.link.gateway6 is not None,
            proof_due=uplink.proof_due,
            resolvers=bool(self._nameservers(uplink)),
            evidence=evidence,
        )

    def interval(self, uplink: Uplink) -> float:
        return interval(uplink.watch, self.situation(uplink), self.params)

    def max_silence(self) -> float:
        return max_silence(self.params)

    async def loop(self, uplink: Uplink, name: str) -> None:
        live = self.supervisor.liveness(name, self.max_silence())
        # Start to start from the last round, whoever ran it (the first round, or this loop before a crash).
        probed_at = uplink.watch.probed_at
        last_start = probed_at if probed_at is not None else self.clock() - self.interval(uplink)
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
            gap = last_start + MIN_ROUND_GAP - self.clock()
            if gap > 0:
                await asyncio.sleep(gap)
            uplink.wake.clear()
            last_start = self.clock()
            live.beat()
            await self.probe(uplink)
            live.beat()
            await self._after_round()

    async def probe(self, uplink: Uplink) -> None:
        """One round: the steps detection asks for, until it has its verdict."""
        situation = self.situation(uplink, self._evidence(uplink))
        uplink.watch, first = plan(uplink.watch, situation, self.params)
        if isinstance(first, Proof):
            uplink.proof_due = False
        step: Step | None = first
        uplink.in_flight = True
        try:
            while step is not None:
                observed = await self._send(uplink, step)
                uplink.watch, step, notes = fold(
                    uplink.watch, step, observed, self.situation(uplink), self.params
                )
                for note in notes:
                    logger.log("WARNING" if note.warning else "INFO", "{} {}", uplink.label, note.text)
        finally:
            uplink.in_flight = False

    async def _send(self, uplink: Uplink, step: Step) -> Observed:
        interface = uplink.link.interface if uplink.link.activated else None
        link = Link(interface, uplink.link.nameservers)
        pending: Awaitable[RoundResult]
        match step:
            case Proof(targets=targets, timeout=timeout):
                pending = self.prober(link, targets, timeout, self.params.quorum)
            case Echo(peer=peer, count=count, timeout=timeout):
                assert self._echo is not None  # detection plans no echo with heartbeats off
                pending = self._echo(interface, peer, timeout, count)
            case DnsCheck(name=name, timeout=timeout):
                assert self._dns_check is not None  # nor a DNS check without a checker
                pending = self._dns_check(Link(interface, self._nameservers(uplink)), name, timeout)
            case HttpCheck(target=target, address=address, timeout=timeout):
                assert self._http_check is not None
                pending = self._http_check(uplink.profile.uuid, link, target, address, timeout)
        received_before = self._rx_counter(interface)
        started = self.clock()
        result = await pending
        elapsed = self.clock() - started
        received_after = self._rx_counter(interface)
        received = (
            received_after - received_before
            if received_before is not None and received_after is not None
            else 0
        )
        return Observed(result, received, elapsed)


def rx_bytes(interface: str | None) -> int | None:
    """The device's received-bytes counter, or None when there is no device to read."""
    if interface is None:
        return None
    try:
        return int(Path(f"/sys/class/net/{interface}/statistics/rx_bytes").read_text())
    except (OSError, ValueError):
        return None
