"""Brownout: the primary's upstream loses packets instead of dying (Upstream.lossy: each way on its own).

Heavy loss -> the time until the default route moves to the backup; light loss for a minute -> how often
the route moved at all (it should not: the primary still carries traffic).
"""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

from bench.common import CYCLE, STRESS_METHODS, Attempts, Results, Run, fmt, minus, say
from bench.measure import RouteStory, RouteWatch, Soak, inject
from bench.methods import running

HEAVY_LOSS = 60  # percent, each way
LIGHT_LOSS = 15
DETECT_LIMIT = 60.0  # seconds; a method that has not moved by then is counted as never


def run_heavy(method: str, workdir: Path) -> Run:
    with running(method, workdir) as lab:
        time.sleep(random.uniform(0, CYCLE[method]))
        watch = RouteWatch(lab)
        t0 = inject(lab, "lossy", HEAVY_LOSS)
        reached = watch.wait("wanb", DETECT_LIMIT)
        time.sleep(1.0)
        watch.stop()
    story = RouteStory.of(watch, t0, "wanb")
    return {
        "fault_at": t0,
        "reached": reached,
        "moved": minus(story.first, t0),  # None: not within DETECT_LIMIT
        "failover": minus(story.settled, t0),
        "no_route": story.no_route,
        "route_changes": story.changes,
    }


def run_light(method: str, workdir: Path, seconds: float) -> Run:
    with running(method, workdir) as lab:
        watch = RouteWatch(lab, step=0.1)
        lab.upstreams[0].lossy(LIGHT_LOSS)
        time.sleep(seconds)
        watch.stop()
    soak = Soak.of(watch)
    return {
        "seconds": seconds,
        "switches": soak.switches,
        "off_primary": soak.off_primary,
        "route_changes": watch.changes,
    }


def part(
    results: Results, runs: int, light_runs: int, seconds: float, workdir: Path, attempts: Attempts
) -> None:
    """`runs` heavy-loss runs and `light_runs` light-loss runs of `seconds` per method, into
    results["brownout"]."""
    heavy: dict[str, list[Run]] = {m: [] for m in STRESS_METHODS}
    light: dict[str, list[Run]] = {m: [] for m in STRESS_METHODS}
    results["brownout"] = {
        "heavy_loss": HEAVY_LOSS,
        "light_loss": LIGHT_LOSS,
        "light_seconds": seconds,
        "detect_limit": DETECT_LIMIT,
        "heavy": heavy,
        "light": light,
    }
    for i in range(max(runs, light_runs)):
        methods = list(STRESS_METHODS)
        random.shuffle(methods)
        for method in methods:
            if i < runs:
                run = attempts.run(f"brownout/{method}/{i}", partial(run_heavy, method, workdir))
                if run is not None:
                    heavy[method].append(run)
                    say(f"brownout {i + 1}/{runs} {HEAVY_LOSS} % {method:20} route moved {fmt(run['moved'])}")
            if i < light_runs:
                run = attempts.run(f"light-loss/{method}/{i}", partial(run_light, method, workdir, seconds))
                if run is not None:
                    light[method].append(run)
                    say(
                        f"brownout {i + 1}/{light_runs} {LIGHT_LOSS} % {method:20} {run['switches']} switches"
                    )
