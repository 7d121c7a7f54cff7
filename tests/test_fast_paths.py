"""The event paths, against a real NetworkManager, with probes 30 s apart: only the event can explain a
switch within a second. Each test fails when its path is removed (the carrier branch of the event intake,
the dispatcher hook's Recheck call or the daemon's Recheck)."""

from __future__ import annotations

import time
from pathlib import Path

from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon
from tests.operate import HOOK

SLOW_PROBES = {
    "NMFAILOVER_ACTIVE_INTERVAL": "30",
    "NMFAILOVER_STANDBY_INTERVAL": "30",
    "NMFAILOVER_SUSPECT_INTERVAL": "0.3",
    "NMFAILOVER_PROBE_TIMEOUT": "0.5",
    "NMFAILOVER_FAILBACK_HOLD_DOWN": "60",
}


def test_pulled_cable_switches_within_a_second(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=SLOW_PROBES) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].cut_cable()
        took = daemon.wait_route("wanb", timeout=10)
        assert took < 1.0, f"a pulled cable took {took:.2f} s to act on, with probes 30 s apart"
        assert daemon.stop() == 0


def test_dispatcher_hook_recheck_switches_within_a_second(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=SLOW_PROBES) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        # Refused upstream: no NetworkManager event, so only a probe can notice, and the next is 30 s away.
        nmlab.upstreams[0].refuse()
        time.sleep(2)
        assert nmlab.default_route(4) == "wana", "switched with no event and no probe due"
        env = dict(nmlab.env, CONNECTION_ID="primary", DEVICE_IP_IFACE="wana")
        started = time.monotonic()
        # What nm-dispatcher runs on a DHCP renewal of the primary (the hook under the real dispatcher is
        # proven in test_dispatcher).
        assert nmlab.host(str(HOOK), "wana", "dhcp4-change", env=env, check=False).returncode == 0
        daemon.wait_route("wanb", timeout=10)
        took = time.monotonic() - started
        assert took < 1.0, f"the hook's recheck took {took:.2f} s to act on, with probes 30 s apart"
        assert "re-check requested for wana (dhcp4-change (primary))" in daemon.text()
        assert daemon.stop() == 0
