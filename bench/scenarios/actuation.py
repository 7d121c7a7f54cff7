"""Switch actuation: how long nmfailover's switch takes once decided, measured directly.

The same calls as the daemon (NetworkManagerClient.set_route_metrics: GetAppliedConnection + Reapply),
timed with perf_counter, alternating the route between the two uplinks.
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.common import Results
from nmfailover.lab.sandbox import NMLab
from nmfailover.nm import NetworkManagerClient

SWITCHES = 20
PREFERRED, DEMOTED = 100, 200  # route metrics, IPv4 and IPv6 alike


def _poll_route(lab: NMLab, device: str, deadline: float) -> float:
    while lab.default_route(4) != device:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the default route never moved to {device}")
    return time.perf_counter()


async def _reapply_latency(lab: NMLab, switches: int) -> list[dict[str, float]]:
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = lab.bus_address
    client = NetworkManagerClient()
    await client.connect()
    try:
        profiles = await client.resolve(["primary", "backup"])
        devices = {}
        for profile in profiles:
            link = await client.link_state(profile.uuid)
            assert link.device is not None and link.interface is not None
            devices[link.interface] = link.device
        out = []
        current = "wana"
        for _ in range(switches):
            new = "wanb" if current == "wana" else "wana"
            started = time.perf_counter()
            # nmfailover's order: promote the new uplink first, then demote the old one.
            await client.set_route_metrics(devices[new], PREFERRED, PREFERRED)
            promoted = time.perf_counter()
            await client.set_route_metrics(devices[current], DEMOTED, DEMOTED)
            demoted = time.perf_counter()
            # Blocking on purpose: nothing else runs on this loop, and a sleep-free poll is the finest timer.
            in_kernel = _poll_route(lab, new, deadline=started + 10)
            out.append(
                {
                    "reapply": promoted - started,
                    "reapply2": demoted - promoted,
                    "kernel": in_kernel - started,
                }
            )
            current = new
            await asyncio.sleep(0.2)
        return out
    finally:
        await client.close()


def run_actuation(switches: int) -> list[dict[str, float]]:
    with NMLab(2) as lab:
        return asyncio.run(_reapply_latency(lab, switches))


def part(results: Results) -> None:
    """SWITCHES switches in one sandbox, into results["actuation"]."""
    results["actuation"] = run_actuation(SWITCHES)
