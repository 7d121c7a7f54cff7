"""Fault injection against the real daemon and a real NetworkManager: every scenario asserts where traffic ends up.

Timing settings are the defaults unless a scenario is not about them: where a test waits for a failback, the
hold-down is shortened (HOLD_DOWN); where it waits for the backup to be re-probed, the standby interval is.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from nmfailover.lab.demo import DaemonProcess, wait_for
from nmfailover.lab.sandbox import NMLab
from nmfailover.lab.soak import replug
from tests.daemon import running_daemon

HOLD_DOWN = "3"
FLAP_SECONDS = 60.0
FLAP_HALF_PERIOD = 2.0
FLAP_HOLD_DOWN = 4.0
FLAP_HOLD_DOWN_MAX = 32.0  # reached after 4 failures within the hour
# Echoes go to an address and pass a slow server, a broken resolver or a portal that lets ICMP through:
# those show at the next HTTP proof, every NMFAILOVER_PROOF_INTERVAL (60 s by default, 3 s here).
PROOFS = {"NMFAILOVER_PROOF_INTERVAL": "3"}


def preferred(lab: NMLab, device: str, other: str) -> bool:
    """Both families' default routes: `device` at the base metric, `other` one step behind."""
    return all(lab.default_routes(family) == [(device, 100), (other, 200)] for family in (4, 6))


def wait_preferred(lab: NMLab, device: str, other: str, timeout: float) -> None:
    try:
        wait_for(lambda: preferred(lab, device, other), timeout, f"{device} preferred over {other}", step=0.1)
    except TimeoutError as exc:
        raise TimeoutError(
            f"{exc}; default routes now {lab.default_routes(4)} / {lab.default_routes(6)}"
        ) from None


def wait_routes(lab: NMLab, routes: tuple[list[tuple[str, int]], list[tuple[str, int]]]) -> None:
    """The default routes are `routes` again within a second. NetworkManager 1.42 restarts a device's IPv6
    (addresses and routes gone for some 20 ms) at every Reapply, even one that changes only IPv4 settings
    such as a dns-priority; a route read in that instant is missing, not changed."""
    wait_for(
        lambda: (lab.default_routes(4), lab.default_routes(6)) == routes,
        1,
        f"the default routes of before, {routes}",
        step=0.05,
    )


def switches(daemon: DaemonProcess) -> int:
    return len(re.findall(r"-> switching to", daemon.text()))


def log_time(line: str) -> float:
    """Seconds since the epoch of a daemon log line (its local-time stamp has milliseconds)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


# -- NetworkManager restarts -------------------------------------------------------------------------------


def test_networkmanager_restart_while_on_primary_reapplies_and_keeps_working(
    nmlab: NMLab, tmp_path: Path
) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log", failback_hold_down=HOLD_DOWN) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        wait_preferred(nmlab, "wana", "wanb", 15)  # NetworkManager sets the kernel routes after it answers
        nmlab.restart_nm()
        daemon.wait_log("NetworkManager is back")
        # NetworkManager re-activated both profiles with their own metrics (100 and 101): ours come back.
        wait_preferred(nmlab, "wana", "wanb", 20)
        # Still connected to the new NetworkManager: a failure is still acted on.
        nmlab.upstreams[0].blackhole()
        wait_preferred(nmlab, "wanb", "wana", 15)
        assert daemon.stop() == 0


def test_networkmanager_restart_while_failed_over_keeps_backup_then_fails_back(
    nmlab: NMLab, tmp_path: Path
) -> None:
    primary = nmlab.upstreams[0]
    with running_daemon(nmlab, tmp_path / "daemon.log", failback_hold_down=HOLD_DOWN) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        primary.blackhole()
        wait_preferred(nmlab, "wanb", "wana", 15)
        nmlab.stop_nm()
        daemon.wait_log("NetworkManager left the bus")
        nmlab.start_nm()
        daemon.wait_log("NetworkManager is back")
        wait_preferred(nmlab, "wanb", "wana", 20)
        primary.heal()
        wait_preferred(nmlab, "wana", "wanb", float(HOLD_DOWN) + 15)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0


# -- devices and profiles changing under the daemon -----------------------------------------------------------


def test_uplink_device_disappears_and_comes_back(nmlab: NMLab, tmp_path: Path) -> None:
    primary = nmlab.upstreams[0]
    with running_daemon(nmlab, tmp_path / "daemon.log", failback_hold_down=HOLD_DOWN) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.host("ip", "link", "del", primary.iface)
        # A vanished device is down at once; the backup is all that is left.
        took = daemon.wait_route("wanb", timeout=10)
        assert took < 3, f"took {took:.1f} s to leave a deleted device"
        daemon.wait_log(r"primary \(wana\) down")
        wait_for(lambda: nmlab.default_routes(4) == [("wanb", 100)], 5, "the backup at the base metric")

        replug(nmlab, primary)
        nmlab.nmcli("connection", "up", "primary")
        # The fresh activation came with the profile's own metric; the daemon demotes it, then fails back.
        daemon.wait_log(r"primary \(wana\) up")
        wait_preferred(nmlab, "wana", "wanb", float(HOLD_DOWN) + 15)
        assert "moving back" in daemon.text()
        assert daemon.stop() == 0


def test_uplink_profile_deleted_while_running_the_rest_is_still_managed(
    nmlab3: NMLab, tmp_path: Path
) -> None:
    with running_daemon(nmlab3, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab3.nmcli("connection", "delete", "backup")
        daemon.wait_log(r"backup \(wanb\) down")
        nmlab3.upstreams[0].blackhole()
        wait_for(lambda: nmlab3.default_routes(4) == [("wanc", 100), ("wana", 200)], 15, "fallback preferred")
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0


def test_uplink_profile_deleted_is_logged_once_and_applying_goes_on(nmlab3: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab3, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab3.nmcli("connection", "delete", "backup")
        nmlab3.upstreams[0].blackhole()
        daemon.wait_route("wanc", timeout=15)
        time.sleep(5)  # a few more rounds, each of which reconciles
        text = daemon.text()
        assert len(re.findall(r"backup \(wanb\).*(deleted|removed|no longer exists)", text)) == 1, text
        assert "could not apply the preference" not in text


def test_an_unrelated_connection_going_down_and_up_leaves_traffic_alone(
    nmlab3: NMLab, tmp_path: Path
) -> None:
    # wanc's profile is not an uplink here: think of a VPN or a Wi-Fi coming and going on a laptop.
    with running_daemon(nmlab3, tmp_path / "daemon.log", uplinks="primary,backup") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        for _ in range(15):
            nmlab3.nmcli("connection", "down", "fallback")
            nmlab3.nmcli("connection", "up", "fallback")
        time.sleep(1)
        assert switches(daemon) == 0, daemon.text()
        assert nmlab3.default_routes(4)[:1] == [("wana", 100)]


def test_uplink_profile_renamed_while_running_is_still_managed(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.nmcli("connection", "modify", "backup", "connection.id", "backup-renamed")
        time.sleep(1)
        nmlab.upstreams[0].blackhole()
        # Tracked by UUID: the renamed profile is still the backup.
        wait_preferred(nmlab, "wanb", "wana", 15)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0


# -- unhealthy upstreams ----------------------------------------------------------------------------------------


def test_flapping_primary_switches_a_bounded_number_of_times(nmlab: NMLab, tmp_path: Path) -> None:
    primary = nmlab.upstreams[0]
    with running_daemon(
        nmlab,
        tmp_path / "daemon.log",
        failback_hold_down=str(FLAP_HOLD_DOWN),
        failback_hold_down_max=str(FLAP_HOLD_DOWN_MAX),
    ) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        started = time.monotonic()
        while time.monotonic() - started < FLAP_SECONDS:
            primary.blackhole()
            time.sleep(FLAP_HALF_PERIOD)
            primary.heal()
            time.sleep(FLAP_HALF_PERIOD)
        during = switches(daemon)
        print(
            f"flapping primary: {during} switches in {FLAP_SECONDS:g} s "
            f"({FLAP_SECONDS / (2 * FLAP_HALF_PERIOD):.0f} down/up cycles)"
        )
        # Down at least every few seconds, the primary never serves a whole hold-down of health, so the
        # only switch there can be is the first failover.
        assert during <= 1, daemon.text()
        if during:
            assert nmlab.default_route(4) == "wanb"
        # Once it stays healthy, traffic returns, but only after the damped hold-down: a dozen failures
        # within the hour have doubled it up to its cap, not after the plain one.
        wait_preferred(nmlab, "wana", "wanb", FLAP_HOLD_DOWN_MAX + 15)
        lines = daemon.text().splitlines()
        assert switches(daemon) == 2 * during
        if during:
            back = next(log_time(line) for line in lines if "-> switching to primary" in line)
            up = max(
                log_time(line) for line in lines if "primary (wana) up:" in line and log_time(line) < back
            )
            assert back - up >= FLAP_HOLD_DOWN_MAX
        assert daemon.stop() == 0


def test_dead_resolvers_behind_a_live_path_move_dns_not_the_traffic(nmlab: NMLab, tmp_path: Path) -> None:
    routes = nmlab.default_routes(4), nmlab.default_routes(6)
    with running_daemon(
        nmlab, tmp_path / "daemon.log", env_extra={"NMFAILOVER_DNS_CHECK_INTERVAL": "5"}
    ) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        assert nmlab.lookup("target1.test", timeout=2)[0]
        routes = nmlab.default_routes(4), nmlab.default_routes(6)
        nmlab.upstreams[0].break_dns()  # the targets still answer by address; only names fail
        broken = time.monotonic()
        # An application's lookup through the resolv.conf NetworkManager writes answers again, quickly.
        wait_for(lambda: nmlab.lookup("target1.test", timeout=1)[0], 20, "a lookup answered again")
        print(f"dead resolver -> lookups answered again after {time.monotonic() - broken:.1f} s")
        daemon.wait_log(r"primary \(wana\): its resolvers fail: lookups go to")
        wait_routes(nmlab, routes)  # 0 route changes
        assert switches(daemon) == 0
        nmlab.upstreams[0].heal()
        daemon.wait_log(r"primary \(wana\): its own resolvers back", timeout=40)
        wait_routes(nmlab, routes)
        assert switches(daemon) == 0
        assert daemon.stop() == 0


def test_dead_resolvers_count_as_down_when_moving_dns_is_off(nmlab: NMLab, tmp_path: Path) -> None:
    env = {**PROOFS, "NMFAILOVER_DNS_FAILOVER": "false"}
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=env) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].break_dns()
        wait_preferred(nmlab, "wanb", "wana", 30)
        assert re.search(r"primary \(wana\) down: .*\(dns\)", daemon.text())
        assert "name resolution moved" not in daemon.text()
        assert daemon.stop() == 0


def test_both_uplinks_dead_then_only_the_backup_returns(nmlab: NMLab, tmp_path: Path) -> None:
    primary, backup = nmlab.upstreams
    with running_daemon(nmlab, tmp_path / "daemon.log", standby_interval="2") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        primary.blackhole()
        backup.blackhole()
        daemon.wait_log(r"primary \(wana\) down")
        daemon.wait_log(r"backup \(wanb\) down")
        # If the primary's verdict came first, the backup was still up on the count and took over: one
        # switch at most, and none once both are known dead.
        moved = switches(daemon)
        assert moved <= 1
        wait_preferred(nmlab, "wanb" if moved else "wana", "wana" if moved else "wanb", 15)
        routes = nmlab.default_routes(4), nmlab.default_routes(6)
        time.sleep(4)
        assert (nmlab.default_routes(4), nmlab.default_routes(6)) == routes
        assert switches(daemon) == moved
        backup.heal()
        wait_preferred(nmlab, "wanb", "wana", 20)
        assert switches(daemon) == 1
        verdicts = re.findall(r"primary \(wana\) (up|down):", daemon.text())
        assert verdicts == ["up", "down"], "the dead primary was taken for alive"
        assert daemon.stop() == 0


def test_sigkill_in_the_middle_of_a_failover_leaves_a_recoverable_state(nmlab: NMLab, tmp_path: Path) -> None:
    on_disk = nmlab.profiles_on_disk()
    before = nmlab.default_routes(4), nmlab.default_routes(6)
    with running_daemon(nmlab, tmp_path / "first.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].blackhole()
        daemon.wait_log(r"-> switching to backup")
        daemon.proc.send_signal(signal.SIGKILL)  # as soon as it decided: mid-Reapply or just after
        daemon.proc.wait(10)
    assert nmlab.profiles_on_disk() == on_disk

    # A restarted daemon adopts whatever was half done and finishes the job.
    with running_daemon(nmlab, tmp_path / "second.log") as daemon:
        daemon.wait_log(r"ready: ")
        wait_preferred(nmlab, "wanb", "wana", 15)
        assert daemon.stop() == 0
    assert nmlab.profiles_on_disk() == on_disk

    # Killed again, and NetworkManager re-activates the profiles: their own metrics, none of ours left.
    with running_daemon(nmlab, tmp_path / "third.log") as daemon:
        daemon.wait_log(r"ready: ")
        wait_preferred(nmlab, "wanb", "wana", 15)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
    for profile in nmlab.profiles:
        nmlab.nmcli("connection", "up", profile)
    # The profiles say -1: NetworkManager's ethernet default 100, bumped by at most 50 to keep them apart.
    wait_for(
        lambda: (
            {dev for dev, metric in nmlab.default_routes(4) + nmlab.default_routes(6) if 100 <= metric <= 150}
            == {"wana", "wanb"}
        ),
        15,
        "the profiles' own metrics",
    )
    assert [dev for dev, _ in before[0]] == [dev for dev, _ in nmlab.default_routes(4)]
    assert nmlab.profiles_on_disk() == on_disk


def test_after_sigkill_a_restarted_daemon_restores_the_saved_autoconnect_priority(
    nmlab: NMLab, tmp_path: Path
) -> None:
    def priorities() -> list[str]:
        return [
            nmlab.nmcli("-g", "connection.autoconnect-priority", "connection", "show", p).strip()
            for p in nmlab.profiles
        ]

    saved = priorities()
    assert saved == ["0", "0"]
    with running_daemon(nmlab, tmp_path / "first.log") as daemon:
        daemon.wait_log(r"ready: ")
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
    with running_daemon(nmlab, tmp_path / "second.log") as daemon:
        daemon.wait_log(r"ready: ")
        assert daemon.stop() == 0
    assert priorities() == saved


@pytest.mark.parametrize(("delay", "healthy"), [(0.5, True), (1.5, False)])
def test_slow_target_just_under_and_just_over_the_timeout(
    nmlab: NMLab, tmp_path: Path, delay: float, healthy: bool
) -> None:
    # Probe timeout: the default 1 s. Echoes still pass: only HTTP proofs see a slow server.
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=PROOFS) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].set_http_mode(f"slow:{delay:g}")
        if healthy:
            time.sleep(7)  # three active rounds and then some
            assert preferred(nmlab, "wana", "wanb")
            # Its timeouts follow its answer times: the first slow answers may raise a doubt, which the
            # confirming round (with the full timeout) settles, and the timeouts then grow to fit.
            assert "switching" not in daemon.text() and "primary (wana) down" not in daemon.text()
        else:
            wait_preferred(nmlab, "wanb", "wana", 30)  # a proof, then HTTP_EXCUSES rounds
            assert re.search(r"primary \(wana\) down: 3/3 targets failed \(timeout\)", daemon.text())
        assert daemon.stop() == 0


def test_captive_portal_is_its_own_state_and_no_flap(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=PROOFS) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].set_http_mode("portal")
        wait_preferred(nmlab, "wanb", "wana", 15)
        assert re.search(
            r"primary \(wana\) portal: 3/3 targets failed \(unexpected-response\)", daemon.text()
        )
        status = json.loads(
            nmlab.host(sys.executable, "-m", "nmfailover", "status", "--json", env=nmlab.env).stdout
        )
        primary = status["uplinks"][0]
        assert primary["health"] == "portal" and not primary["carrying_traffic"]
        assert primary["hold_down_reason"] == "the configured hold-down"  # not counted as a failure
        assert daemon.stop() == 0
