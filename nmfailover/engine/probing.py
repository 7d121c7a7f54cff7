"""Probe scheduling: each uplink's loop probes at the pace its role and health ask for and folds every round
into its health with the pure policy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from loguru import logger

from ..config import Settings
from ..policy import Health, PolicyParams, observe
from ..probe import Link, RoundResult, Target
from .state import Uplink
from .supervisor import Supervisor

Prober = Callable[[Link, Sequence[Target], float, int], Awaitable[RoundResult]]

MIN_ROUND_GAP = 0.05


class ProbeScheduler:
    def __init__(
        self,
        settings: Settings,
        prober: Prober,
        params: PolicyParams,
        supervisor: Supervisor,
        current: Callable[[], int | None],
        after_round: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.prober = prober
        self.params = params
        self.supervisor = supervisor
        self.clock = supervisor.clock
        self._current = current
        self._after_round = after_round

    def interval(self, uplink: Uplink) -> float:
        if uplink.health.suspect:
            return self.settings.suspect_interval
        # Uplinks we would rather be on are watched as closely as the one carrying traffic, so a recovered
        # primary is noticed in seconds; the rest (often metered) less often.
        current = self._current()
        if current is None or uplink.index <= current:
            return self.settings.active_interval
        return self.settings.standby_interval

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

    def round_targets(self, uplink: Uplink) -> Sequence[Target]:
        """Every target while anything is in doubt; on a steadily healthy uplink only as many as the quorum,
        in rotation, which cuts probe traffic (backups are often metered) without slowing detection: a
        failed lean round makes the uplink suspect, and the next round asks every target at once."""
        targets = self.settings.probe_targets
        if uplink.health.health != Health.UP or uplink.health.suspect:
            return targets
        uplink.rotation += 1
        return [targets[(uplink.rotation + i) % len(targets)] for i in range(self.settings.probe_quorum)]

    async def probe(self, uplink: Uplink) -> None:
        uplink.probed_at = self.clock()
        link = Link(uplink.link.interface if uplink.link.activated else None, uplink.link.nameservers)
        result = await self.prober(
            link, self.round_targets(uplink), self.settings.probe_timeout, self.settings.probe_quorum
        )
        before = uplink.health
        uplink.last_round = result
        uplink.health = observe(
            before, result.ok, self.clock(), self.params, hard=result.hard_failure, portal=result.portal
        )
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
