"""Carrying a decision out through NetworkManager: rank the uplinks' route metrics (and autoconnect
priorities), verify what NetworkManager really applied, and put the profiles' own values back on stop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from loguru import logger

from .. import runstate
from ..config import Settings
from ..errors import NMError
from ..nm import LinkState, Metrics, Profile
from .state import Uplink


class NetworkManagerPort(Protocol):
    """What the engine needs of NetworkManager; nm.NetworkManagerClient is the real one."""

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def wait_for_disconnect(self) -> None: ...
    async def link_state(self, uuid: str) -> LinkState: ...
    async def set_route_metrics(self, device: str, metric4: int, metric6: int) -> bool: ...
    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool: ...
    async def profile(self, uuid: str) -> Profile: ...
    async def applied_metrics(self, device: str) -> Metrics: ...
    async def has_profile(self, uuid: str) -> bool: ...


class Actuator:
    def __init__(self, settings: Settings, nm: NetworkManagerPort, uplinks: Sequence[Uplink]) -> None:
        self.settings = settings
        self.nm = nm
        self.uplinks = uplinks
        self.applied_for: int | None = None  # the preference NetworkManager last confirmed
        self._original_priority: dict[str, int] = {}

    def remember_priorities(self) -> None:
        """Each profile's own autoconnect-priority, from a crashed earlier run if there was one."""
        if self.settings.manage_autoconnect_priority:
            self._original_priority = {
                u.profile.uuid: runstate.original_priority(u.profile.uuid, u.profile.autoconnect_priority)
                for u in self.uplinks
            }

    async def current_route(self) -> int | None:
        """The uplink NetworkManager routes through now, so a restart mid-failover keeps the hold-down."""
        metrics: list[tuple[int, int]] = []
        for uplink in self.uplinks:
            if uplink.link.activated and uplink.link.device is not None:
                try:
                    applied = await self.nm.applied_metrics(uplink.link.device)
                except NMError:
                    continue
                metric = applied.metric4 if applied.metric4 is not None and applied.metric4 >= 0 else 100
                metrics.append((metric, uplink.index))
        return min(metrics)[1] if metrics else None

    async def apply(self, preferred: int) -> None:
        """Give the preferred uplink the lowest metric and the rest theirs in priority order, then verify.

        The new preferred uplink is changed first, so traffic reaches it before the old one is demoted;
        autoconnect priorities come last, as they matter only for the next activation. A failure is logged
        and left for the next round to retry.
        """
        settings = self.settings
        ranking = [self.uplinks[preferred]] + [u for u in self.uplinks if u.index != preferred]
        ranked = [(u, settings.metric_base + rank * settings.metric_step) for rank, u in enumerate(ranking)]
        live = [
            (u, u.link.device, metric)
            for u, metric in ranked
            if u.link.activated and u.link.device is not None
        ]
        try:
            for uplink, device, metric in live:
                started = time.perf_counter()
                if await self.nm.set_route_metrics(device, metric, metric):
                    logger.info(
                        "{}: route metric {} applied in {:.0f} ms",
                        uplink.label,
                        metric,
                        (time.perf_counter() - started) * 1000,
                    )
            for uplink, device, metric in live:
                applied = await self.nm.applied_metrics(device)
                if {applied.metric4, applied.metric6} - {None} != {metric}:
                    raise NMError(
                        f"{uplink.label} runs with metrics {applied.metric4}/{applied.metric6}, "
                        f"expected {metric}"
                    )
            if settings.manage_autoconnect_priority:
                for rank, (uplink, _) in enumerate(ranked):
                    if not uplink.missing:
                        await self.nm.set_autoconnect_priority(uplink.profile.uuid, len(ranked) - rank)
        except NMError as exc:
            logger.error(
                "could not apply the preference for {}: {} (will retry)", self.uplinks[preferred].label, exc
            )
            return
        self.applied_for = preferred

    async def restore(self) -> None:
        """Give every uplink its profile's own metrics and autoconnect-priority back."""
        for uplink in self.uplinks:
            try:
                link = await self.nm.link_state(uplink.profile.uuid)
                saved = await self.nm.profile(uplink.profile.uuid)
                if link.activated and link.device is not None:
                    await self.nm.set_route_metrics(link.device, saved.metric4, saved.metric6)
                if uplink.profile.uuid in self._original_priority:
                    await self.nm.set_autoconnect_priority(
                        uplink.profile.uuid, self._original_priority[uplink.profile.uuid]
                    )
                    runstate.forget_priority(uplink.profile.uuid)
                logger.info("{}: restored its profile's own route metrics", uplink.label)
            except NMError as exc:
                logger.error("{}: could not restore its profile's values: {}", uplink.label, exc)
