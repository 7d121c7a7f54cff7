"""What every part of the benchmark shares: the methods compared, their settings, the clock and the log."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"

# A run's raw figures as they go into the JSON file; free-form so older result files still read.
Run = dict[str, Any]
Results = dict[str, Any]

SCENARIOS = ("blackhole", "refuse", "cable")
NMF, VF, NMC = "nmfailover", "virtual-failover", "nm-connectivity"
METHODS = (NMF, VF, NMC)
METHOD_TITLES = {NMF: "nmfailover (defaults)", VF: "virtual-failover method", NMC: "NM connectivity check"}
# NetworkManager's own check at its defaults. The URI is an address, not a name: the sandbox's host namespace
# has no resolver, and a query to the machine's resolver address must not even be attempted from the lab.
NM_INTERVAL = 300.0
NM_TIMEOUT = 20.0  # fixed in NetworkManager 1.42
NM_CONNECTIVITY = (
    "[connectivity]\nenabled=true\nuri=http://203.0.113.10/generate_204\nresponse=\n"
    f"interval={NM_INTERVAL:g}\n"
)
VF_PRIMARY_INTERVAL = 5.0
NMF_ACTIVE_INTERVAL = 2.0
FAILBACK_HOLD_DOWN = 10.0  # shortened from the default 30 s for the failback cycles only
DEFAULT_HOLD_DOWN = 30.0
POLL = 0.01
FOOTPRINT_SECONDS = 180.0

T = TypeVar("T")


def now() -> float:
    return time.time()


def say(text: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {text}", flush=True)


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


class Attempts:
    """Runs that may fail: one broken run must not lose the others, and every failure reaches the report."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def run(self, label: str, job: Callable[[], T]) -> T | None:
        try:
            return job()
        except Exception as exc:  # noqa: BLE001 - reported below and in the JSON; the other runs go on
            self.errors.append(f"{label}: {exc!r}")
            say(f"  {label} FAILED: {exc!r}")
            return None
