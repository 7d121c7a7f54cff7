"""Failback: the primary's upstream heals -> the default route back on the primary, after the hold-down.

nmfailover only (the other methods have no hold-down to honour). The hold-down must be served after the
primary is seen up again, so each run also times "primary up" from the daemon's log.
"""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

from bench.common import (
    DEFAULT_HOLD_DOWN,
    FAILBACK_HOLD_DOWN,
    NMF_ACTIVE_INTERVAL,
    Attempts,
    Results,
    Run,
    fmt,
    minus,
    now,
    say,
)
from bench.measure import RouteStory, RouteWatch, log_lines, log_time
from bench.methods import daemon_in
from nmfailover.lab.sandbox import NMLab

DEFAULT_HOLD_DOWN_RUNS = 3  # each takes over half a minute of waiting


def run_failback(workdir: Path, hold_down: float) -> Run:
    with (
        NMLab(2) as lab,
        daemon_in(lab, workdir / "failback.log", failback_hold_down=f"{hold_down:g}") as daemon,
    ):
        time.sleep(random.uniform(0, NMF_ACTIVE_INTERVAL))
        lab.upstreams[0].blackhole()
        if daemon.wait_route("wanb", timeout=30) is None:
            raise RuntimeError("no failover")
        time.sleep(random.uniform(0, NMF_ACTIVE_INTERVAL))
        watch = RouteWatch(lab)
        healed = now()
        lab.upstreams[0].heal()
        back = watch.wait("wana", hold_down + 30)
        watch.stop()
        text = daemon.text()
    story = RouteStory.of(watch, healed, "wana")
    # The tolerance covers the log's millisecond stamps against the unrounded clock.
    ups = [log_time(line) for line in log_lines(text, r"primary \(wana\) up: ")]
    ups = [t for t in ups if t >= healed - 0.01]
    up_at = ups[0] if ups else None
    return {
        "hold_down": hold_down,
        "healed_at": healed,
        "reached": back,
        "failback": minus(story.settled, healed),
        "primary_up": minus(up_at, healed),
        "held": minus(story.settled, up_at),
        "honoured": story.settled is not None and up_at is not None and story.settled - up_at >= hold_down,
        "switches": len(log_lines(text, r"-> switching to")),
    }


def part(results: Results, runs: int, workdir: Path, attempts: Attempts) -> None:
    """`runs` failbacks with the shortened hold-down, into results["failback"]."""
    fb: list[Run] = []
    for i in range(runs):
        run = attempts.run(f"failback/{i}", partial(run_failback, workdir, FAILBACK_HOLD_DOWN))
        if run is not None:
            fb.append(run)
            say(
                f"failback {i + 1}/{runs}: {fmt(run['failback'])} after heal, {fmt(run['held'])} "
                f"after the primary was up again"
            )
    results["failback"] = fb


def runs_at_default_hold_down(workdir: Path) -> list[Run]:
    """A few failbacks at the daemon's default hold-down. Unwrapped: they run at the end of the footprint's
    background part, so a failure ends that part and is reported as its error."""
    return [run_failback(workdir, DEFAULT_HOLD_DOWN) for _ in range(DEFAULT_HOLD_DOWN_RUNS)]
