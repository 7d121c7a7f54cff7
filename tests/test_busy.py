"""Busy is not dead: a primary whose probes wait behind the user's own download stays in use, and one that
dies under that load is still left within seconds.

The lab's primary is limited to RATE_KBIT with a QUEUE_MS deep queue toward the host (DSL or 4G style
bufferbloat) and a bulk download keeps it full: every answer through it, the probes' included, waits over a
second in that queue, longer than a probe's default timeout. The daemon runs with its default settings.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nmfailover.lab.demo import DaemonProcess
from nmfailover.lab.sandbox import NMLab, Upstream
from tests.daemon import running_daemon

RATE_KBIT = 4000
QUEUE_MS = 1200  # 1-2 s of queueing is common on DSL, cable and 4G; probes time out behind it
LOAD_SECONDS = 300.0  # how long the saturated primary must keep the traffic
QUEUE_READY = 1.0  # seconds of queue the download must have built before the test proper starts
SETTLE_SECONDS = 10.0  # load before the cut: the daemon has seen the busy link for a few rounds
FAILOVER_LIMIT = 3.0  # seconds from the silent cut to the default route on the backup
RX_STOP_AFTER_DRAIN = 2.0  # the cut silences the download this long after its queue has drained
MIN_RATE = 0.85  # the fraction of RATE_KBIT that counts as saturated


SWITCH = r"-> switching to"
SLOW = r"\bslow\b"
FAILING = r"\bfailing\b"


def switches(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.text().splitlines() if re.search(SWITCH, line)]


def log_time(line: str) -> float:
    """Seconds since the epoch of a daemon log line (its local-time stamp has milliseconds)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def probe_outcomes(daemon: DaemonProcess) -> dict[str, int]:
    """How many rounds the daemon logged as slow (busy, not failed) and as failing."""
    lines = daemon.text().splitlines()
    return {
        "slow": sum(1 for line in lines if re.search(SLOW, line)),
        "failing": sum(1 for line in lines if re.search(FAILING, line)),
    }


def excerpt(daemon: DaemonProcess, pattern: str, count: int = 3) -> str:
    found = [line for line in daemon.text().splitlines() if re.search(pattern, line)]
    return "\n".join(f"    {line}" for line in found[:count])


def test_saturated_primary_causes_no_switch(nmlab: NMLab, tmp_path: Path) -> None:
    primary = nmlab.upstreams[0]
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        loaded_at = time.time()
        with nmlab.loaded_primary(RATE_KBIT, QUEUE_MS, QUEUE_READY) as download:
            filled = time.time() - loaded_at
            routes: list[tuple[float, str | None]] = []
            rates: list[float] = []  # Mbit/s received on wana, per second
            delays: list[float] = []  # seconds of queue, per second
            start = time.monotonic()
            rx_start = last_rx = nmlab.iface_bytes("wana")[0]
            last = start
            while (elapsed := time.monotonic() - start) < LOAD_SECONDS and daemon.proc.poll() is None:
                routes.append((elapsed, nmlab.default_route(4)))
                stats = primary.queue_stats()
                delays.append(stats.delay if stats is not None else 0.0)
                time.sleep(max(0.0, 1 - (time.monotonic() - start) % 1))  # a 1 s grid
                rx, now = nmlab.iface_bytes("wana")[0], time.monotonic()
                rates.append((rx - last_rx) * 8 / (now - last) / 1e6)
                last_rx, last = rx, now
            mean_rate = (last_rx - rx_start) * 8 / (last - start) / 1e6
            restarts = download.starts - 1
        alive = daemon.proc.poll() is None
        switched = switches(daemon)
        off_primary = [(round(t), dev) for t, dev in routes if dev != "wana"]
        outcomes = probe_outcomes(daemon)
        switched_at = ", ".join(f"{log_time(line) - loaded_at:.1f}" for line in switched[:10])
        print(
            f"\nqueue >= {QUEUE_READY:g} s {filled:.1f} s after the download started; then"
            f" {len(routes)} route samples over {last - start:.0f} s: {len(off_primary)} not on wana"
            f" (first {off_primary[:3]}); daemon alive: {alive}\n"
            f"{len(switched)} switches, at {switched_at or '-'} s after the download started\n"
            f"wana received {mean_rate:.2f} Mbit/s on average (1 s minimum {min(rates, default=0):.2f});"
            f" queue median {statistics.median(delays or [0]):.2f} s, max {max(delays, default=0):.2f} s;"
            f" download restarts {restarts}\n"
            f"rounds logged slow: {outcomes['slow']}, failing: {outcomes['failing']}\n"
            + "\n".join(f"    {line}" for line in switched[:5])
            + f"\n{excerpt(daemon, SLOW)}\n{excerpt(daemon, FAILING)}"
        )
        # The premise: the primary was saturated the whole time, else nothing was tested.
        assert mean_rate >= MIN_RATE * RATE_KBIT / 1000, "the download did not saturate the primary"
        assert alive, "nmfailover died under load"
        assert not switched, f"{len(switched)} needless switches away from the busy primary"
        assert not off_primary, f"the default route left wana under load: {off_primary[:10]}"


@dataclass
class Sample:
    at: float  # seconds since the cut (negative before it)
    rx: int  # bytes received on wana so far
    backlog: int  # bytes in the primary's queue toward the host


class Sampler(threading.Thread):
    """rx on wana and the primary's queue, every 50 ms, in the background while the test waits."""

    def __init__(self, lab: NMLab, upstream: Upstream) -> None:
        super().__init__(daemon=True)
        self.lab, self.upstream = lab, upstream
        self.zero = time.monotonic()
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            stats = self.upstream.queue_stats()
            rx = self.lab.iface_bytes(self.upstream.iface)[0]
            self.samples.append(Sample(time.monotonic() - self.zero, rx, stats.backlog_bytes if stats else 0))
            self.done.wait(0.05)

    def stop(self) -> list[Sample]:
        self.done.set()
        self.join(10)
        return self.samples


def test_silent_cut_of_the_loaded_primary_still_fails_over_within_3s(nmlab: NMLab, tmp_path: Path) -> None:
    primary = nmlab.upstreams[0]
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        sampler: Sampler | None = None
        try:
            with nmlab.loaded_primary(RATE_KBIT, QUEUE_MS, QUEUE_READY):
                time.sleep(SETTLE_SECONDS)
                before_cut = switches(daemon)
                assert not before_cut and nmlab.default_route(4) == "wana", (
                    f"the daemon left the busy primary before the cut ({len(before_cut)} switches): "
                    "see test_saturated_primary_causes_no_switch"
                )
                stats = primary.queue_stats()
                queued = stats.delay if stats is not None else 0.0
                sampler = Sampler(nmlab, primary)
                cut = time.monotonic()
                sampler.zero = cut
                sampler.start()
                primary.blackhole()
                try:
                    daemon.wait_route("wanb", timeout=30)
                    took: float | None = time.monotonic() - cut
                except TimeoutError:
                    took = None
                # Watch rx long enough to see the queue drain and the link fall silent.
                time.sleep(max(0.0, cut + queued + RX_STOP_AFTER_DRAIN + 1 - time.monotonic()))
                samples = sampler.stop()
        finally:
            if sampler is not None:
                sampler.stop()
            primary.heal()
        drained = next((s.at for s in samples if s.backlog == 0), None)
        # The last sample that saw more than stray neighbour discovery arrive since the one before.
        last_rx = max(
            (s.at for prev, s in zip(samples, samples[1:], strict=False) if s.rx - prev.rx > 500), default=0.0
        )
        outcomes = probe_outcomes(daemon)
        took_text = "never (30 s)" if took is None else f"{took:.2f} s"
        drained_text = "never" if drained is None else f"{drained:.2f} s"
        print(
            f"\nqueue at the cut {queued:.2f} s; drained {drained_text} after the cut; last rx on wana "
            f"{last_rx:.2f} s after the cut; default route on wanb {took_text} after the cut "
            f"(limit {FAILOVER_LIMIT:g} s)\nrounds logged slow: {outcomes['slow']}, failing: {outcomes['failing']}"
            f"\n{excerpt(daemon, SWITCH)}"
        )
        # The premise: the cut silences the download too, once what was queued has arrived.
        assert drained is not None and drained <= queued + 0.5, "the primary's queue did not drain"
        assert last_rx <= drained + RX_STOP_AFTER_DRAIN, "wana kept receiving after the cut"
        assert took is not None, "no failover at all after a silent cut of the loaded primary"
        assert took < FAILOVER_LIMIT, f"failover took {took:.2f} s after the cut"
        assert daemon.proc.poll() is None
