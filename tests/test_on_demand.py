"""On-demand uplinks against the real daemon and a real NetworkManager: kept down while the primary is
healthy, activated for an outage (cold start to traffic timed), taken down again after failback and the
linger, given back at stop; an activation that fails is logged once and retried."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

ON_DEMAND = {
    "NMFAILOVER_ON_DEMAND": "backup",
    "NMFAILOVER_ON_DEMAND_LINGER": "2",
    "NMFAILOVER_FAILBACK_HOLD_DOWN": "2",
}


def active(lab: NMLab) -> set[str]:
    return set(lab.nmcli("-t", "-f", "NAME", "connection", "show", "--active").split())


@pytest.mark.parametrize("uplinks", ["named", "auto"])
def test_a_cold_backup_comes_up_for_an_outage_and_goes_down_after_failback(
    nmlab: NMLab, tmp_path: Path, uplinks: str
) -> None:
    env = dict(ON_DEMAND)
    if uplinks == "auto":
        # Found: the on-demand backup stays an uplink while it is down (its metric orders it second).
        env["NMFAILOVER_UPLINKS"] = "auto"
        for profile, metric in (("primary", 100), ("backup", 200)):
            nmlab.nmcli("connection", "modify", profile, "ipv4.route-metric", str(metric))
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=env) as daemon:
        daemon.wait_log(r"backup \(wanb\): on demand, taken down")
        wait_for(lambda: "backup" not in active(nmlab), 10, "the backup down")
        time.sleep(3.0)
        assert "backup" not in active(nmlab), "activated while the primary is healthy"
        started = time.monotonic()
        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        cold = time.monotonic() - started
        nmlab.upstreams[0].heal()
        daemon.wait_route("wana", timeout=20)
        started = time.monotonic()
        wait_for(lambda: "backup" not in active(nmlab), 15, "the backup down again")
        lingered = time.monotonic() - started
        print(
            f"on demand: outage to traffic on the cold backup {cold:.2f} s; down {lingered:.2f} s after failback"
        )
        assert daemon.text().count("could not activate") == 0
        assert daemon.stop() == 0
    # It was up before the daemon took it down: up again after.
    wait_for(lambda: "backup" in active(nmlab), 20, "the backup given back")


def test_an_activation_that_fails_is_logged_once_and_retried(nmlab: NMLab, tmp_path: Path) -> None:
    # A profile for a device that is not there: NetworkManager refuses to activate it.
    nmlab.nmcli(
        "connection", "add", "type", "ethernet", "ifname", "nosuch0", "con-name", "ghost",
        "ipv4.method", "manual", "ipv4.addresses", "198.51.100.2/24", "ipv4.gateway", "198.51.100.1",
    )  # fmt: skip
    env = {"NMFAILOVER_UPLINKS": "primary,ghost", "NMFAILOVER_ON_DEMAND": "ghost"}
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=env) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].blackhole()
        daemon.wait_log(r"on demand, could not activate it")
        daemon.wait_log(r"on demand, activation attempt 3 failed", timeout=15)
        assert daemon.text().count("could not activate it") == 1
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
