"""Prometheus metrics of the running daemon, opt-in: served over HTTP on a loopback address
(NMFAILOVER_METRICS_LISTEN) and/or written to a node_exporter textfile (NMFAILOVER_METRICS_TEXTFILE).

Everything about the uplinks is read from Operator.status() at scrape time, so the metrics can never
disagree with `nmfailover status`. Only what the status does not keep comes from the switch events: the
switches by action and the seconds each uplink has carried traffic.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .config import ListenAddress, Settings
from .engine import SwitchEvent
from .policy import Health
from .status import Status, UplinkStatus

# Bounded by the scrape: a loop that cannot answer within this is reported as a failed scrape (HTTP 500).
SNAPSHOT_TIMEOUT = 5.0
BIND_RETRY = (1.0, 2.0, 5.0, 10.0, 30.0)
# What the status reports beyond the policy's own states: degraded (a brownout), suspect (in doubt).
HEALTH_STATES = (*(h.value for h in Health), "degraded", "suspect")
NO_UPLINK = "none"  # the `from` label of the switch at start-up

StatusSource = Callable[[], Status]
# A supervisor Job (engine/supervisor.py), spelled as what it returns so the daemon's own job table takes it.
MetricsJob = Callable[[], Coroutine[Any, Any, None]]


class CarryingTime:
    """Seconds each uplink (by role) has carried traffic since the daemon started.

    Intervals end when the switch event reaches the listener, on the listener's own clock. The engine marks
    a switch in the status a little earlier (the event follows NetworkManager's Reapply), so a scrape in
    between still counts the old uplink: a counter must never go down, and that moment is the only one in
    which the status and the events disagree.
    """

    def __init__(self, start: float) -> None:
        self._closed: dict[str, float] = {}
        self._carrier: str | None = None
        self._since = start
        self._heard = False

    def switched(self, from_role: str | None, to_role: str, at: float) -> None:
        if from_role is not None:
            self._closed[from_role] = self._closed.get(from_role, 0.0) + max(0.0, at - self._since)
        self._carrier, self._since, self._heard = to_role, at, True

    def seconds(self, status_carrier: str | None, switches: int, now: float) -> dict[str, float]:
        if not self._heard and switches == 0:
            # Before any switch only the status knows which uplink the daemon found carrying traffic.
            self._carrier = status_carrier
        totals = dict(self._closed)
        if self._carrier is not None:
            totals[self._carrier] = totals.get(self._carrier, 0.0) + max(0.0, now - self._since)
        return totals


class Metrics:
    """The daemon's metrics: a switch listener, a registry, and the jobs that export it.

    Build it inside the daemon's event loop: the status is read on that loop's thread only, also for a
    scrape that arrives on the HTTP server's thread, so the engine's state is never read while it changes.
    """

    def __init__(self, status: StatusSource, clock: Callable[[], float] = time.monotonic) -> None:
        self._status = status
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._switches: Counter[tuple[str, str, str]] = Counter()
        self._carrying = CarryingTime(clock())
        # Epoch seconds, so that alerting rules can count restarts (the counters' resets cannot tell a
        # restart from a scrape gap).
        self._started_at = time.time()
        self._switched = asyncio.Event()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(self))

    async def on_switch(self, event: SwitchEvent) -> None:
        """A switch listener: count the switch and end the old uplink's time carrying traffic."""
        old = event.uplink(event.from_profile) if event.from_profile else None
        from_role = old.role if old is not None else None
        to_role = event.state.lower()
        self._switches[(event.action, from_role or NO_UPLINK, to_role)] += 1
        self._carrying.switched(from_role, to_role, self._clock())
        self._switched.set()

    def jobs(self, settings: Settings) -> dict[str, MetricsJob]:
        """The supervised jobs the settings ask for: "metrics-http", "metrics-textfile", or none."""
        jobs: dict[str, MetricsJob] = {}
        listen, textfile = settings.metrics_listen, settings.metrics_textfile
        if listen is not None:
            jobs["metrics-http"] = lambda: self.serve(listen)
        if textfile is not None:
            interval = settings.metrics_textfile_interval
            jobs["metrics-textfile"] = lambda: self.write_textfile(textfile, interval)
        return jobs

    # -- exporting ----------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format, as a scrape gets it."""
        return generate_latest(self.registry)

    async def serve(self, address: ListenAddress) -> None:
        """Serve the metrics over HTTP until cancelled. A port that cannot be bound (in use) is retried:
        metrics must never take failover down with them."""
        attempt = 0
        while True:
            try:
                server, thread = start_http_server(address.port, address.host, registry=self.registry)
                break
            except OSError as exc:
                delay = BIND_RETRY[min(attempt, len(BIND_RETRY) - 1)]
                attempt += 1
                logger.error(
                    "metrics: cannot listen on {}: {}; trying again in {:g} s",
                    address,
                    exc.strerror or exc,
                    delay,
                )
                await asyncio.sleep(delay)
        logger.info("metrics: serving http://{}/metrics", address)
        try:
            await asyncio.Event().wait()
        finally:
            # shutdown() waits for the server's next poll (up to 0.5 s): not on the event loop.
            await asyncio.to_thread(_stop_server, server, thread)

    async def write_textfile(self, path: Path, interval: float) -> None:
        """Write the metrics to `path` now, every `interval` seconds and right after each switch. A write
        that fails is logged once (until it works again) and retried at the next turn."""
        failing: str | None = None
        while True:
            self._switched.clear()
            data = self.exposition()
            try:
                await asyncio.to_thread(write_atomically, path, data)
            except OSError as exc:
                problem = str(exc.strerror or exc)
                if problem != failing:
                    logger.error("metrics: cannot write {}: {}", path, problem)
                failing = problem
            else:
                if failing is not None:
                    logger.info("metrics: writing {} again", path)
                failing = None
            try:
                async with asyncio.timeout(interval):
                    await self._switched.wait()
            except TimeoutError:
                pass

    # -- collecting ---------------------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        """Every metric family now, from any thread (see the class docstring)."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return self._families()
        return asyncio.run_coroutine_threadsafe(self._families_async(), self._loop).result(SNAPSHOT_TIMEOUT)

    async def _families_async(self) -> list[Metric]:
        return self._families()

    def _families(self) -> list[Metric]:
        status = self._status()
        uplinks = status.uplinks
        carrier = status.carrying
        carried = self._carrying.seconds(carrier.role if carrier else None, status.switches, self._clock())
        families: list[Metric] = []

        def gauge(name: str, doc: str, labels: Iterable[str] = ("uplink",)) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            families.append(family)
            return family

        def counter(name: str, doc: str, labels: Iterable[str] = ("uplink",)) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=list(labels))
            families.append(family)
            return family

        info = gauge(
            "nmfailover_uplink_info",
            "Each uplink's NetworkManager profile and device (empty without one); always 1.",
            ("uplink", "profile", "uuid", "device"),
        )
        health = gauge(
            "nmfailover_uplink_health",
            "1 for each uplink's current health, 0 for the others (suspect: the last round disagreed).",
            ("uplink", "health"),
        )
        carrying = gauge("nmfailover_uplink_carrying_traffic", "1 for the uplink holding the default route.")
        pinned = gauge("nmfailover_uplink_pinned", "1 for the uplink pinned by `nmfailover prefer`.")
        seconds = counter(
            "nmfailover_uplink_carrying_traffic_seconds",
            "Seconds each uplink has held the default route since the daemon started.",
        )
        latency = gauge(
            "nmfailover_probe_latency_seconds",
            "Fastest answer of the uplink's last probe round (absent while that round failed).",
        )
        failures = gauge(
            "nmfailover_probe_consecutive_failures", "Failed probe rounds in a row (0 after a good one)."
        )
        successes = gauge(
            "nmfailover_probe_consecutive_successes", "Good probe rounds in a row (0 after a failed one)."
        )
        loss = gauge(
            "nmfailover_probe_loss_ratio", "Share of probes unanswered over the brownout window (0 to 1)."
        )
        answer_time = gauge(
            "nmfailover_probe_answer_time_seconds",
            "Median (quantile 0.5) and 95th percentile of answer times over the brownout window.",
            ("uplink", "quantile"),
        )
        failed_total = counter(
            "nmfailover_probe_failed_rounds", "Failed probe rounds since the daemon started."
        )
        bytes_total = counter(
            "nmfailover_probe_bytes", "Bytes the probes sent and received since the daemon started."
        )
        states = (*HEALTH_STATES, *sorted({u.health for u in uplinks} - set(HEALTH_STATES)))
        for uplink in uplinks:
            role = uplink.role
            info.add_metric([role, uplink.profile, uplink.uuid, uplink.device or ""], 1)
            for state in states:
                health.add_metric([role, state], 1 if uplink.health == state else 0)
            carrying.add_metric([role], 1 if uplink.carrying_traffic else 0)
            pinned.add_metric([role], 1 if status.pinned == role else 0)
            seconds.add_metric([role], round(carried.get(role, 0.0), 3))
            # After a failed round the status has the time to the failure (a timeout), not a round trip.
            if uplink.latency_ms is not None and uplink.consecutive_failures == 0:
                latency.add_metric([role], round(uplink.latency_ms / 1000, 6))
            failures.add_metric([role], uplink.consecutive_failures)
            successes.add_metric([role], uplink.consecutive_successes)
            loss.add_metric([role], round(uplink.loss_pct / 100, 4))
            for quantile, answered in (("0.5", uplink.rtt_p50_ms), ("0.95", uplink.rtt_p95_ms)):
                if answered is not None:
                    answer_time.add_metric([role, quantile], round(answered / 1000, 6))
            failed_total.add_metric([role], uplink.failed_rounds)
            bytes_total.add_metric([role], uplink.probe_bytes)

        # The reason text holds durations ("healthy for 31.2s"), too many values for a label; the action
        # is its kind: failover (down or captive portal), failback, pin, avoid (failover test), initial.
        switches = counter(
            "nmfailover_switches",
            "Switches of the uplink carrying traffic since the daemon started, by action and roles.",
            ("action", "from", "to"),
        )
        for (action, from_role, to_role), count in sorted(self._switches.items()):
            switches.add_metric([action, from_role, to_role], count)
        last = gauge(
            "nmfailover_last_switch_timestamp_seconds", "When traffic last switched (absent before).", ()
        )
        if status.last_switch_at is not None:
            last.add_metric([], round(status.last_switch_at, 3))
        gauge(
            "nmfailover_failback_hold_down_remaining_seconds",
            "Seconds before traffic may move back to a more preferred uplink.",
            (),
        ).add_metric([], status.hold_down_remaining)
        gauge(
            "nmfailover_forced_failover_remaining_seconds",
            "Seconds left of the failover test (`nmfailover test-failover`).",
            (),
        ).add_metric([], status.forced_failover_remaining)
        _budget_families(status, uplinks, gauge)
        gauge(
            "nmfailover_start_time_seconds", "When the daemon started (seconds since the epoch).", ()
        ).add_metric([], round(self._started_at, 3))
        restarts = counter(
            "nmfailover_task_restarts", "Restarts of each supervised loop after a crash.", ("task",)
        )
        for task, count in sorted(status.task_restarts.items()):
            restarts.add_metric([task], count)
        return families


def _budget_families(
    status: Status,
    uplinks: Iterable[UplinkStatus],
    gauge: Callable[[str, str, Iterable[str]], GaugeMetricFamily],
) -> None:
    """The metered uplinks' bytes and budget (budget.py), from the status's `metered_budget`."""
    budget = status.metered_budget
    if budget is None:
        return
    # The ledger knows profiles (stable across restarts); the label is the role, as everywhere here.
    roles = {u.profile: u.role for u in uplinks}
    month = gauge(
        "nmfailover_metered_month_bytes",
        "Bytes each metered uplink carried while it carried traffic, this calendar month.",
        ("uplink",),
    )
    for profile, count in sorted(budget.month_bytes_by_uplink.items()):
        month.add_metric([roles.get(profile, profile)], count)
    outage = gauge(
        "nmfailover_metered_outage_bytes",
        "Bytes the metered uplink carried in the current outage, or the last one.",
        ("uplink",),
    )
    if budget.outage is not None:
        profile = budget.outage.uplink
        outage.add_metric([roles.get(profile, profile)], budget.outage.bytes)
    if budget.budget_bytes is not None:
        gauge(
            "nmfailover_metered_budget_bytes", "The monthly budget (NMFAILOVER_METERED_BUDGET).", ()
        ).add_metric([], budget.budget_bytes)
        gauge(
            "nmfailover_metered_budget_used_ratio",
            "Share of the monthly budget the metered uplinks used this month (0 to 1 and beyond).",
            (),
        ).add_metric([], round(budget.month_bytes / budget.budget_bytes, 6))
        gauge(
            "nmfailover_metered_budget_warning_percent",
            "The highest NMFAILOVER_METERED_BUDGET_WARN share passed this month (0: none).",
            (),
        ).add_metric([], budget.warned_pct)


class _StatusCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new one, never a part."""
    # Not ending in .prom: node_exporter never reads the half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        # The unit's UMask=0077 would leave it unreadable for node_exporter's own user.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _stop_server(server: WSGIServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()  # without it the port stays bound until the process ends
    thread.join(5)
