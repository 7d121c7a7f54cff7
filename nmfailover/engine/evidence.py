"""The user's own traffic through each uplink as evidence: a watch of its device (nmfailover.traffic) that
wakes the uplink's probe loop the moment that traffic shows trouble, and the snapshots detection compares
(nmfailover.detection.read_traffic) at each round."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from functools import partial

from ..detection import Evidence, read_traffic
from ..traffic import TrafficCounters, TrafficWatch
from .intake import IDLE_BEAT
from .state import Uplink
from .supervisor import Job, Liveness, Supervisor

# Seconds over which the pace of the user's new connections and lookups is judged.
ACTIVE_WINDOW = 3.0


class TrafficEvidence:
    def __init__(self, syn_patience: float, dns_patience: float) -> None:
        self._syn_patience = syn_patience
        self._dns_patience = dns_patience
        # By the uplink's profile UUID, which stays when uplinks come and go and the rest move up or down.
        self._watches: dict[str, TrafficWatch] = {}
        self._seen: dict[str, deque[TrafficCounters]] = {}  # snapshots at its rounds, oldest first

    def job(self, uplink: Uplink, name: str, supervisor: Supervisor) -> Job:
        return partial(self.watch, uplink, supervisor.liveness(name, IDLE_BEAT * 2))

    def __call__(self, uplink: Uplink) -> Evidence:
        """What its traffic showed since its last round; asked once per round, when it is planned."""
        watch = self._watches.get(uplink.profile.uuid)
        if watch is None:
            return Evidence()
        now = watch.counters()
        seen = self._seen.setdefault(uplink.profile.uuid, deque())
        if not seen:
            seen.append(now)
            return Evidence()
        evidence = read_traffic(seen[-1], now, seen[0])
        seen.append(now)
        while len(seen) > 2 and now.at - seen[1].at >= ACTIVE_WINDOW:
            seen.popleft()
        return evidence

    async def watch(self, uplink: Uplink, live: Liveness) -> None:
        """Watch the uplink's device for as long as it has this name; a new name, a new watch."""
        while True:
            live.beat()
            device = uplink.link.interface
            if device is None:
                await asyncio.sleep(IDLE_BEAT / 5)
                continue
            watch = TrafficWatch(
                device, uplink.wake.set, patience=self._syn_patience, dns_patience=self._dns_patience
            )
            running = asyncio.ensure_future(watch.run())
            self._watches[uplink.profile.uuid] = watch
            try:
                while not running.done() and uplink.link.interface == device:
                    live.beat()
                    await asyncio.wait({running}, timeout=IDLE_BEAT / 5)
                if running.done():
                    running.result()  # it ends only by raising: the supervisor logs it and restarts this
            finally:
                self._watches.pop(uplink.profile.uuid, None)
                self._seen.pop(uplink.profile.uuid, None)
                await watch.aclose()
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
