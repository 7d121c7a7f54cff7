"""The daemon's memory at its defaults, two source trees side by side: VmRSS once it is ready and settled.

    sudo .venv/bin/python -m bench.rss --tree before=/tmp/before --tree after=. [--runs 3] [--json out.json]

Each tree is a checkout whose nmfailover package is imported instead of the installed one (PYTHONPATH), run
by this same interpreter and dependencies, in one lab, the trees taking turns (before, after, before, ...)
so that a drift of the machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.methods import nmfailover_env
from nmfailover.lab.demo import DaemonProcess
from nmfailover.lab.sandbox import NMLab

SETTLE_SECONDS = 10.0  # after READY: the standby's first rounds and the passive watch are running by then
SAMPLES = 5  # one a second after settling; their median is the run's figure


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS")


def one_run(lab: NMLab, tree: Path, log: Path) -> int:
    env = nmfailover_env(lab)
    env["PYTHONPATH"] = str(tree)
    daemon = DaemonProcess(lab, log, env)
    try:
        daemon.wait_log(r"ready: traffic on primary", timeout=30)
        time.sleep(SETTLE_SECONDS)
        samples = []
        for _ in range(SAMPLES):
            samples.append(rss_kib(daemon.proc.pid))
            time.sleep(1.0)
        return int(statistics.median(samples))
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR, a checkout to run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = {name: Path(path).resolve() for name, _, path in (t.partition("=") for t in args.tree)}
    figures: dict[str, list[int]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="nmfailover-rss-") as workdir, NMLab(2) as lab:
        for run in range(args.runs):
            for name, tree in trees.items():
                kib = one_run(lab, tree, Path(workdir) / f"{name}-{run}.log")
                figures[name].append(kib)
                print(f"run {run + 1} {name}: {kib / 1024:.1f} MiB", flush=True)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, values in figures.items():
        shown = ", ".join(f"{v / 1024:.1f}" for v in values)
        print(f"{name}: median {medians[name] / 1024:.1f} MiB ({shown}) [{sys.version.split()[0]}]")
    first, *others = list(trees)
    for name in others:
        print(f"{name} / {first}: {medians[name] / medians[first]:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version, "rss_kib": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
