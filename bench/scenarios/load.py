"""Under load: the primary rate-limited with a deep queue and kept full by a bulk download, as in
tests/test_busy.py (every answer through it, probes included, waits over a second in that queue).

Two kinds of run per method: a silent cut (blackhole) of the loaded primary -> the default route on the
backup, and minutes of the same load with no fault at all, counting the switches it caused.
"""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

from bench.common import CYCLE, STRESS_METHODS, Attempts, Results, Run, fmt, minus, say
from bench.measure import RouteStory, RouteWatch, Soak, inject
from bench.methods import running

RATE_KBIT = 4000
QUEUE_MS = 1200  # 1-2 s of queueing is common on DSL, cable and 4G; longer than most probes' timeouts
QUEUE_READY = 1.0  # seconds of queue the download must have built before anything is measured
SETTLE_SECONDS = 10.0  # load before the cut: the method has seen the busy link for a few rounds
FAILOVER_LIMIT = 40.0  # NM's check needs its fixed 20 s timeout plus a period


def run_cut(method: str, workdir: Path) -> Run:
    with running(method, workdir) as lab, lab.loaded_primary(RATE_KBIT, QUEUE_MS, QUEUE_READY):
        time.sleep(SETTLE_SECONDS + random.uniform(0, CYCLE[method]))
        stats = lab.upstreams[0].queue_stats()
        watch = RouteWatch(lab)
        # A method that already left the busy primary has nothing left to fail over: counted apart.
        at_cut = lab.default_route(4)
        t0 = inject(lab, "blackhole")
        reached = watch.wait("wanb", FAILOVER_LIMIT) if at_cut == "wana" else None
        time.sleep(1.0)
        watch.stop()
    story = RouteStory.of(watch, t0, "wanb")
    failed_over = at_cut == "wana"
    return {
        "route_at_cut": at_cut,
        "queue_at_cut": stats.delay if stats is not None else None,
        "fault_at": t0,
        "reached": reached,
        "failover": minus(story.settled, t0) if failed_over else None,
        "first": minus(story.first, t0) if failed_over else None,
        "no_route": story.no_route,
        "route_changes": story.changes,
    }


def run_soak(method: str, workdir: Path, seconds: float) -> Run:
    with running(method, workdir) as lab, lab.loaded_primary(RATE_KBIT, QUEUE_MS, QUEUE_READY) as download:
        # Minutes of watching need no 10 ms resolution, and the coarser poll leaves the CPU to the methods.
        watch = RouteWatch(lab, step=0.1)
        rx0, start = lab.iface_bytes("wana")[0], time.monotonic()
        time.sleep(seconds)
        rx, elapsed = lab.iface_bytes("wana")[0] - rx0, time.monotonic() - start
        watch.stop()
        restarts = download.starts - 1
    soak = Soak.of(watch)
    return {
        "seconds": elapsed,
        "switches": soak.switches,
        "off_primary": soak.off_primary,
        "route_changes": watch.changes,
        # The premise: a primary not kept full tested nothing.
        "mbit_per_s": rx * 8 / elapsed / 1e6,
        "download_restarts": restarts,
    }


def part(
    results: Results, runs: int, soak_runs: int, seconds: float, workdir: Path, attempts: Attempts
) -> None:
    """`runs` cuts and `soak_runs` soaks of `seconds` per method, into results["under_load"]."""
    cuts: dict[str, list[Run]] = {m: [] for m in STRESS_METHODS}
    soaks: dict[str, list[Run]] = {m: [] for m in STRESS_METHODS}
    results["under_load"] = {
        "rate_kbit": RATE_KBIT,
        "queue_ms": QUEUE_MS,
        "soak_seconds": seconds,
        "failover_limit": FAILOVER_LIMIT,
        "failover": cuts,
        "soak": soaks,
    }
    for i in range(max(runs, soak_runs)):
        methods = list(STRESS_METHODS)
        random.shuffle(methods)  # no method always runs first after another one's teardown
        for method in methods:
            if i < runs:
                run = attempts.run(f"load-cut/{method}/{i}", partial(run_cut, method, workdir))
                if run is not None:
                    cuts[method].append(run)
                    say(
                        f"load {i + 1}/{runs} cut  {method:20} route at the cut {run['route_at_cut']}, "
                        f"failover {fmt(run['failover'])}"
                    )
            if i < soak_runs:
                run = attempts.run(f"load-soak/{method}/{i}", partial(run_soak, method, workdir, seconds))
                if run is not None:
                    soaks[method].append(run)
                    say(
                        f"load {i + 1}/{soak_runs} soak {method:20} {run['switches']} switches, "
                        f"{run['mbit_per_s']:.2f} Mbit/s"
                    )
