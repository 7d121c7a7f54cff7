"""Failover: a fault on the primary's upstream -> the kernel's default route on the backup for good.

Each run builds a fresh sandbox, starts one method, waits a random phase of its probe cycle, injects the
fault (blackhole, refuse or a pulled cable) and watches the route every 10 ms.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.common import (
    FAILOVER_METHODS,
    NM_FAST_INTERVAL,
    NMC,
    NMC_FAST,
    NMF,
    NMF_ACTIVE_INTERVAL,
    SCENARIOS,
    VF,
    VF_PRIMARY_INTERVAL,
    Attempts,
    Results,
    Run,
    fmt,
    minus,
    say,
)
from bench.measure import RouteStory, RouteWatch, deactivations, inject, log_lines, log_time, nm_log_offset
from bench.methods import VirtualFailover, daemon_in
from bench.scenarios.nm_check import run_nm_check
from nmfailover.lab.sandbox import NMLab


def _not_counted(scenario: str) -> tuple[str, ...]:
    # A pulled cable deactivates the cut link by itself: only the method's own restarts count.
    return ("wana",) if scenario == "cable" else ()


def run_nmfailover(scenario: str, workdir: Path) -> Run:
    with NMLab(2) as lab, daemon_in(lab, workdir / "nmfailover.log") as daemon:
        phase = random.uniform(0, NMF_ACTIVE_INTERVAL)
        time.sleep(phase)
        watch = RouteWatch(lab)
        offset = nm_log_offset(lab)
        t0 = inject(lab, scenario)
        reached = watch.wait("wanb", 30)
        time.sleep(1.0)  # observe that it stays
        watch.stop()
        text = daemon.text()
        dead = deactivations(lab, offset, exclude=_not_counted(scenario))
    story = RouteStory.of(watch, t0, "wanb")
    decisions = log_lines(text, r"-> switching to backup")
    decided = log_time(decisions[0]) if decisions else None
    return {
        "phase": phase,
        "fault_at": t0,
        "reached": reached,
        "failover": minus(story.settled, t0),
        "first": minus(story.first, t0),
        "decision": minus(decided, t0),
        "actuation": minus(story.settled, decided),
        "no_route": story.no_route,
        "route_changes": story.changes,
        "deactivations": dead,
        "switches": len(decisions),
    }


def run_virtual_failover(scenario: str, workdir: Path) -> Run:
    with NMLab(2) as lab:
        vf = VirtualFailover(lab)
        try:
            if vf.event("ready", 30) is None:
                raise RuntimeError("alt_virtual_failover never got ready: " + "\n".join(vf.lines))
            phase = random.uniform(0, VF_PRIMARY_INTERVAL)
            time.sleep(phase)
            watch = RouteWatch(lab)
            offset = nm_log_offset(lab)
            t0 = inject(lab, scenario)
            reached = watch.wait("wanb", 40)
            # Its switch restarts both links; the route is only final once that is over.
            switched = vf.event("switched to backup", 20)
            time.sleep(1.5)
            watch.stop()
            decided = vf.event("switching to backup", 0)
        finally:
            vf.stop()
        dead = deactivations(lab, offset, exclude=_not_counted(scenario))
        on_disk = lab.nmcli("-g", "ipv4.route-metric", "connection", "show", "primary").strip()
    story = RouteStory.of(watch, t0, "wanb")
    return {
        "phase": phase,
        "fault_at": t0,
        "reached": reached,
        "failover": minus(story.settled, t0),
        "first": minus(story.first, t0),
        "decision": minus(decided, t0),
        "actuation": minus(story.settled, decided),
        "switch_done": minus(switched, t0),
        "no_route": story.no_route,
        "route_changes": story.changes,
        "deactivations": dead,
        "primary_metric_on_disk_after": on_disk,
    }


def part(results: Results, runs: int, workdir: Path, attempts: Attempts) -> None:
    """`runs` rounds of every scenario with every method, into results["failover"][scenario][method]."""
    fo: dict[str, dict[str, list[Run]]] = {s: {m: [] for m in FAILOVER_METHODS} for s in SCENARIOS}
    results["failover"] = fo
    for i in range(runs):
        for scenario in SCENARIOS:
            jobs: list[tuple[str, Callable[[], Run]]] = [
                (NMF, partial(run_nmfailover, scenario, workdir)),
                (VF, partial(run_virtual_failover, scenario, workdir)),
                (NMC_FAST, partial(run_nm_check, scenario, triggered=False, interval=NM_FAST_INTERVAL)),
            ]
            if scenario == "cable":  # NM reacts to carrier itself; no check period involved
                jobs.append((NMC, partial(run_nm_check, "cable", triggered=False)))
            random.shuffle(jobs)  # no method always runs first after another one's teardown
            for method, job in jobs:
                run = attempts.run(f"{scenario}/{method}/{i}", job)
                if run is not None:
                    fo[scenario][method].append(run)
                    say(f"run {i + 1}/{runs} {scenario:9} {method:17} failover {fmt(run['failover'])}")
