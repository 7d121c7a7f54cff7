"""NetworkManager's own connectivity check: fault -> default route on the backup.

A fault lands at a random moment of NM's 300 s check period, so timing it unprompted takes minutes per run.
The table derives its times instead from runs with a check started right at the fault (its own latency)
plus the wait for the next periodic check; one unprompted run (in the background) checks the derivation.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from functools import partial

from bench.common import (
    NM_INTERVAL,
    NM_TIMEOUT,
    POLL,
    Attempts,
    Results,
    Run,
    fmt,
    minus,
    nm_connectivity,
    say,
)
from bench.measure import RouteStory, RouteWatch, deactivations, inject, nm_log_offset
from bench.methods import trigger_nm_check, wait_nm_full
from nmfailover.lab.sandbox import NMLab

TRIGGERED_SCENARIOS = ("blackhole", "refuse")  # a pulled cable is seen by carrier, not by the check


def run_nm_check(scenario: str, triggered: bool, timeout: float = 60, interval: float = NM_INTERVAL) -> Run:
    """NetworkManager's own check, run every `interval` s. `triggered`: ask for a check right after the fault
    (measures the check's own latency; the wait for the next periodic check is added from the interval)."""
    with NMLab(2, extra_nm_config=nm_connectivity(interval)) as lab:
        wait_nm_full(lab)
        periodic = not triggered and scenario != "cable"
        phase = random.uniform(0, interval if periodic else 2.0)
        if periodic and interval > 60:
            say(
                f"  NM connectivity check, periodic: fault in {phase:.0f} s, then up to {interval:g} + "
                f"{NM_TIMEOUT:g} s for the next check"
            )
        time.sleep(phase)
        # Minutes of watching need no 10 ms resolution, and a coarser poll spares the timed runs alongside.
        watch = RouteWatch(lab, step=POLL if timeout <= 60 else 0.1)
        offset = nm_log_offset(lab)
        t0 = inject(lab, scenario)
        check = trigger_nm_check(lab) if triggered else None
        reached = watch.wait("wanb", timeout)
        time.sleep(1.0)
        watch.stop()
        if check is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                check.wait(30)
        dead = deactivations(lab, offset, exclude=("wana",) if scenario == "cable" else ())
        routes = lab.default_routes(4)
    story = RouteStory.of(watch, t0, "wanb")
    return {
        "phase": phase,
        "fault_at": t0,
        "triggered": triggered,
        "reached": reached,
        "failover": minus(story.settled, t0),
        "first": minus(story.first, t0),
        "no_route": story.no_route,
        "route_changes": story.changes,
        "deactivations": dead,
        "routes_after": routes,
    }


def run_periodic() -> Run:
    """One unprompted run: the fault at a random moment, then up to a whole period plus the timeout."""
    return run_nm_check("blackhole", triggered=False, timeout=NM_INTERVAL + NM_TIMEOUT + 30)


def part_triggered(results: Results, runs: int, attempts: Attempts) -> None:
    """`runs` runs per scenario with a check started at the fault, into results["nm_triggered"]."""
    results["nm_triggered"] = {}
    for scenario in TRIGGERED_SCENARIOS:
        done: list[Run] = []
        for i in range(runs):
            run = attempts.run(
                f"nm-triggered/{scenario}/{i}", partial(run_nm_check, scenario, triggered=True)
            )
            if run is not None:
                done.append(run)
                say(f"NM check started at the fault, {scenario}: {fmt(run['failover'])}")
        results["nm_triggered"][scenario] = done
