"""Uplinks found at run time, against the real daemon and a real NetworkManager: nothing named, the active
connections are the uplinks in the order a person would choose, and they come and go while it runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon


def own_metrics(lab: NMLab, metrics: dict[str, int]) -> None:
    """Give the profiles route metrics of their own (saved, as a person would), which order equal kinds."""
    for profile, metric in metrics.items():
        lab.nmcli(
            "connection",
            "modify",
            profile,
            "ipv4.route-metric",
            str(metric),
            "ipv6.route-metric",
            str(metric),
        )


def test_a_third_uplink_joins_takes_the_traffic_as_the_best_and_leaves_with_its_device(
    nmlab3: NMLab, tmp_path: Path
) -> None:
    own_metrics(nmlab3, {"primary": 100, "backup": 200, "fallback": 50})
    nmlab3.nmcli("connection", "down", "fallback")
    with running_daemon(nmlab3, tmp_path / "daemon.log", uplinks="auto", failback_hold_down="1") as daemon:
        daemon.wait_log(r"ready: traffic on primary \(wana\)")
        assert "backup (wanb): wired, route metric 200" in daemon.text()
        started = time.monotonic()
        nmlab3.nmcli("connection", "up", "fallback")
        daemon.wait_log(r"uplinks now: primary \(wanc\): wired, route metric 50; backup \(wana\)")
        joined = time.monotonic() - started
        # Proved before it takes the traffic (NetworkManager's own metric gives it the route for the moment
        # of its activation, until ours demotes it), then preferred, after the hold-down.
        daemon.wait_log(r"switching to primary \(wanc\)", timeout=15)
        daemon.wait_route("wanc", timeout=5)
        moved = time.monotonic() - started
        text = daemon.text()
        assert (
            text.index("uplinks now: primary (wanc)")
            < text.index("primary (wanc) up")
            < text.index("switching to primary (wanc)")
        )
        # Renamed while it is an uplink, then gone: its loops end all the same.
        nmlab3.nmcli("connection", "modify", "fallback", "connection.id", "Tether")
        wait_for(lambda: "primary (Tether)" in status(nmlab3), 10, "the new name")
        assert {"probe-fallback", "traffic-fallback"} <= set(status_json(nmlab3)["task_restarts"])
        started = time.monotonic()
        nmlab3.host("ip", "link", "del", "wanc")
        daemon.wait_log(r"no longer an uplink")
        daemon.wait_route("wana", timeout=10)
        gone = time.monotonic() - started
        restarts = set(status_json(nmlab3)["task_restarts"])
        assert not {n for n in restarts if "fallback" in n or "Tether" in n}, restarts
        print(
            f"third uplink: joined in {joined:.2f} s, traffic on it {moved:.2f} s after activation, back {gone:.2f} s after its device vanished"
        )
        assert "Traceback" not in daemon.text()
        assert daemon.stop() == 0


def status(lab: NMLab) -> str:
    return lab.host(sys.executable, "-m", "nmfailover", "status", env=lab.env).stdout


def status_json(lab: NMLab) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        lab.host(sys.executable, "-m", "nmfailover", "status", "--json", env=lab.env).stdout
    )
    return found


def test_with_one_uplink_it_waits_and_a_second_one_makes_it_fail_over(nmlab: NMLab, tmp_path: Path) -> None:
    own_metrics(nmlab, {"primary": 100, "backup": 200})
    nmlab.nmcli("connection", "down", "backup")
    with running_daemon(nmlab, tmp_path / "daemon.log", uplinks="auto") as daemon:
        daemon.wait_log(r"one uplink \(primary \(wana\)\): nothing to fail over to; waiting")
        time.sleep(1.0)
        assert nmlab.default_routes(4) == [("wana", 100)], "with one uplink nothing is changed"
        assert daemon.text().count("nothing to fail over to") == 1, "said once"
        nmlab.nmcli("connection", "up", "backup")
        daemon.wait_log(r"uplinks now: primary \(wana\): wired, route metric 100; backup \(wanb\)")
        daemon.wait_log(r"backup \(wanb\) up")
        # Renamed: the same uplink, followed by its UUID; status shows the order found and why.
        nmlab.nmcli("connection", "modify", "backup", "connection.id", "Hotspot")
        wait_for(lambda: "backup (Hotspot): wired, route metric 200" in status(nmlab), 10, "the new name")
        assert "primary (primary): wired, route metric 100" in status(nmlab)
        assert daemon.text().count("uplinks now") == 1, "a rename is no new uplink"
        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=10)
        assert daemon.stop() == 0
    # Stopped: each profile's own metric back.
    assert sorted(nmlab.default_routes(4)) == [("wana", 100), ("wanb", 200)]
