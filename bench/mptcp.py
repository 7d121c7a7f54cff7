"""Multipath TCP through failovers, measured (issue 18): what a long connection opened on the primary sees.

    .venv/bin/python bench/mptcp.py [--runs 5] [--json FILE]

Each run builds its own lab with one internet behind both uplinks (NMLab(2, shared_internet=True): a real
NetworkManager 1.42, the kernel's MPTCP on both sides) and starts nmfailover (failback hold-down 2 s, the
rest at its defaults). Two connections to the shared internet's server are opened on the primary, each
receiving a paced, checked stream of 200 kB/s (nmfailover.lab.stream): one Multipath TCP, one plain TCP (the
baseline). Then: 3 s healthy (the backup's share of the bytes received, from the devices' counters, the
daemon's probes included), a silent cut of the primary (Upstream.blackhole()) for 5 s, heal and failback, a
pulled cable for 5 s, heal and failback. A stall is how long the stream stood still after the fault (pauses
with only a trickle between them count as one); detection is the daemon's own, from the fault to the
kernel's default route on the backup. The same runs with NMFAILOVER_MPTCP=false show NetworkManager's own
endpoints alone (no backup flag: both subflows carry data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import log_lines, log_time  # noqa: E402
from bench.methods import daemon_in  # noqa: E402
from nmfailover.lab.sandbox import NMLab, StreamResult  # noqa: E402

HEALTHY_SECONDS = 3.0
FAULT_SECONDS = 5.0
SETTLE_SECONDS = 2.0
# The lab's round trip to the shared internet, as the kernel measures it (ss's rtt on the primary's subflow,
# 0.1-0.2 ms), and the stream's resolution (a 1 kB chunk every 5 ms at 200 kB/s): the goal is a stall no
# longer than the daemon's failover (its switch applied) plus these.
LAB_RTT = 0.001
RESOLUTION = 0.005
Run = dict[str, Any]


def _received(lab: NMLab) -> tuple[int, int]:
    return lab.iface_bytes("wana")[0], lab.iface_bytes("wanb")[0]


def one_run(workdir: Path, mptcp: bool) -> Run:
    with (
        NMLab(2, shared_internet=True) as lab,
        daemon_in(
            lab, workdir / f"mptcp-{mptcp}.log", failback_hold_down="2", mptcp="true" if mptcp else "false"
        ) as daemon,
    ):
        multipath, plain = lab.stream(), lab.stream(tcp=True)
        time.sleep(1)
        before = _received(lab)
        time.sleep(HEALTHY_SECONDS)
        after = _received(lab)
        on_a, on_b = after[0] - before[0], after[1] - before[1]
        up = lab.upstreams[0]
        moments: dict[str, tuple[float, float]] = {}
        for fault, make in (("blackhole", up.blackhole), ("cable", up.cut_cable)):
            started = time.time()
            make()
            detection = daemon.wait_route("wanb", timeout=30)
            time.sleep(max(0.0, FAULT_SECONDS - detection))
            healed = time.time()
            up.heal()
            daemon.wait_route("wana", timeout=60)
            time.sleep(SETTLE_SECONDS)
            moments[fault] = (started, detection)
            moments[f"{fault}-failback"] = (healed, 0.0)
        result, baseline = multipath.stop(), plain.stop()
        text = daemon.text()
    run: Run = {
        "mptcp_setting": mptcp,
        "backup_share": on_b / (on_a + on_b) if on_a + on_b else None,
        "lost": _lost(result),
        "baseline_lost": _lost(baseline),
        "bytes": result.received,
    }
    for name, (moment, detection) in moments.items():
        run[f"{name}_stall"] = result.stall(moment, FAULT_SECONDS + 10)
        run[f"{name}_baseline_stall"] = baseline.stall(moment, FAULT_SECONDS + 10)
        if detection:
            run[f"{name}_decided"] = _logged_after(text, r"-> switching to backup", moment) - moment
            run[f"{name}_detection"] = (
                _logged_after(text, r"backup \(wanb\): route metric 100", moment) - moment
            )
    return run


def _logged_after(text: str, pattern: str, moment: float) -> float:
    """When the daemon first logged `pattern` after `moment` (its log's stamps are to the millisecond)."""
    return min(t for t in (log_time(line) for line in log_lines(text, pattern)) if t >= moment - 0.001)


def _lost(result: StreamResult) -> str:
    """What the connection lost: "" for nothing (every byte in order), else what went wrong."""
    if result.broken_at is not None:
        return f"stream broken at byte {result.broken_at}"
    return result.error


def _median(runs: list[Run], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def _row(title: str, *cells: str) -> str:
    return f"{title:62} " + " ".join(f"{cell:>10}" for cell in cells)


def table(runs: list[Run]) -> str:
    ours = [r for r in runs if r["mptcp_setting"]]
    theirs = [r for r in runs if not r["mptcp_setting"]]
    lines = [_row(f"(medians of {len(ours)} runs)", "stall", "decided", "switched", "beyond it")]
    for name, title in (("blackhole", "silent cut"), ("cable", "pulled cable")):
        for label, group in (("MPTCP, nmfailover", ours), ("MPTCP, NM's endpoints only", theirs)):
            if group:
                stall, detection = _median(group, f"{name}_stall"), _median(group, f"{name}_detection")
                decided = _median(group, f"{name}_decided")
                cells = (
                    f"{stall:.3f} s",
                    f"{decided:.3f} s",
                    f"{detection:.3f} s",
                    f"{stall - detection:.3f} s",
                )
                lines.append(_row(f"{label}: {title}", *cells))
        lines.append(
            _row(f"plain TCP (baseline): {title}", f"{_median(ours, f'{name}_baseline_stall'):.2f} s")
        )
        lines.append(
            _row(
                f"MPTCP, nmfailover: failback after {title}",
                f"{_median(ours, f'{name}-failback_stall'):.2f} s",
            )
        )
    for label, group in (("nmfailover", ours), ("NM's endpoints only", theirs)):
        if group:
            share = 100 * _median(group, "backup_share")
            lines.append(_row(f"backup's share of bytes, primary healthy ({label})", f"{share:.2f} %"))
    lost = [r["lost"] for r in runs if r["lost"]]
    baseline_lost = [r["baseline_lost"] for r in runs if r["baseline_lost"]]
    met = all(
        _median(ours, f"{n}_stall") <= _median(ours, f"{n}_detection") + LAB_RTT + RESOLUTION
        for n in ("blackhole", "cable")
    )
    lines += [
        f"the faults lasted {FAULT_SECONDS:g} s each; plain TCP stands still until the primary is back",
        f"MPTCP connections that lost bytes or died: {len(lost)} of {len(runs)} {lost or ''}",
        f"plain TCP connections that lost bytes or died: {len(baseline_lost)} of {len(ours)}",
        "decided: the daemon's decision; switched: its failover applied, the route on the backup (both from "
        "its log); beyond it: stall - switched",
        f"goal (stall <= switched + one round trip, {LAB_RTT * 1000:g} ms here, + the stream's "
        f"{RESOLUTION * 1000:g} ms resolution): " + ("met" if met else "not met"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--without-nm-only", action="store_true", help="skip the NMFAILOVER_MPTCP=false runs")
    args = parser.parse_args(argv)
    workdir = Path("/tmp") / f"nmfo-mptcp-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True)
    runs: list[Run] = []
    for i in range(args.runs):
        for mptcp in (True,) if args.without_nm_only else (True, False):
            run = one_run(workdir, mptcp)
            runs.append(run)
            print(
                f"run {i + 1}/{args.runs} NMFAILOVER_MPTCP={str(mptcp).lower()}: "
                f"silent cut {run['blackhole_stall']:.2f} s (detection {run['blackhole_detection']:.2f} s), "
                f"cable {run['cable_stall']:.2f} s (detection {run['cable_detection']:.2f} s), "
                f"backup share {100 * (run['backup_share'] or 0):.2f} %",
                file=sys.stderr,
                flush=True,
            )
    print(table(runs))
    if args.json is not None:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
