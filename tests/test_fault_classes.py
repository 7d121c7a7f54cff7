"""Every fault class a user feels, against the real daemon and a real NetworkManager: each test isolates the
mechanism that must find it (the others are slowed down), so it fails when that mechanism is deleted.

Time bounds separate mechanisms by a wide margin: e.g. a refusal under user traffic must be found by the
traffic itself within seconds, while every other way to find it is set a minute away.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from nmfailover.lab.demo import DaemonProcess, wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

# Every way but the one under test a minute or more away.
SLOW_CHECKS = {
    "NMFAILOVER_DNS_CHECK_INTERVAL": "120",
    "NMFAILOVER_HTTP_CHECK_INTERVAL": "120",
    "NMFAILOVER_TRAFFIC_CHECK_INTERVAL": "120",
}
NO_PASSIVE = {"NMFAILOVER_PASSIVE": "false"}


def on_backup(lab: NMLab) -> bool:
    return lab.default_route(4) == "wanb"


def failover_seconds(lab: NMLab, started: float, timeout: float) -> float:
    wait_for(lambda: on_backup(lab), timeout, "traffic on the backup", step=0.05)
    return time.monotonic() - started


def ready(daemon: DaemonProcess) -> None:
    daemon.wait_log(r"ready: traffic on primary")
    time.sleep(1.5)  # past the start-up rounds: the faults hit a daemon in its steady state


# -- the user's own traffic -------------------------------------------------------------------------


def test_refusals_under_user_traffic_are_found_by_that_traffic(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=SLOW_CHECKS) as daemon:
        ready(daemon)
        with nmlab.user_traffic():
            started = time.monotonic()
            nmlab.upstreams[0].refuse()
            seconds = failover_seconds(nmlab, started, 10)
        print(f"refused under user traffic -> backup in {seconds:.2f} s")
        assert daemon.stop() == 0


def test_silence_under_user_traffic_is_a_strike(nmlab: NMLab, tmp_path: Path) -> None:
    # Heartbeats every 30 s: found within 3 s only through the user's unanswered connection attempts.
    env = {**SLOW_CHECKS, "NMFAILOVER_ACTIVE_INTERVAL": "30"}
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=env) as daemon:
        ready(daemon)
        with nmlab.user_traffic():
            time.sleep(1.0)
            started = time.monotonic()
            nmlab.upstreams[0].blackhole()
            seconds = failover_seconds(nmlab, started, 3)
        print(f"silent death under user traffic -> backup in {seconds:.2f} s")
        assert daemon.stop() == 0


def test_failing_lookups_under_user_traffic_move_dns_at_once(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=SLOW_CHECKS) as daemon:
        ready(daemon)
        with nmlab.user_traffic(lookup_only=True, resolv_conf=nmlab.nm_resolv_conf):
            started = time.monotonic()
            nmlab.upstreams[0].break_dns()
            daemon.wait_log(r"name resolution moved to", timeout=6)
            print(f"dead resolver under user traffic -> DNS moved in {time.monotonic() - started:.2f} s")
        assert nmlab.lookup("target1.test", timeout=1)[0]
        assert not on_backup(nmlab)
        assert daemon.stop() == 0


def test_without_the_traffic_watch_refusals_wait_for_the_checks(nmlab: NMLab, tmp_path: Path) -> None:
    """The baseline of the first test: the same refusal under the same traffic is not found in 10 s."""
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra={**SLOW_CHECKS, **NO_PASSIVE}) as daemon:
        ready(daemon)
        with nmlab.user_traffic():
            nmlab.upstreams[0].refuse()
            time.sleep(10)
            assert not on_backup(nmlab)
        assert daemon.stop() == 0


# -- idle: the cheap layers --------------------------------------------------------------------------

IDLE_FAULTS = [
    pytest.param(lambda lab: lab.upstreams[0].refuse(), r"\(connect\)", id="refused"),
    pytest.param(lambda lab: lab.upstreams[0].hang(), r"answers every echo", id="hang"),
    pytest.param(
        lambda lab: lab.upstreams[0].portal("redirect"), r"primary \(wana\) portal", id="portal-302"
    ),
    pytest.param(lambda lab: lab.upstreams[0].portal("login"), r"primary \(wana\) portal", id="portal-200"),
]


@pytest.mark.parametrize(("fault", "seen"), IDLE_FAULTS)
def test_idle_failures_above_the_path_are_found_between_proofs(
    nmlab: NMLab, tmp_path: Path, fault: object, seen: str
) -> None:
    # Proofs every 300 s (the default): only the kept-alive HTTP check (every 15 s) can find these in 25 s.
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=NO_PASSIVE) as daemon:
        ready(daemon)
        started = time.monotonic()
        fault(nmlab)  # type: ignore[operator]
        seconds = failover_seconds(nmlab, started, 25)
        print(f"idle fault -> backup in {seconds:.2f} s")
        assert re.search(seen, daemon.text()), seen
        assert "kept-alive check failed" in daemon.text()
        assert daemon.stop() == 0


def test_heavy_loss_one_way_is_found_by_the_loss_test(nmlab: NMLab, tmp_path: Path) -> None:
    # Bursts of 16: at 60 % loss one lost whole (which reads as a dead path, another mechanism) is a 1 in
    # 3,500 chance, not the 1 in 60 of the default 8.
    env = {**SLOW_CHECKS, **NO_PASSIVE, "NMFAILOVER_ECHO_BURST": "16"}
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=env) as daemon:
        ready(daemon)
        started = time.monotonic()
        nmlab.upstreams[0].lossy(60, "to_internet")
        seconds = failover_seconds(nmlab, started, 15)
        print(f"60 % loss one way -> backup in {seconds:.2f} s")
        assert "heavy loss" in daemon.text()
        assert daemon.stop() == 0


# -- the candidate is proved before it takes the traffic ----------------------------------------------


@pytest.mark.parametrize("cut", ["blackhole", "cut_cable"])
def test_a_backup_behind_a_portal_never_takes_the_traffic(nmlab: NMLab, tmp_path: Path, cut: str) -> None:
    primary, backup = nmlab.upstreams
    # The backup was last proved at start; its standby proofs are 300 s apart. A pulled cable is down at
    # once, before any round of the backup's could show the portal: only the proof asked first does.
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=NO_PASSIVE) as daemon:
        ready(daemon)
        backup.portal("redirect")
        getattr(primary, cut)()
        daemon.wait_log(r"primary \(wana\) down")
        daemon.wait_log(r"backup \(wanb\) (portal|failing)")
        time.sleep(2)
        assert not on_backup(nmlab) and "-> switching" not in daemon.text()
        backup.heal()
        failover_seconds(nmlab, time.monotonic(), 15)
        assert daemon.stop() == 0
