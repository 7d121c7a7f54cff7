"""Measuring: the default route over time, NetworkManager's and the daemon's logs, faults, machine load."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import POLL, now
from nmfailover.lab.sandbox import NMLab, Upstream

STATE_CHANGE = re.compile(r"device \((\w+)\): state change: activated -> (\w+)")


class RouteWatch:
    """Polls the host namespace's IPv4 default route every `step` seconds in a thread; keeps transitions."""

    def __init__(self, lab: NMLab, step: float = POLL) -> None:
        self.lab = lab
        self.step = step
        self.changes: list[tuple[float, str | None]] = []  # (when first seen, route device)
        self.last_seen = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                route = self.lab.default_route(4)
            except Exception:  # noqa: BLE001 - a failed poll is a missing sample, not a verdict
                route = "?"
            with self._lock:
                self.last_seen = now()
                if not self.changes or self.changes[-1][1] != route:
                    self.changes.append((self.last_seen, route))
            self._stop.wait(self.step)

    def wait(self, device: str, timeout: float) -> float | None:
        """When the route (last) became `device`, waiting up to `timeout`; None if it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.changes and self.changes[-1][1] == device:
                    return self.changes[-1][0]
            time.sleep(self.step / 2)
        return None

    def stop(self) -> RouteWatch:
        self._stop.set()
        self._thread.join(5)
        return self


@dataclass
class RouteStory:
    """What the default route did after a fault: when it first and when it finally became `device`."""

    first: float | None
    settled: float | None  # start of the stretch on `device` that lasted to the end of the watch
    no_route: float  # seconds without any IPv4 default route
    changes: int

    @staticmethod
    def of(watch: RouteWatch, since: float, device: str) -> RouteStory:
        after = [(t, r) for t, r in watch.changes if t >= since]
        first = next((t for t, r in after if r == device), None)
        settled = after[-1][0] if after and after[-1][1] == device else None
        # Each stretch ends where the next begins, the last one at the watch's final sample (which is there
        # even when nothing changed: hence not strict).
        ends = [t for t, _ in after[1:]] + [watch.last_seen]
        no_route = sum(end - t for (t, r), end in zip(after, ends, strict=False) if r is None)
        return RouteStory(first, settled, no_route, len(after))


@dataclass
class Soak:
    """What the default route did over a stretch with the primary meant to stay in use."""

    # Moves from one uplink to the other: a gap without any route that ends where it began is none.
    switches: int
    off_primary: float  # seconds the route was not on the primary (on the backup or none at all)

    @staticmethod
    def of(watch: RouteWatch, primary: str = "wana") -> Soak:
        uplinks = [r for _, r in watch.changes if r not in (None, "?")]
        switches = sum(a != b for a, b in zip(uplinks, uplinks[1:], strict=False))
        ends = [t for t, _ in watch.changes[1:]] + [watch.last_seen]
        off = sum(end - t for (t, r), end in zip(watch.changes, ends, strict=False) if r != primary)
        return Soak(switches, off)


def nm_log_offset(lab: NMLab) -> int:
    return lab.nm_log.stat().st_size


def deactivations(lab: NMLab, offset: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """Devices NetworkManager moved away from `activated` since `offset` in its log, minus `exclude`."""
    with lab.nm_log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [f"{m[1]}->{m[2]}" for m in STATE_CHANGE.finditer(text) if m[1] not in exclude]


def log_time(line: str) -> float:
    """Epoch seconds of a daemon log line (loguru's local-time stamp with ms)."""
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def log_lines(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


def inject_fault(lab: NMLab, fault: Callable[[Upstream], None]) -> float:
    """Apply `fault` to the primary's upstream; returns the moment just before it (the clock starts)."""
    started = now()
    fault(lab.upstreams[0])
    return started


def inject(lab: NMLab, scenario: str, loss: int = 0) -> float:
    """Apply the fault named `scenario` to the primary's upstream (`loss`: the percentage for "lossy");
    returns the moment just before it (the clock starts)."""
    faults: dict[str, Callable[[Upstream], None]] = {
        "blackhole": Upstream.blackhole,
        "refuse": Upstream.refuse,
        "cable": Upstream.cut_cable,
        "lossy": lambda up: up.lossy(loss),
    }
    return inject_fault(lab, faults[scenario])


def machine() -> dict[str, Any]:
    nm = subprocess.run(["NetworkManager", "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "networkmanager": nm.stdout.strip(),
        "python": platform.python_version(),
    }


class LoadMeter:
    """Whole-machine CPU busy share over the run (other work on the machine skews timings)."""

    def __init__(self) -> None:
        self.start = self._read()
        self.load_start = os.getloadavg()

    @staticmethod
    def _read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    def summary(self) -> dict[str, Any]:
        total, idle = self._read()
        busy = 1 - (idle - self.start[1]) / max(1, total - self.start[0])
        return {
            "cpu_busy_percent": round(100 * busy, 1),
            "loadavg_start": self.load_start,
            "loadavg_end": os.getloadavg(),
        }
