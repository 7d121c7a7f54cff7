"""Fault-class matrix: every failure a user feels, on the primary's upstream, idle and with a user's traffic.

One row per fault class (nmfailover.lab.sandbox.Upstream's faults), each run twice per method: idle (nothing
but the method) and with a browser-like user (Topology.user_traffic: a name looked up through glibc and a
page fetched over a new connection every USER_INTERVAL s, resolving with the resolv.conf NetworkManager
writes). A timed row's figure is the repair time: from the fault to the default route on the backup, or,
for a dead resolver, to whichever comes first of that and a lookup answered within DNS_OK_WITHIN again
(recorded as `repaired_by`). Idle, the dead-resolver row still needs someone asking names to see them work
again: a lookup-only client every LOOKUP_INTERVAL s, no connections. A "no switch wanted" row counts the
switches over SOAK_SECONDS instead.

Each run builds a fresh lab (as bench/scenarios/failover.py does); `parallel` runs go at once, each in its
own lab, so a full run (5 runs per cell) fits in about half an hour. The labs share the machine's CPU,
which costs a run tens of milliseconds at worst; the figures here are seconds.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.common import CYCLE, STRESS_METHODS, Attempts, Results, Run, fmt, minus, now, say
from bench.measure import RouteStory, RouteWatch, Soak, inject_fault
from bench.methods import running
from bench.scenarios.brownout import HEAVY_LOSS, LIGHT_LOSS
from bench.scenarios.load import QUEUE_MS, QUEUE_READY, RATE_KBIT
from nmfailover.config import Settings
from nmfailover.lab.sandbox import NMLab, Upstream, UserTraffic
from nmfailover.lab.usertraffic import INTERVAL as USER_INTERVAL
from nmfailover.lab.usertraffic import UserAttempt, first_after

DETECT_LIMIT = 30.0  # seconds; a method that has not repaired by then is counted as never
SOAK_SECONDS = 60.0
DNS_OK_WITHIN = 1.0  # a lookup answered this fast again means name resolution works again
LOOKUP_INTERVAL = 1.0  # the idle dead-resolver row's lookups
TRAFFIC_WARMUP = 2.0  # user traffic before the fault: the method has seen it flow
# A fault comes at any moment of every method's cycle, nmfailover's cheap checks included (every 15 s while
# idle): the longest of them sets the span its moment is drawn from, the same for every method.
PHASE_SPAN = max(
    *(CYCLE[method] for method in STRESS_METHODS),
    float(Settings.model_fields["http_check_interval"].default),
    float(Settings.model_fields["dns_check_interval"].default),
)
ROUTE_STEP = 0.05  # RouteWatch's poll: seconds-scale figures, and several labs polling at once
OBSERVE_AFTER = 1.0  # the route is watched this much longer after the repair (does it stay?)
USER_GRACE = 5.0  # with traffic, then up to this much longer for the user's first good page
PARALLEL = 5
MODES = ("idle", "traffic")


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    fault: Callable[[Upstream], None] | None  # None: no fault (the load row)
    soak: bool = False  # a "no switch wanted" row: switches counted over the soak, nothing timed
    dns: bool = False  # repaired also by name resolution working again
    load: bool = False  # the primary kept full by a download (bench/scenarios/load.py's)


ROWS: tuple[Row, ...] = (
    Row("silent", "upstream silently dead (ICMP lost too)", Upstream.blackhole),
    Row(
        "dns",
        "the uplink's resolver dead, IP path alive",
        partial(Upstream.break_dns, kind="silent"),
        dns=True,
    ),
    Row("refused", "connections refused, ICMP answered", Upstream.refuse),
    Row("hang", "HTTP accepted, never answered", Upstream.hang),
    Row("portal302", "captive portal, 302 to a login page", partial(Upstream.portal, kind="redirect")),
    Row("portal200", "captive portal, 200 with a login page", partial(Upstream.portal, kind="login")),
    Row("loss", f"{HEAVY_LOSS} % loss each way", partial(Upstream.lossy, percent=HEAVY_LOSS)),
    Row(
        "loss-out",
        f"{HEAVY_LOSS} % loss toward the internet only",
        partial(Upstream.lossy, percent=HEAVY_LOSS, direction="to_internet"),
    ),
    Row(
        "light-loss",
        f"{LIGHT_LOSS} % loss each way (no switch wanted)",
        partial(Upstream.lossy, percent=LIGHT_LOSS),
        soak=True,
    ),
    Row("download", "a saturating download (no switch wanted)", None, soak=True, load=True),
)
ROW_KEYS = tuple(row.key for row in ROWS)


# -- one run -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _user(lab: NMLab, row: Row, mode: str, seconds: float) -> Iterator[UserTraffic | None]:
    """The user's traffic for `mode`, through the resolv.conf NetworkManager writes (so a change it makes to
    name resolution reaches the user, as on a real machine)."""
    if mode == "traffic":
        with lab.user_traffic(USER_INTERVAL, seconds=seconds, resolv_conf=lab.nm_resolv_conf) as traffic:
            yield traffic
    elif row.dns:
        with lab.user_traffic(
            LOOKUP_INTERVAL, seconds=seconds, resolv_conf=lab.nm_resolv_conf, lookup_only=True
        ) as traffic:
            yield traffic
    else:
        yield None


def _lookup_works(a: UserAttempt) -> bool:
    return a.lookup_ok and a.lookup_seconds is not None and a.lookup_seconds <= DNS_OK_WITHIN


def _dns_repaired(traffic: UserTraffic | None, since: float) -> float | None:
    """When the first lookup started after `since` came back within DNS_OK_WITHIN; None if none has."""
    if traffic is None:
        return None
    first = first_after(traffic.attempts(), since, _lookup_works)
    return None if first is None else first.lookup_ended


def _wait_repair(watch: RouteWatch, traffic: UserTraffic | None, row: Row, since: float) -> None:
    deadline = time.monotonic() + DETECT_LIMIT
    while time.monotonic() < deadline:
        if RouteStory.of(watch, since, "wanb").first is not None:
            return
        if row.dns and _dns_repaired(traffic, since) is not None:
            return
        time.sleep(0.1)


def _wait_user(traffic: UserTraffic, since: float) -> None:
    """A little longer for the user's first good page, if none yet (a method that restarts its links takes
    a while after the route to carry traffic)."""
    deadline = time.monotonic() + USER_GRACE
    while first_after(traffic.attempts(), since) is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _user_figures(traffic: UserTraffic | None, since: float, fault_at: float) -> Run:
    """What the user saw from the fault on (attempts started `since`): when a page first loaded again (from
    `fault_at`), and how many attempts failed before."""
    if traffic is None:
        return {}
    attempts = [a for a in traffic.attempts() if a.started >= since]
    good = first_after(attempts, since)
    return {
        "user_ok": minus(good.ended if good else None, fault_at),
        "user_failed_before_ok": sum(1 for a in attempts if not a.ok and (good is None or a.seq < good.seq)),
        "user_attempts": len(attempts),
        "user_outcomes": sorted({a.outcome for a in attempts}),
    }


def run_timed(row: Row, mode: str, method: str, workdir: Path) -> Run:
    assert row.fault is not None
    with running(method, workdir) as lab:
        with _user(lab, row, mode, DETECT_LIMIT + 60) as traffic:
            if traffic is not None:
                time.sleep(TRAFFIC_WARMUP)
            time.sleep(random.uniform(0, PHASE_SPAN))
            watch = RouteWatch(lab, step=ROUTE_STEP)
            t0 = inject_fault(lab, row.fault)
            applied = now()  # what started before this may have slipped through before the fault was whole
            _wait_repair(watch, traffic, row, applied)
            time.sleep(OBSERVE_AFTER)
            if traffic is not None and mode == "traffic":
                _wait_user(traffic, applied)
            watch.stop()
        # Read once the client has stopped: attempts still hanging then are in its record too.
        story = RouteStory.of(watch, t0, "wanb")
        dns = _dns_repaired(traffic, applied) if row.dns else None
        user = _user_figures(traffic, applied, t0)
    candidates = [(t, by) for t, by in ((story.first, "route"), (dns, "dns")) if t is not None]
    repaired, by = min(candidates) if candidates else (None, None)
    return {
        "fault_at": t0,
        "applied": applied - t0,
        "repair": minus(repaired, t0),  # None: not within DETECT_LIMIT
        "repaired_by": by,
        "route": minus(story.first, t0),
        "settled": minus(story.settled, t0),
        "dns_repair": minus(dns, t0),
        "no_route": story.no_route,
        "route_changes": story.changes,
        "workdir": str(workdir),
        **user,
    }


def run_soak(row: Row, mode: str, method: str, workdir: Path, seconds: float) -> Run:
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(running(method, workdir))
        download = (
            stack.enter_context(lab.loaded_primary(RATE_KBIT, QUEUE_MS, QUEUE_READY)) if row.load else None
        )
        traffic = stack.enter_context(_user(lab, row, mode, seconds + 60))
        watch = RouteWatch(lab, step=0.1)  # minutes of watching need no finer grain
        if row.fault is not None:
            row.fault(lab.upstreams[0])
        start, rx0 = now(), lab.iface_bytes("wana")[0]
        time.sleep(seconds)
        elapsed, rx = now() - start, lab.iface_bytes("wana")[0] - rx0
        watch.stop()
        restarts = download.starts - 1 if download is not None else None
        attempts = traffic.attempts() if traffic is not None else []
    soak = Soak.of(watch)
    run: Run = {
        "seconds": elapsed,
        "switches": soak.switches,
        "off_primary": soak.off_primary,
        "route_changes": watch.changes,
        "workdir": str(workdir),
    }
    if download is not None:
        # The premise: a primary not kept full tested nothing.
        run["mbit_per_s"] = rx * 8 / elapsed / 1e6
        run["download_restarts"] = restarts
    if traffic is not None:
        done = [a for a in attempts if a.started >= start and a.outcome != "unfinished"]
        run["user_attempts"] = len(done)
        run["user_ok_share"] = sum(a.ok for a in done) / len(done) if done else None
    return run


# -- the part ----------------------------------------------------------------------------------------------


def part(
    results: Results,
    runs: int,
    workdir: Path,
    attempts: Attempts,
    *,
    rows: tuple[str, ...] = ROW_KEYS,
    modes: tuple[str, ...] = MODES,
    parallel: int = PARALLEL,
    soak_seconds: float = SOAK_SECONDS,
) -> None:
    """`runs` runs of every row, mode and method, `parallel` at a time, into results["matrix"]."""
    unknown = set(rows) - set(ROW_KEYS) or set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown matrix rows or modes: {', '.join(sorted(unknown))}")
    chosen = [row for row in ROWS if row.key in rows]
    cells: dict[str, dict[str, dict[str, list[Run]]]] = {
        row.key: {mode: {m: [] for m in STRESS_METHODS} for mode in modes} for row in chosen
    }
    results["matrix"] = {
        "rows": {row.key: {"title": row.title, "soak": row.soak, "dns": row.dns} for row in chosen},
        "modes": list(modes),
        "methods": list(STRESS_METHODS),
        "runs": runs,
        "detect_limit": DETECT_LIMIT,
        "soak_seconds": soak_seconds,
        "dns_ok_within": DNS_OK_WITHIN,
        "user_interval": USER_INTERVAL,
        "lookup_interval": LOOKUP_INTERVAL,
        "parallel": parallel,
        "cells": cells,
    }
    soaks: list[tuple[str, Row, str, str, Callable[[], Run]]] = []
    timed: list[tuple[str, Row, str, str, Callable[[], Run]]] = []
    for i in range(runs):
        for row in chosen:
            for mode in modes:
                for method in STRESS_METHODS:
                    jobdir = workdir / f"matrix-{row.key}-{mode}-{method}-{i}"
                    jobdir.mkdir(parents=True, exist_ok=True)
                    job = (
                        partial(run_soak, row, mode, method, jobdir, soak_seconds)
                        if row.soak
                        else partial(run_timed, row, mode, method, jobdir)
                    )
                    (soaks if row.soak else timed).append(
                        (f"matrix/{row.key}/{mode}/{method}/{i}", row, mode, method, job)
                    )
    random.shuffle(soaks)  # no cell always runs beside the same others
    random.shuffle(timed)
    # The long soaks first, the short timed runs after: the pool's last minutes are not one soak alone.
    jobs = soaks + timed
    began = time.monotonic()

    def work(label: str, row: Row, mode: str, method: str, job: Callable[[], Run]) -> None:
        run = attempts.run(label, job)
        if run is None:
            return
        cells[row.key][mode][method].append(run)
        figure = f"{run['switches']} switches" if row.soak else f"repair {fmt(run['repair'])}"
        by = f" by {run['repaired_by']}" if run.get("repaired_by") == "dns" else ""
        say(f"matrix {row.key:10} {mode:7} {method:20} {figure}{by}  ({time.monotonic() - began:.0f} s)")

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="matrix") as pool:
        for future in [pool.submit(work, *job) for job in jobs]:
            future.result()
    results["matrix"]["elapsed_s"] = time.monotonic() - began
