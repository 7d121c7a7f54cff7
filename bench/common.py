"""What every part of the benchmark shares: the methods compared, their settings, the clock and the log."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nmfailover.config import Settings

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"

# A run's raw figures as they go into the JSON file; free-form so older result files still read.
Run = dict[str, Any]
Results = dict[str, Any]

SCENARIOS = ("blackhole", "refuse", "cable")
NMF, VF, NMC, NMC_FAST = "nmfailover", "virtual-failover", "nm-connectivity", "nm-connectivity-fast"
METHODS = (NMF, VF, NMC)  # the disruption part's; the failover part adds NMC_FAST
FAILOVER_METHODS = (NMF, VF, NMC_FAST, NMC)
# The parts with the primary under load or loss: NM's check at its default period would see one fault in
# minutes of waiting, so only its fastest setting takes part there.
STRESS_METHODS = (NMF, VF, NMC_FAST)
NM_INTERVAL = 300.0
NM_FAST_INTERVAL = 2.0
METHOD_TITLES = {
    NMF: "nmfailover (defaults)",
    VF: "virtual-failover method",
    NMC: "NM connectivity check",
    NMC_FAST: f"NM connectivity check, interval {NM_FAST_INTERVAL:g} s",
}
# NetworkManager 1.42 has no timeout setting: "timeout=" in [connectivity] only earns an "unknown key"
# warning in its log, and nm-connectivity.c waits a fixed 20 s for each check.
NM_TIMEOUT = 20.0


def nm_connectivity(interval: float) -> str:
    # The URI is an address, not a name: the sandbox's host namespace has no resolver, and a query to the
    # machine's resolver address must not even be attempted from the lab.
    return (
        "[connectivity]\nenabled=true\nuri=http://203.0.113.10/generate_204\nresponse=\n"
        f"interval={interval:g}\n"
    )


# NetworkManager's own check at its defaults, and at the fastest practical period asked for: 1.42 enforces
# no minimum (with interval=2 its log shows each device checked every 2 s).
NM_CONNECTIVITY = nm_connectivity(NM_INTERVAL)
NM_CONNECTIVITY_FAST = nm_connectivity(NM_FAST_INTERVAL)
VF_PRIMARY_INTERVAL = 5.0
VF_BACKUP_INTERVAL = 10.0
# The daemon's own default, so the fault's moment spans its real cycle after the defaults change.
NMF_ACTIVE_INTERVAL = float(Settings.model_fields["active_interval"].default)
# Each method's probe cycle, over which a fault's moment is drawn at random.
CYCLE = {NMF: NMF_ACTIVE_INTERVAL, VF: VF_PRIMARY_INTERVAL, NMC_FAST: NM_FAST_INTERVAL, NMC: NM_INTERVAL}
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
    if seconds == math.inf:  # a run that never got there within its limit
        return "never"
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
