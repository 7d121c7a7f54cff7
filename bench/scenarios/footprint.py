"""Footprint: nmfailover's memory, CPU and probe traffic at its defaults, and the other methods' traffic.

Traffic is rx+tx bytes of the host-side devices, minus the idle sandbox's own background.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import NM_CONNECTIVITY, NM_CONNECTIVITY_FAST, NM_FAST_INTERVAL
from bench.methods import VirtualFailover, daemon_in, trigger_nm_check, wait_nm_full
from nmfailover.config import Settings
from nmfailover.lab.sandbox import NMLab

BASELINE_SECONDS = 30.0
BASELINE_TRAFFIC_SECONDS = 120.0  # the other methods' traffic: steady enough to need no more
NM_CHECKS = 3
UPLINKS = ("wana", "wanb")


def _counters(lab: NMLab, dev: str) -> int:
    """rx + tx bytes of a host-side device."""
    stats = f"/sys/class/net/{dev}/statistics"
    return sum(int(lab.host("cat", f"{stats}/{c}_bytes").stdout) for c in ("rx", "tx"))


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _traffic(lab: NMLab, seconds: float) -> dict[str, float]:
    """Bytes per second on each uplink's host-side device over `seconds`."""
    before = {dev: _counters(lab, dev) for dev in UPLINKS}
    time.sleep(seconds)
    return {dev: (_counters(lab, dev) - before[dev]) / seconds for dev in UPLINKS}


def _nmfailover(workdir: Path, seconds: float) -> dict[str, Any]:
    with NMLab(2) as lab:
        # The lab's own chatter (IPv6 router solicitations and the like) is not the daemon's.
        out: dict[str, Any] = {"baseline_bytes_per_s": _traffic(lab, min(BASELINE_SECONDS, seconds))}
        with daemon_in(lab, workdir / "footprint.log") as daemon:
            pid = daemon.proc.pid
            cpu0, start = _proc_cpu(pid), time.monotonic()
            before = {dev: _counters(lab, dev) for dev in UPLINKS}
            requests0 = [up.http_requests() for up in lab.upstreams]
            rss = []
            while time.monotonic() - start < seconds:
                rss.append(_rss_kib(pid))
                time.sleep(1.0)
            elapsed = time.monotonic() - start
            cpu = _proc_cpu(pid) - cpu0
            after = {dev: _counters(lab, dev) for dev in UPLINKS}
            requests = [up.http_requests() - r for up, r in zip(lab.upstreams, requests0, strict=True)]
        out.update(
            {
                "rss_kib_median": statistics.median(rss),
                "rss_kib_max": max(rss),
                "rss_kib_samples": rss,
                "cpu_seconds": cpu,
                "cpu_percent": 100 * cpu / elapsed,
                "elapsed": elapsed,
                "bytes_per_s": {dev: (after[dev] - before[dev]) / elapsed for dev in after},
                "http_requests": dict(zip(UPLINKS, requests, strict=True)),
            }
        )
    return out


def _virtual_failover(seconds: float) -> dict[str, float]:
    with NMLab(2) as lab:
        vf = VirtualFailover(lab)
        try:
            vf.event("ready", 30)
            return _traffic(lab, min(BASELINE_TRAFFIC_SECONDS, seconds))
        finally:
            vf.stop()


def _nm_fast_check(seconds: float) -> dict[str, float]:
    # At a 2 s period the checks' own traffic is measured like the other methods', not derived per check.
    with NMLab(2, extra_nm_config=NM_CONNECTIVITY_FAST) as lab:
        wait_nm_full(lab)
        return _traffic(lab, min(BASELINE_TRAFFIC_SECONDS, seconds))


def _nm_check_bytes() -> dict[str, float]:
    """Bytes one NM connectivity check costs on each uplink, averaged over a few checks."""
    with NMLab(2, extra_nm_config=NM_CONNECTIVITY) as lab:
        wait_nm_full(lab)
        time.sleep(1.0)
        before = {dev: _counters(lab, dev) for dev in UPLINKS}
        for _ in range(NM_CHECKS):
            trigger_nm_check(lab).wait(30)
        return {dev: (_counters(lab, dev) - before[dev]) / NM_CHECKS for dev in before}


def run_footprint(workdir: Path, seconds: float) -> dict[str, Any]:
    # The daemon's own defaults, so the table says what was measured even after they change.
    fields = Settings.model_fields
    out: dict[str, Any] = {
        "seconds": seconds,
        "intervals": {"wana": fields["active_interval"].default, "wanb": fields["standby_interval"].default},
    }
    out.update(_nmfailover(workdir, seconds))
    out["virtual_failover_bytes_per_s"] = _virtual_failover(seconds)
    out["nm_check_bytes_per_check"] = _nm_check_bytes()
    out["nm_fast_interval"] = NM_FAST_INTERVAL
    out["nm_fast_check_bytes_per_s"] = _nm_fast_check(seconds)
    return out
