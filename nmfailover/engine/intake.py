"""Event intake: NetworkManager's typed events (and the loss of our bus connection) become re-read links,
immediate probes, routing tables that follow the uplinks' addresses, and a fresh decision."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from loguru import logger

from ..bus import connect_with_backoff, until_lost
from ..detection import Watch
from ..errors import NMError, NMUnavailable
from ..nm import (
    ActiveConnectionsChanged,
    CarrierChanged,
    DevicesChanged,
    DeviceStateChanged,
    IpConfigChanged,
    LinkState,
    NMEvent,
    NMStarted,
    NMStopped,
    ProfilesChanged,
)
from ..policy import UplinkHealth
from .actuator import Actuator, NetworkManagerPort
from .state import Uplink
from .supervisor import Supervisor

BURST = 0.02  # the signals of one change arrive together: collect them, then act once
# A NetworkManager that has just started re-activates its connections: their links are read once it has
# (or after this long), so that a restart never reads as every link gone.
STARTUP_WAIT = 15.0
STARTUP_POLL = 0.2
IDLE_BEAT = 5.0  # an idle loop still proves it is alive this often


@runtime_checkable
class StartupWatch(Protocol):
    async def starting_up(self) -> bool: ...


class EventIntake:
    def __init__(
        self,
        nm: NetworkManagerPort,
        uplinks: Sequence[Uplink],
        actuator: Actuator,
        supervisor: Supervisor,
        reconcile: Callable[[], Awaitable[None]],
        *,
        discover: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.nm = nm
        self.discover = discover  # uplinks found at run time: which they are may change with any event
        self.uplinks = uplinks
        self.actuator = actuator
        self.supervisor = supervisor
        self._reconcile = reconcile
        self._queue: asyncio.Queue[NMEvent] = asyncio.Queue()

    def put(self, event: NMEvent) -> None:
        """Called by the adapter from the bus reader; must not block."""
        self._queue.put_nowait(event)

    async def events(self, name: str) -> None:
        live = self.supervisor.liveness(name, IDLE_BEAT + 60.0)
        # (Re)started: whatever happened while nobody listened is in the links, so read them now.
        await self.handle([ActiveConnectionsChanged()])
        while True:
            live.beat()
            try:
                async with asyncio.timeout(IDLE_BEAT):
                    burst = [await self._queue.get()]
            except TimeoutError:
                continue
            await asyncio.sleep(BURST)
            while not self._queue.empty():
                burst.append(self._queue.get_nowait())
            live.beat()
            await self.handle(burst)

    async def handle(self, burst: Sequence[NMEvent]) -> None:
        logger.debug("NetworkManager events: {}", burst)
        presence = [e for e in burst if isinstance(e, NMStarted | NMStopped)]
        match presence[-1] if presence else None:
            case NMStopped():
                logger.warning("NetworkManager left the bus; probing goes on, changes wait for its return")
                return
            case NMStarted():
                await self._startup_done()
                logger.info("NetworkManager is back; re-reading links and re-applying the preference")
                self.actuator.forget_applied()
                for uplink in self.uplinks:
                    self.actuator.forget_source_routing(uplink.index)
                    self.actuator.forget_dns(uplink.index)
        try:
            if self.discover is not None:
                await self.discover()
            changed = await self.refresh_links()
        except NMError as exc:
            logger.warning("cannot read links after an event: {}", exc)
            return
        wake: set[int] = {u.index for u in changed}
        for event in burst:
            match event:
                case CarrierChanged():
                    # A carrier change shows in no link field NetworkManager reports yet: probe every uplink.
                    wake.update(u.index for u in self.uplinks)
                case DeviceStateChanged(device=device) | DevicesChanged(device=device):
                    wake.update(u.index for u in self.uplinks if u.link.device == device)
                case (
                    ProfilesChanged()
                    | ActiveConnectionsChanged()
                    | IpConfigChanged()
                    | NMStarted()
                    | NMStopped()
                ):
                    pass
        for index in wake:
            self.uplinks[index].recheck()
        # Whatever the decision: a new DHCP lease or prefix must reach the uplink's rules even while no
        # uplink is healthy enough for the preference to be applied.
        await self.actuator.route_by_source()
        await self.actuator.apply_dns()
        await self._reconcile()

    async def _startup_done(self) -> None:
        if not isinstance(self.nm, StartupWatch):
            return
        deadline = self.supervisor.clock() + STARTUP_WAIT
        with contextlib.suppress(NMError):
            while await self.nm.starting_up() and self.supervisor.clock() < deadline:
                await asyncio.sleep(STARTUP_POLL)

    async def refresh_links(self) -> list[Uplink]:
        """Re-read every uplink's link; return those whose link changed in a way a probe should see."""
        changed = []
        for uplink in self.uplinks:
            try:
                link = await self.nm.link_state(uplink.profile.uuid)
            except NMUnavailable:
                raise
            except NMError as exc:
                logger.error("{}: cannot read its link: {}", uplink.label, exc)
                link = LinkState(uuid=uplink.profile.uuid)
            if link.device is None or uplink.missing:
                await self._check_profile_exists(uplink)
            old = uplink.link
            if (link.device, link.active, link.interface, link.state, link.nameservers) != (
                old.device,
                old.active,
                old.interface,
                old.state,
                old.nameservers,
            ):
                if old.state or link.state:
                    logger.info("{}: link {} -> {}", uplink.label, old.state_name, link.state_name)
                reactivated = link.active != old.active
                if link.activated and (not old.activated or reactivated):
                    # A fresh activation brings back the profile's own metrics.
                    self.actuator.forget_applied()
                if link.activated and link.active != uplink.activation:
                    # A new activation (not a read that failed in between) is a new link: a new lease, maybe
                    # another router. It is judged afresh, at once, by one round as at start; only its flap
                    # history stays.
                    relinked = uplink.activation is not None  # not its first activation in this run
                    uplink.watch = Watch(health=UplinkHealth(downs=uplink.health.downs, relinked=relinked))
                    uplink.activation, uplink.activated_at = link.active, self.supervisor.clock()
                if link.device != old.device or link.activated != old.activated or reactivated:
                    # ...and a new applied connection, without our table and rules.
                    self.actuator.forget_source_routing(uplink.index)
                    self.actuator.forget_dns(uplink.index)
                changed.append(uplink)
            uplink.link = link
        return changed

    async def _check_profile_exists(self, uplink: Uplink) -> None:
        exists = await self.nm.has_profile(uplink.profile.uuid)
        if not exists and not uplink.missing:
            logger.error(
                "{}: its profile {!r} ({}) was deleted from NetworkManager; it counts as down until a "
                "profile with this UUID returns",
                uplink.label,
                uplink.profile.id,
                uplink.profile.uuid,
            )
        elif exists and uplink.missing:
            logger.info("{}: its profile {!r} is back", uplink.label, uplink.profile.id)
        uplink.missing = not exists

    async def bus(self, name: str) -> None:
        """Reconnect after the system bus connection is lost (a restarted dbus-daemon)."""
        live = self.supervisor.liveness(name, IDLE_BEAT + 15.0)
        while True:
            await until_lost(self.nm.wait_for_disconnect, live.beat, IDLE_BEAT)
            logger.warning("lost the system bus connection; reconnecting")
            await self.nm.close()
            await connect_with_backoff(
                self.nm.connect, NMError, _log_failed_reconnect, beat=live.beat, after_loss=True
            )
            logger.info("reconnected to the system bus")
            self.put(NMStarted())


def _log_failed_reconnect(exc: NMError, attempt: int, _delay: float) -> None:
    logger.debug("reconnect attempt {} failed: {}", attempt, exc)
