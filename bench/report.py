"""Reporting: quantiles of the raw runs and the markdown table of bench/README.md, one function a section.

Works on the JSON results alone, so `--table-from` can redraw the table of an earlier run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    DEFAULT_HOLD_DOWN,
    FAILBACK_HOLD_DOWN,
    FAILOVER_METHODS,
    METHOD_TITLES,
    METHODS,
    NM_FAST_INTERVAL,
    NM_INTERVAL,
    NMC,
    NMC_FAST,
    NMF,
    POLL,
    SCENARIOS,
    STRESS_METHODS,
    VF,
    VF_BACKUP_INTERVAL,
    VF_PRIMARY_INTERVAL,
    Results,
    Run,
    fmt,
)

# median, p90, worst and n (the number of runs; 0 for a derived figure)
Quantiles = dict[str, float]
Summary = dict[str, Any]

RATIO_NAMES = {
    VF: "virtual-failover",
    NMC_FAST: f"NM connectivity check ({NM_FAST_INTERVAL:g} s)",
    NMC: "NM connectivity check",
}

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


def censored(values: list[float | None]) -> Quantiles | None:
    """Quantiles where a run that never got there within its limit (None) counts as endless, not as absent:
    leaving it out would make a method that often fails look fast."""
    return quantiles([math.inf if v is None else v for v in values])


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
    # Tables of their own, after this one (the fault-class matrix has a column per method).
    after: list[str] = field(default_factory=list)

    def title(self, text: str) -> None:
        self.lines.append(f"| **{text}** | | | | |")

    def row(self, label: str, q: Quantiles | None, note: str = "") -> None:
        if q is None:
            self.lines.append(f"| {label} | - | - | - | {note} |")
            return
        self.lines.append(f"| {label} | {fmt(q['median'])} | {fmt(q['p90'])} | {fmt(q['worst'])} | {note} |")

    def count(self, label: str, q: Quantiles | None, note: str = "") -> None:
        """A row of counts (switches), not times."""
        cells = ["-"] * 3 if q is None else [f"{q[k]:g}" for k in ("median", "p90", "worst")]
        self.lines.append(f"| {label} | {' | '.join(cells)} | {note} |")

    def ratio(self, label: str, a: Quantiles | None, b: Quantiles | None) -> None:
        if a is None or b is None:
            return
        # A run that never got there, or nothing to divide by, has no meaningful ratio.
        r = [
            a[k] / b[k] if b[k] and math.isfinite(a[k]) and math.isfinite(b[k]) else math.nan
            for k in ("median", "p90", "worst")
        ]
        if all(math.isnan(x) for x in r):
            return
        cells = ["-" if math.isnan(x) else f"{x:.2f}" for x in r]
        # A tiny ratio would print as 0.00: one more digit keeps it readable.
        if min((x for x in r if not math.isnan(x)), default=1.0) < 0.01 and not math.isnan(r[2]):
            cells[2] = f"{r[2]:.3f}"
        self.lines.append(f"| {label} | {' | '.join(cells)} | |")

    def ratios(self, q: dict[str, Quantiles | None]) -> None:
        """nmfailover against each baseline in `q`."""
        for base in (VF, NMC_FAST, NMC):
            if base in q:
                self.ratio(f"ratio nmfailover / {RATIO_NAMES[base]}", q.get(NMF), q[base])

    def text(self) -> str:
        head = ["| scenario / method | median | p90 | worst | notes |", "| --- | --- | --- | --- | --- |"]
        return "\n\n".join(([("\n".join(head + self.lines))] if self.lines else []) + self.after)


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
            for m in FAILOVER_METHODS
        }
        failed = {m: sum(r["failover"] is None for r in runs.get(m, [])) for m in FAILOVER_METHODS}
        note = ""
        # A fault at a random moment of a 300 s period is derived, not timed (see scenarios/nm_check.py).
        if scenario != "cable" and trig.get(scenario):
            q[NMC], note = _nm_derived(trig[scenario], results.get("nm_periodic"), scenario)
        for m in FAILOVER_METHODS:
            qm = q[m]
            if qm is None and not runs.get(m):
                continue  # not run this time (another part, or results from before it took part)
            extra = [f"{qm['n']} runs"] if qm and qm["n"] else []
            if failed[m]:
                extra.append(f"{failed[m]} runs never failed over")
            if runs.get(m):
                dead = sum(len(r.get("deactivations", [])) for r in runs[m])
                extra.append(f"link deactivations caused: {dead}")
            t.row(METHOD_TITLES[m], qm, note if m == NMC and note else "; ".join(extra))
        t.ratios(q)
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


def load_section(t: Table, results: Results, summary: Summary) -> None:
    ul = results.get("under_load")
    if not ul:
        return
    load = (
        f"{ul['rate_kbit'] / 1000:g} Mbit/s with a {ul['queue_ms'] / 1000:g} s queue, kept full by a download"
    )
    q: dict[str, Quantiles | None] = {}
    if any(ul["failover"].values()):
        t.title(f"Failover under load: primary at {load}, then a silent cut (blackhole)")
        for m in STRESS_METHODS:
            runs = ul["failover"].get(m, [])
            if not runs:
                continue
            cut = [r for r in runs if r["route_at_cut"] == "wana"]
            q[m] = censored([r["failover"] for r in cut])
            notes = [f"{len(cut)} runs"]
            if len(cut) < len(runs):
                notes.append(f"{len(runs) - len(cut)} more not timed: off the busy primary before the cut")
            if never := sum(r["failover"] is None for r in cut):
                notes.append(f"{never} never failed over within {ul['failover_limit']:g} s")
            queued = [r["queue_at_cut"] for r in runs if r["queue_at_cut"] is not None]
            notes.append(f"queue at the cut: median {fmt(statistics.median(queued) if queued else None)}")
            t.row(METHOD_TITLES[m], q[m], "; ".join(notes))
        t.ratios(q)
        summary["load_failover"] = q
    if any(ul["soak"].values()):
        t.title(f"False switches under load: primary at {load}, no fault, {ul['soak_seconds']:g} s per run")
        summary["load_switches"] = _switch_rows(t, ul["soak"])


def _switch_rows(t: Table, soaks: dict[str, list[Run]]) -> dict[str, Quantiles | None]:
    """Switches per run for each method, from runs where the primary was meant to stay in use."""
    q: dict[str, Quantiles | None] = {}
    for m in STRESS_METHODS:
        runs = soaks.get(m, [])
        if not runs:
            continue
        q[m] = quantiles([r["switches"] for r in runs])
        notes = [
            f"{len(runs)} runs, {sum(r['switches'] for r in runs)} switches in all",
            f"off the primary at most {fmt(max(r['off_primary'] for r in runs))} in a run",
        ]
        if "mbit_per_s" in runs[0]:
            notes.append(f"primary received {min(r['mbit_per_s'] for r in runs):.2f} Mbit/s or more")
        t.count(METHOD_TITLES[m], q[m], "; ".join(notes))
    t.ratios(q)
    return q


def brownout_section(t: Table, results: Results, summary: Summary) -> None:
    bo = results.get("brownout")
    if not bo:
        return
    if any(bo["heavy"].values()):
        t.title(
            f"Brownout: {bo['heavy_loss']} % packet loss each way on the primary's upstream -> default route "
            "moves to the backup"
        )
        q: dict[str, Quantiles | None] = {}
        for m in STRESS_METHODS:
            runs = bo["heavy"].get(m, [])
            if not runs:
                continue
            q[m] = censored([r["moved"] for r in runs])
            note = f"{len(runs)} runs"
            if never := sum(r["moved"] is None for r in runs):
                note += f"; {never} never moved within {bo['detect_limit']:g} s"
            t.row(METHOD_TITLES[m], q[m], note)
        t.ratios(q)
        summary["brownout"] = q
    if any(bo["light"].values()):
        t.title(f"Light loss: {bo['light_loss']} % each way for {bo['light_seconds']:g} s (no switch wanted)")
        summary["light_loss_switches"] = _switch_rows(t, bo["light"])


def footprint_section(t: Table, results: Results, summary: Summary) -> None:
    fp = results.get("footprint")
    if not fp:
        return
    t.title(f"Footprint (nmfailover at defaults, {fp['elapsed'] / 60:.0f} min)")
    base = fp["baseline_bytes_per_s"]
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
    vfr = fp.get("virtual_failover_bytes_per_s")
    fast = fp.get("nm_fast_check_bytes_per_s")
    nmc = fp.get("nm_check_bytes_per_check")
    per_day: dict[str, dict[str, float]] = {}
    for dev, role in (("wana", "primary"), ("wanb", "backup")):
        t.title(f"Probe traffic per day, {role} uplink ({dev}); lab background subtracted")
        rates = {NMF: fp["bytes_per_s"][dev]}  # bytes per second, the idle lab's own included
        every = f"rounds every {intervals[dev]:g} s; " if dev in intervals else ""
        notes = {NMF: f"{every}{fp['http_requests'][dev]} HTTP requests"}
        if vfr:
            rates[VF] = vfr[dev]
            notes[VF] = f"checks every {VF_PRIMARY_INTERVAL if dev == 'wana' else VF_BACKUP_INTERVAL:g} s"
        if fast:
            rates[NMC_FAST] = fast[dev]
            notes[NMC_FAST] = f"a check every {fp['nm_fast_interval']:g} s"
        day = {m: max(0.0, rate - base[dev]) * 86400 / 1024 / 1024 for m, rate in rates.items()}
        if nmc:
            # Measured per check: at one check per 300 s, minutes of traffic would see only a few.
            day[NMC] = nmc[dev] * 86400 / NM_INTERVAL / 1024 / 1024
            notes[NMC] = f"derived: {nmc[dev]:.0f} bytes per check, one check per {NM_INTERVAL:g} s"
        for m, mib in day.items():
            t.lines.append(f"| {METHOD_TITLES[m]} | {mib:.3g} MiB/day | | | {notes[m]} |")
        for other in (VF, NMC_FAST, NMC):
            if day.get(other):
                t.lines.append(
                    f"| ratio nmfailover / {RATIO_NAMES[other]} | {day[NMF] / day[other]:.3g} | | | |"
                )
        per_day[dev] = day
    summary["footprint"] = {k: v for k, v in fp.items() if k != "rss_kib_samples"}
    summary["probe_mib_per_day"] = per_day


def _cell(q: Quantiles | None, count: bool = False) -> str:
    """median (worst): times, or switch counts."""
    if q is None:
        return "-"
    if count:
        return f"{q['median']:g} ({q['worst']:g})"
    return f"{fmt(q['median'])} ({fmt(q['worst'])})"


def _ratio_cell(a: Quantiles | None, b: Quantiles | None, limit: float) -> str:
    """nmfailover's median (worst) over a baseline's; a baseline that never got there within `limit` only
    bounds the ratio from above."""
    if a is None or b is None:
        return "-"
    cells = []
    for k in ("median", "worst"):
        if not math.isfinite(a[k]):
            cells.append("-")
        elif math.isfinite(b[k]) and b[k] > 0:
            cells.append(f"{a[k] / b[k]:.2f}")
        elif not math.isfinite(b[k]):
            cells.append(f"< {a[k] / limit:.2f}")
        else:
            cells.append("-")
    return f"{cells[0]} ({cells[1]})"


def _matrix_notes(row: dict[str, Any], mode: str, runs: dict[str, list[Run]], expected: int) -> str:
    notes = []
    nmf = runs.get(NMF, [])
    if row["soak"]:
        if nmf:
            notes.append(f"nmfailover off the primary at most {fmt(max(r['off_primary'] for r in nmf))}")
        shares = [r["user_ok_share"] for r in nmf if r.get("user_ok_share") is not None]
        if shares:
            notes.append(f"user pages loaded (nmfailover): at least {100 * min(shares):.0f} %")
        rates = [r["mbit_per_s"] for rs in runs.values() for r in rs if "mbit_per_s" in r]
        if rates:
            notes.append(f"primary received {min(rates):.2f} Mbit/s or more")
    else:
        if row["dns"] and nmf:
            by = [r["repaired_by"] for r in nmf if r["repaired_by"]]
            notes.append(f"nmfailover repaired by the route {by.count('route')}, by DNS {by.count('dns')}")
        users = [r["user_ok"] for r in nmf if "user_ok" in r]
        if users and mode == "traffic":
            q = censored(users)
            notes.append(f"user's first page after the fault (nmfailover): {_cell(q)}")
    short = {m: len(r) for m, r in runs.items() if len(r) < expected}
    if short:
        notes.append("runs: " + ", ".join(f"{RATIO_NAMES.get(m, m)} {n}" for m, n in short.items()))
    return "; ".join(notes)


def matrix_section(t: Table, results: Results, summary: Summary) -> None:
    mx = results.get("matrix")
    if not mx:
        return
    limit = mx["detect_limit"]
    methods = [m for m in STRESS_METHODS if m in mx["methods"]]
    baselines = [m for m in methods if m != NMF]
    out: dict[str, dict[str, dict[str, Quantiles | None]]] = {}
    for mode in mx["modes"]:
        who = (
            f"a user's traffic (a lookup and a new connection every {mx['user_interval']:g} s)"
            if mode == "traffic"
            else "idle (nothing but the method)"
        )
        lines = [
            f"Fault-class matrix, {who}: fault on the primary -> repair (route on the backup; for a dead "
            f"resolver, names answered within {mx['dns_ok_within']:g} s again if sooner), median (worst) of "
            f"{mx['runs']} runs; never = not within {limit:g} s; no-switch rows: switches per "
            f"{mx['soak_seconds']:g} s run",
            "",
            "| fault on the primary | "
            + " | ".join(METHOD_TITLES[m] for m in methods)
            + "".join(f" | nmfailover / {RATIO_NAMES[m]}" for m in baselines)
            + " | notes |",
            "| --- " * (len(methods) + len(baselines) + 2) + "|",
        ]
        for key, row in mx["rows"].items():
            runs = mx["cells"][key][mode]
            values = "switches" if row["soak"] else "repair"
            q = {m: censored([r[values] for r in runs.get(m, [])]) for m in methods}
            cells = [_cell(q[m], count=row["soak"]) for m in methods]
            ratios = ["-" if row["soak"] else _ratio_cell(q.get(NMF), q[m], limit) for m in baselines]
            notes = _matrix_notes(row, mode, runs, mx["runs"])
            lines.append(f"| {row['title']} | {' | '.join(cells + ratios)} | {notes} |")
            out.setdefault(key, {})[mode] = q
        t.after.append("\n".join(lines))
    per_day = summary.get("probe_mib_per_day")
    if per_day:
        t.after.append(
            "Probe traffic per day at defaults, idle (the footprint part of the same run): "
            + "; ".join(
                f"{dev}: "
                + ", ".join(f"{RATIO_NAMES.get(m, 'nmfailover')} {mib:.3g} MiB" for m, mib in day.items())
                for dev, day in per_day.items()
            )
        )
    summary["matrix"] = out


SECTIONS = (
    failover_section,
    load_section,
    brownout_section,
    failback_section,
    actuation_section,
    disruption_section,
    footprint_section,
    matrix_section,  # after the footprint: its probe traffic line comes from there
)


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
