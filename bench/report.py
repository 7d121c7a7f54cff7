"""Reporting: quantiles of the raw runs and the markdown table of bench/README.md, one function a section.

Works on the JSON results alone, so `--table-from` can redraw the table of an earlier run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    DEFAULT_HOLD_DOWN,
    FAILBACK_HOLD_DOWN,
    METHOD_TITLES,
    METHODS,
    NM_INTERVAL,
    NMC,
    NMF,
    POLL,
    SCENARIOS,
    VF,
    Results,
    Run,
    fmt,
)

# median, p90, worst and n (the number of runs; 0 for a derived figure)
Quantiles = dict[str, float]
Summary = dict[str, Any]

SCENARIO_TITLES = {
    "blackhole": "Failover: silent upstream death (blackhole)",
    "refuse": "Failover: hard failure (connection refused)",
    "cable": "Failover: pulled cable",
}


def quantiles(values: list[float]) -> Quantiles | None:
    if not values:
        return None
    ordered = sorted(values)
    # p90 by the nearest-rank method: with 10 runs it is the 9th, never an interpolation past the data.
    p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]
    return {"median": statistics.median(ordered), "p90": p90, "worst": ordered[-1], "n": len(ordered)}


def derived_nm(latency: float) -> Quantiles:
    """Detection when the fault lands at a uniformly random moment of NM's check period: U(0, period) + L."""
    return {
        "median": NM_INTERVAL * 0.5 + latency,
        "p90": NM_INTERVAL * 0.9 + latency,
        "worst": NM_INTERVAL + latency,
        "n": 0,
    }


@dataclass
class Table:
    lines: list[str] = field(default_factory=list)

    def title(self, text: str) -> None:
        self.lines.append(f"| **{text}** | | | | |")

    def row(self, label: str, q: Quantiles | None, note: str = "") -> None:
        if q is None:
            self.lines.append(f"| {label} | - | - | - | {note} |")
            return
        self.lines.append(f"| {label} | {fmt(q['median'])} | {fmt(q['p90'])} | {fmt(q['worst'])} | {note} |")

    def ratio(self, label: str, a: Quantiles | None, b: Quantiles | None) -> None:
        if a is None or b is None:
            return
        r = [a[k] / b[k] if b[k] else float("nan") for k in ("median", "p90", "worst")]
        # A tiny ratio would print as 0.00: one more digit keeps it readable.
        worst = f"{r[2]:.3f}" if min(r) < 0.01 else f"{r[2]:.2f}"
        self.lines.append(f"| {label} | {r[0]:.2f} | {r[1]:.2f} | {worst} | |")

    def text(self) -> str:
        head = ["| scenario / method | median | p90 | worst | notes |", "| --- | --- | --- | --- | --- |"]
        return "\n".join(head + self.lines)


# -- the sections, in the table's order --------------------------------------------------------------------


def _nm_derived(runs: list[Run], periodic: Run | None, scenario: str) -> tuple[Quantiles, str]:
    """NM's failover time from the triggered runs' median latency, and the note that says so."""
    lat = statistics.median(r["failover"] for r in runs if r["failover"] is not None)
    note = (
        f"derived: U(0, {NM_INTERVAL:g} s) wait for the next check + {fmt(lat)} measured from fault "
        f"to route with a check started at the fault ({len(runs)} runs)"
    )
    if scenario == "blackhole" and periodic and periodic.get("failover") is not None:
        note += (
            f"; 1 unprompted run: {fmt(periodic['failover'])} with the fault "
            f"{periodic['phase']:.0f} s after a check"
        )
    return derived_nm(lat), note


def failover_section(t: Table, results: Results, summary: Summary) -> None:
    fo = results.get("failover", {})
    trig = results.get("nm_triggered", {})
    for scenario in SCENARIOS:
        runs = fo.get(scenario, {})
        if not runs and not trig.get(scenario):
            continue
        t.title(SCENARIO_TITLES[scenario])
        q: dict[str, Quantiles | None] = {
            m: quantiles([r["failover"] for r in runs.get(m, []) if r["failover"] is not None])
            for m in METHODS
        }
        failed = {m: sum(r["failover"] is None for r in runs.get(m, [])) for m in METHODS}
        note = ""
        # A fault at a random moment of a 300 s period is derived, not timed (see scenarios/nm_check.py).
        if scenario != "cable" and trig.get(scenario):
            q[NMC], note = _nm_derived(trig[scenario], results.get("nm_periodic"), scenario)
        for m in METHODS:
            qm = q[m]
            extra = f"{qm['n']} runs" if qm and qm["n"] else ""
            if failed[m]:
                extra += f"; {failed[m]} runs never failed over"
            dead = sum(len(r.get("deactivations", [])) for r in runs.get(m, []))
            if runs.get(m):
                extra += f"; link deactivations caused: {dead}"
            t.row(METHOD_TITLES[m], qm, note if m == NMC and note else extra)
        t.ratio("ratio nmfailover / virtual-failover", q[NMF], q[VF])
        t.ratio("ratio nmfailover / NM connectivity check", q[NMF], q[NMC])
        summary[scenario] = q


def failback_section(t: Table, results: Results, summary: Summary) -> None:
    fb = results.get("failback", [])
    fb30 = results.get("failback_default", [])
    if not fb and not fb30:
        return
    t.title("Failback after heal (nmfailover; hold-down must be served after the primary is up again)")
    for runs, hold in ((fb, FAILBACK_HOLD_DOWN), (fb30, DEFAULT_HOLD_DOWN)):
        if not runs:
            continue
        q = quantiles([r["failback"] for r in runs if r["failback"] is not None])
        held_values = [r["held"] for r in runs if r["held"] is not None]
        held = quantiles(held_values)
        ok = sum(r["honoured"] for r in runs)
        t.row(
            f"heal -> route on primary, hold-down {hold:g} s",
            q,
            f"{ok}/{len(runs)} honoured the hold-down; primary up -> failback min "
            f"{fmt(min(held_values, default=None))}, median {fmt(held['median'] if held else None)}",
        )
        summary[f"failback_{hold:g}"] = {"time": q, "honoured": ok, "runs": len(runs)}


def actuation_section(t: Table, results: Results, summary: Summary) -> None:
    fo = results.get("failover", {})
    act = results.get("actuation", [])

    def switches(method: str) -> list[Run]:
        return [r for s in SCENARIOS for r in fo.get(s, {}).get(method, []) if r.get("actuation") is not None]

    nmf_runs = switches(NMF)
    if not act and not nmf_runs:
        return
    t.title("Switch actuation")
    if nmf_runs:
        q = quantiles([r["actuation"] for r in nmf_runs])
        t.row(
            "nmfailover: decision (log) -> route in kernel",
            q,
            f"{len(nmf_runs)} switches of the failover runs; log has ms stamps, route polled every "
            f"{POLL * 1000:.0f} ms",
        )
        summary["actuation_log"] = q
    vf_runs = switches(VF)
    if vf_runs:
        q = quantiles([r["actuation"] for r in vf_runs])
        t.row("virtual-failover: decision -> route final", q, "modify + down/up of every link")
        summary["actuation_vf"] = q
    if act:
        t.row(
            "one Reapply call (GetAppliedConnection + Reapply)",
            quantiles([a["reapply"] for a in act]),
            f"{len(act)} switches measured directly with NetworkManagerClient.set_route_metrics",
        )
        t.row("switch: 2 Reapply calls -> route in kernel", quantiles([a["kernel"] for a in act]), "")
        summary["reapply"] = quantiles([a["reapply"] for a in act])


def disruption_section(t: Table, results: Results, summary: Summary) -> None:
    dis = results.get("disruption", {})
    if not dis:
        return
    t.title("Disruption: TCP connections (a byte every 100 ms) across a failover")
    for m in METHODS:
        runs = dis.get(m, [])
        if not runs:
            continue
        parts = []
        for dev, name in (("wana", "over primary"), ("wanb", "over backup")):
            alive = sum(r["connections"][dev]["survived"] for r in runs)
            gap = max(r["connections"][dev]["max_gap"] or 0 for r in runs)
            parts.append(f"{name}: survived {alive}/{len(runs)}, max gap {fmt(gap)}")
        dead = max(len(r["deactivations"]) for r in runs)
        no_route = max(r["no_route"] for r in runs)
        parts.append(f"link deactivations per switch: {dead}; without any default route: {fmt(no_route)}")
        t.lines.append(f"| {METHOD_TITLES[m]} | | | | {'; '.join(parts)} |")
    summary["disruption"] = dis


def footprint_section(t: Table, results: Results, summary: Summary) -> None:
    fp = results.get("footprint")
    if not fp:
        return
    t.title(f"Footprint (nmfailover at defaults, {fp['elapsed'] / 60:.0f} min)")
    base = fp["baseline_bytes_per_s"]

    def day(rate: float, dev: str) -> str:
        net = max(0.0, rate - base[dev])
        return f"{net * 3600 / 1024:.0f} KiB/h = {net * 86400 / 1024 / 1024:.1f} MiB/day"

    samples = len(fp["rss_kib_samples"])
    t.lines.append(
        f"| memory (VmRSS) | {fp['rss_kib_median'] / 1024:.1f} MiB | | "
        f"{fp['rss_kib_max'] / 1024:.1f} MiB | median and max of {samples} samples |"
    )
    t.lines.append(
        f"| CPU (utime+stime) | {fp['cpu_percent']:.2f} % | | | {fp['cpu_seconds']:.1f} s of CPU in "
        f"{fp['elapsed']:.0f} s |"
    )
    intervals = fp.get("intervals", {})
    for dev, role in (("wana", "primary"), ("wanb", "backup")):
        every = f" (rounds every {intervals[dev]:g} s)" if dev in intervals else ""
        t.lines.append(
            f"| probe traffic, {role}{every} | {day(fp['bytes_per_s'][dev], dev)} "
            f"| | | {fp['http_requests'][dev]} HTTP requests; lab background subtracted |"
        )
    vfr = fp.get("virtual_failover_bytes_per_s")
    if vfr:
        t.lines.append(
            f"| virtual-failover method, primary / backup | {day(vfr['wana'], 'wana')} / "
            f"{day(vfr['wanb'], 'wanb')} | | | checks every 5 / 10 s |"
        )
    nmc = fp.get("nm_check_bytes_per_check")
    if nmc:
        per_day = {d: nmc[d] * 86400 / NM_INTERVAL / 1024 / 1024 for d in nmc}
        t.lines.append(
            f"| NM connectivity check, per uplink | {per_day['wana']:.2f} MiB/day | | | "
            f"{nmc['wana']:.0f} bytes per check, one check per {NM_INTERVAL:g} s |"
        )
    summary["footprint"] = {k: v for k, v in fp.items() if k != "rss_kib_samples"}


SECTIONS = (failover_section, failback_section, actuation_section, disruption_section, footprint_section)


def summarise(results: Results) -> tuple[str, Summary]:
    """The markdown table and the summary figures (stored in the JSON) of a run's results."""
    t = Table()
    summary: Summary = {}
    for section in SECTIONS:
        section(t, results, summary)
    return t.text(), summary


def header(results: Results) -> str:
    m = results["machine"]
    return (
        f"nmfailover benchmark, {results['date']}; {m['nproc']} CPUs, Linux {m['kernel']}, NetworkManager "
        f"{m['networkmanager']}; whole-machine CPU busy {results['load']['cpu_busy_percent']} % during the "
        f"run; {results['elapsed_s'] / 60:.0f} min"
    )
