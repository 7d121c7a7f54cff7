"""On-demand uplinks (NMFAILOVER_ON_DEMAND): kept down through NetworkManager while a more preferred uplink
is up, activated when none is, deactivated again once traffic has left them for the linger time. Which
ones should be up is policy.on_demand_wanted's (pure); this is the part that asks NetworkManager."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from loguru import logger

from ..backoff import backoff_delay
from ..errors import NMError
from ..policy import on_demand_wanted
from .state import Uplink


@runtime_checkable
class Activator(Protocol):
    async def activate(self, uuid: str) -> None: ...
    async def deactivate(self, uuid: str) -> bool: ...


class OnDemand:
    def __init__(self, nm: Activator, linger: float) -> None:
        self.nm = nm
        self.linger = linger
        self._left_at: dict[str, float] = {}  # by profile UUID: when traffic left it
        self._failures: dict[str, int] = {}  # activations that failed in a row
        self._retry_at: dict[str, float] = {}
        self._kept_down: set[str] = set()  # up before we took them down: given back at stop
        self._activated: set[str] = set()  # brought up by us at some time: down is how they were
        self._down: set[str] = set()  # taken down by us, and not brought up since

    def traffic_left(self, uplink: Uplink, now: float) -> None:
        self._left_at[uplink.profile.uuid] = now

    def deadline(self, uplinks: Sequence[Uplink], on_demand: frozenset[int], now: float) -> float | None:
        """The next moment a lingering one may go down, or a failed activation is tried again."""
        times = [
            self._left_at[u.profile.uuid] + self.linger
            for u in uplinks
            if u.index in on_demand and u.profile.uuid in self._left_at
        ]
        return min((t for t in (*times, *self._retry_at.values()) if t > now), default=None)

    async def keep(
        self, uplinks: Sequence[Uplink], current: int | None, on_demand: frozenset[int], now: float
    ) -> None:
        left_at = {u.index: self._left_at[u.profile.uuid] for u in uplinks if u.profile.uuid in self._left_at}
        wanted = on_demand_wanted([u.health for u in uplinks], current, on_demand, left_at, now, self.linger)
        for index in on_demand:
            uplink = uplinks[index]
            uuid = uplink.profile.uuid
            if index in wanted and uplink.link.device is None and now >= self._retry_at.get(uuid, 0.0):
                await self._activate(uplink, now)
            elif index not in wanted and uplink.link.device is not None:
                try:
                    if await self.nm.deactivate(uuid):
                        self._down.add(uuid)
                        if uuid not in self._activated:
                            self._kept_down.add(uuid)
                        self._left_at.pop(uuid, None)
                        logger.info(
                            "{}: on demand, taken down while a more preferred uplink is up", uplink.label
                        )
                except NMError as exc:
                    logger.warning("{}: on demand, could not take it down: {}", uplink.label, exc)

    async def _activate(self, uplink: Uplink, now: float) -> None:
        uuid = uplink.profile.uuid
        try:
            await self.nm.activate(uuid)
        except NMError as exc:
            failures = self._failures.get(uuid, 0) + 1
            self._failures[uuid] = failures
            delay = backoff_delay(failures)
            self._retry_at[uuid] = now + delay
            if failures == 1:  # once: it is retried with back-off, quietly, until it works
                logger.warning("{}: on demand, could not activate it: {} (retrying)", uplink.label, exc)
            else:
                logger.debug("{}: on demand, activation attempt {} failed: {}", uplink.label, failures, exc)
            return
        if self._failures.pop(uuid, 0):
            logger.info("{}: on demand, activation taken on after earlier failures", uplink.label)
        self._retry_at.pop(uuid, None)
        self._activated.add(uuid)
        self._down.discard(uuid)
        logger.info("{}: on demand, activated: no more preferred uplink is up", uplink.label)

    async def restore(self, uplinks: Sequence[Uplink]) -> None:
        """Those it took down come back up, as they were before it started."""
        for uplink in uplinks:
            if uplink.profile.uuid in self._kept_down & self._down:
                try:
                    await self.nm.activate(uplink.profile.uuid)
                    logger.info("{}: on demand no more: activated again, as it was", uplink.label)
                except NMError as exc:
                    logger.error("{}: could not activate it again: {}", uplink.label, exc)
