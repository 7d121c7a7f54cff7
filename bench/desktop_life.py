"""The desktop life, measured: uplinks found at run time coming and going, and a laptop's day.

    .venv/bin/python bench/desktop_life.py [--runs 5] [--json FILE]

Each run builds its own lab (a real NetworkManager, its profiles ordered by route metrics of their own) and
starts nmfailover with NMFAILOVER_UPLINKS=auto and the default settings but the failback hold-down (1 s, so
that "traffic on a joining uplink" times the join and the proof, not the hold-down). Times are from the
moment NetworkManager was asked (nmcli returned) to what a user would see: the joining uplink in the
daemon's uplinks, traffic (the default route) on it, traffic back on the primary with nmfailover's metrics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.methods import daemon_in  # noqa: E402
from nmfailover.lab.demo import DaemonProcess, wait_for  # noqa: E402
from nmfailover.lab.sandbox import NMLab  # noqa: E402

OURS = [("wana", 100), ("wanb", 200)]


def own_metrics(lab: NMLab, metrics: dict[str, int]) -> None:
    for profile, metric in metrics.items():
        lab.nmcli("connection", "modify", profile, "ipv4.route-metric", str(metric))


def since(started: float) -> float:
    return time.monotonic() - started


def third_uplink(workdir: Path) -> dict[str, float]:
    """A better third uplink activated at run time, then its device removed."""
    with NMLab(3) as lab:
        own_metrics(lab, {"primary": 100, "backup": 200, "fallback": 50})
        lab.nmcli("connection", "down", "fallback")
        with daemon_in(lab, workdir / "third.log", uplinks="auto", failback_hold_down="1") as daemon:
            started = time.monotonic()
            lab.nmcli("connection", "up", "fallback")
            daemon.wait_log(r"uplinks now: primary \(wanc\)")
            joined = since(started)
            daemon.wait_log(r"switching to primary \(wanc\)", timeout=15)
            daemon.wait_route("wanc", timeout=5)
            carrying = since(started)
            started = time.monotonic()
            lab.host("ip", "link", "del", "wanc")
            daemon.wait_route("wana", timeout=10)
            return {
                "join": joined,
                "traffic on the joining uplink": carrying,
                "back when it left": since(started),
            }


def on_demand(workdir: Path) -> dict[str, float]:
    """A cold on-demand backup: the primary's silent death to traffic on it, its activation included."""
    with NMLab(2) as lab:
        own_metrics(lab, {"primary": 100, "backup": 200})
        settings = {"on_demand": "backup", "on_demand_linger": "2", "failback_hold_down": "2"}
        with daemon_in(lab, workdir / "on-demand.log", uplinks="auto", **settings) as daemon:
            daemon.wait_log(r"on demand, taken down")
            wait_for(lambda: lab.default_routes(4) == [("wana", 100)], 10, "the backup down")
            started = time.monotonic()
            lab.upstreams[0].blackhole()
            daemon.wait_route("wanb", timeout=15)
            cold = since(started)
            lab.upstreams[0].heal()
            daemon.wait_route("wana", timeout=20)
            started = time.monotonic()
            wait_for(lambda: lab.default_routes(4) == [("wana", 100)], 15, "the backup down again")
            _check_clean(daemon)
            return {
                "on demand: outage to traffic on the cold backup": cold,
                "on demand: down after failback (linger 2 s)": since(started),
            }


def networking_off_on(lab: NMLab) -> None:
    lab.nmcli("networking", "off")
    wait_for(lambda: not lab.default_routes(4), 10, "no default route")
    lab.nmcli("networking", "on")


def nm_restart(lab: NMLab) -> None:
    lab.restart_nm()


def suspend_resume(lab: NMLab) -> None:
    def sleep(asleep: bool) -> None:
        lab.host(
            "dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.NetworkManager",
            "/org/freedesktop/NetworkManager", "org.freedesktop.NetworkManager.Sleep",
            f"boolean:{str(asleep).lower()}",
        )  # fmt: skip

    sleep(True)
    for upstream in lab.upstreams:  # a laptop's own devices go down while it sleeps; the lab's veths do not
        upstream.cut_cable()
    wait_for(lambda: not lab.default_routes(4), 15, "no default route")
    sleep(False)
    for upstream in lab.upstreams:  # as a laptop's links come back: once it is awake
        upstream.restore_cable()


MOMENTS: dict[str, Callable[[NMLab], None]] = {
    "networking off and on": networking_off_on,
    "suspend and resume": suspend_resume,
    "NetworkManager restarted": nm_restart,
}


def laptop_moment(workdir: Path, name: str, moment: Callable[[NMLab], None]) -> float:
    with NMLab(2) as lab:
        own_metrics(lab, {"primary": 100, "backup": 200})
        with daemon_in(lab, workdir / f"{name.replace(' ', '-')}.log", uplinks="auto") as daemon:
            wait_for(lambda: lab.default_routes(4) == OURS, 10, "our metrics")
            moment(lab)
            started = time.monotonic()
            wait_for(lambda: lab.default_routes(4) == OURS, 30, "our metrics again", step=0.02)
            _check_clean(daemon)
            return since(started)


def _check_clean(daemon: DaemonProcess) -> None:
    text = daemon.text()
    if " ERROR " in text or "Traceback" in text:
        raise RuntimeError(f"errors in the daemon's log:\n{text[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workdir = Path("/tmp") / f"nmfo-desktop-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True)
    runs: dict[str, list[float]] = {}
    for run in range(args.runs):
        for key, seconds in (third_uplink(workdir) | on_demand(workdir)).items():
            runs.setdefault(key, []).append(seconds)
        for name, moment in MOMENTS.items():
            runs.setdefault(f"{name}: traffic back on the primary", []).append(
                laptop_moment(workdir, name, moment)
            )
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(f"{'':52} {'median':>8} {'worst':>8}  (of {args.runs})")
    for key, values in runs.items():
        print(f"{key:52} {statistics.median(values):7.2f}s {max(values):7.2f}s")
    if args.json is not None:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
