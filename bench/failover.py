"""Failover benchmark: nmfailover against the virtual-failover method and NetworkManager's connectivity check.

Everything runs in the sandbox (nmfailover/lab/sandbox.py): a real NetworkManager on a private bus, two
simulated uplinks in network namespaces. Needs root; touches none of the machine's own interfaces, routes or
resolver.

    python bench/failover.py [--runs 10] [--soak-runs 5] [--only PARTS] [--json out.json]

Prints one table and writes the raw runs as JSON (default bench/results/<date>.json). See bench/README.md.
This file is the plan: which parts run, in which order, and what goes into the JSON. Each part's runs are in
bench/scenarios/, the lab observations in bench/measure.py, the methods compared in bench/methods.py and the
table in bench/report.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, only bench/ is on the path: the checkout's root holds both the benchmark and nmfailover.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_DIR,
    FAILBACK_HOLD_DOWN,
    FOOTPRINT_SECONDS,
    NM_CONNECTIVITY,
    NM_CONNECTIVITY_FAST,
    NM_INTERVAL,
    Attempts,
    Results,
    say,
)
from bench.measure import LoadMeter, machine
from bench.report import header, summarise
from bench.scenarios import (
    actuation,
    brownout,
    disruption,
    failback,
    failover,
    footprint,
    load,
    matrix,
    nm_check,
)
from nmfailover.lab.sandbox import lab_available

PARTS = ("failover", "nm", "load", "brownout", "failback", "actuation", "disruption", "matrix", "footprint")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="runs per scenario and method (default 10)")
    parser.add_argument("--json", type=Path, help="raw runs (default bench/results/<date>.json)")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run (default: all)")
    parser.add_argument("--nm-triggered-runs", type=int, default=3)
    parser.add_argument(
        "--soak-runs",
        type=int,
        default=5,
        help="runs per method of the fault-free minutes under load and light loss (default 5)",
    )
    parser.add_argument(
        "--load-seconds", type=float, default=120.0, help="saturated primary, no fault: seconds per run"
    )
    parser.add_argument(
        "--light-loss-seconds", type=float, default=60.0, help="light loss, no switch wanted: seconds per run"
    )
    parser.add_argument("--footprint-seconds", type=float, default=FOOTPRINT_SECONDS)
    parser.add_argument(
        "--matrix-runs",
        type=int,
        default=5,
        help="fault-class matrix: runs per row, mode and method (default 5)",
    )
    parser.add_argument(
        "--matrix-rows",
        default=",".join(matrix.ROW_KEYS),
        help=f"fault-class matrix: comma-separated rows out of {','.join(matrix.ROW_KEYS)} (default: all)",
    )
    parser.add_argument(
        "--matrix-modes", default=",".join(matrix.MODES), help="fault-class matrix: idle, traffic or both"
    )
    parser.add_argument(
        "--matrix-parallel",
        type=int,
        default=matrix.PARALLEL,
        help=f"fault-class matrix: labs run at once (default {matrix.PARALLEL})",
    )
    parser.add_argument(
        "--matrix-soak-seconds",
        type=float,
        default=matrix.SOAK_SECONDS,
        help=f"fault-class matrix: seconds of each no-switch-wanted run (default {matrix.SOAK_SECONDS:g})",
    )
    parser.add_argument(
        "--table-from", type=Path, metavar="JSON", help="only print the table of an earlier run"
    )
    args = parser.parse_args(argv)
    # Checked now, not after the hour the parts before the matrix may take.
    for given, known in ((args.matrix_rows, matrix.ROW_KEYS), (args.matrix_modes, matrix.MODES)):
        if unknown := set(given.split(",")) - set(known):
            parser.error(f"unknown {', '.join(sorted(unknown))}: choose from {', '.join(known)}")
    return args


class Background:
    """The long, mostly idle parts run alongside the timed runs; their figures do not depend on timing."""

    def __init__(self, results: Results, attempts: Attempts) -> None:
        self.results = results
        self.attempts = attempts
        self.threads: list[threading.Thread] = []

    def start(self, name: str, job: Callable[[], Any]) -> None:
        def work() -> None:
            try:
                self.results[name] = job()
                say(f"background part {name} done")
            except Exception as exc:  # noqa: BLE001 - report and go on with the other parts
                self.attempts.errors.append(f"{name}: {exc!r}")

        thread = threading.Thread(target=work, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            say(f"waiting for background part {thread.name}")
            thread.join(NM_INTERVAL + 600)


def run_parts(args: argparse.Namespace, parts: set[str], results: Results, attempts: Attempts) -> None:
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"nmfo-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    background = Background(results, attempts)
    if "nm" in parts:
        background.start("nm_periodic", nm_check.run_periodic)
    # The matrix gives probe bytes per day per uplink beside its times: the footprint part's.
    if "footprint" in parts or "matrix" in parts:

        def footprint_then_default_failback() -> dict[str, Any]:
            fp = footprint.run_footprint(workdir, args.footprint_seconds)
            if "failback" in parts:
                results["failback_default"] = failback.runs_at_default_hold_down(workdir)
            return fp

        background.start("footprint", footprint_then_default_failback)
    if "actuation" in parts:
        say("actuation: Reapply latency measured directly")
        actuation.part(results)
    if "failover" in parts:
        failover.part(results, args.runs, workdir, attempts)
    if "nm" in parts:
        nm_check.part_triggered(results, args.nm_triggered_runs, attempts)
    if "load" in parts:
        load.part(results, args.runs, args.soak_runs, args.load_seconds, workdir, attempts)
    if "brownout" in parts:
        brownout.part(results, args.runs, args.soak_runs, args.light_loss_seconds, workdir, attempts)
    if "failback" in parts:
        failback.part(results, args.runs, workdir, attempts)
    if "disruption" in parts:
        disruption.part(results, args.runs, workdir, attempts)
    if "matrix" in parts:
        matrix.part(
            results,
            args.matrix_runs,
            workdir,
            attempts,
            rows=tuple(args.matrix_rows.split(",")),
            modes=tuple(args.matrix_modes.split(",")),
            parallel=args.matrix_parallel,
            soak_seconds=args.matrix_soak_seconds,
        )
    background.join()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_from is not None:
        earlier = json.loads(args.table_from.read_text())
        print(earlier["header"] + "\n\n" + summarise(earlier)[0])
        return 0
    problem = lab_available()
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    today = dt.date.today().isoformat()
    out_path = args.json or BENCH_DIR / "results" / f"{today}.json"
    meter = LoadMeter()
    began = time.monotonic()
    results: Results = {
        "date": today,
        "machine": machine(),
        "runs_per_scenario": args.runs,
        "matrix_runs": args.matrix_runs,
        "soak_runs_per_method": args.soak_runs,
        "settings": {
            "nmfailover": "defaults (only UPLINKS, PROBE_URLS, ENV_FILE set); "
            f"failback cycles with FAILBACK_HOLD_DOWN={FAILBACK_HOLD_DOWN:g}",
            "nm_connectivity": NM_CONNECTIVITY,
            "nm_connectivity_fast": NM_CONNECTIVITY_FAST,
        },
    }
    attempts = Attempts()
    run_parts(args, set(args.only.split(",")), results, attempts)
    results["load"] = meter.summary()
    results["elapsed_s"] = time.monotonic() - began
    results["errors"] = errors = attempts.errors
    table, summary = summarise(results)
    results["summary"] = summary
    head = header(results)
    print("\n" + head + "\n\n" + table)
    if errors:
        print("\nerrors:\n  " + "\n  ".join(errors))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**results, "table": table, "header": head}, indent=1, default=str) + "\n")
    print(f"\nraw runs: {out_path}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
