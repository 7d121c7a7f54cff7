"""End to end: `nmfailover run` as a subprocess against a real NetworkManager with two simulated uplinks."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

HOLD_DOWN = 4.0


def settled_of(routes: list[tuple[str, int]]) -> tuple[set[str], list[int]]:
    return {dev for dev, _ in routes}, sorted(metric for _, metric in routes)


def test_silent_outage_fails_over_and_back_then_sigterm_restores(nmlab: NMLab, tmp_path: Path) -> None:
    before4, before6 = nmlab.default_routes(4), nmlab.default_routes(6)
    on_disk = nmlab.profiles_on_disk()
    primary = nmlab.upstreams[0]
    with running_daemon(nmlab, tmp_path / "daemon.log", failback_hold_down=str(HOLD_DOWN)) as daemon:
        daemon.wait_log(r"ready: traffic on primary \(wana\)")
        assert nmlab.default_routes(4)[0] == ("wana", 100)
        assert ("wanb", 200) in nmlab.default_routes(4)

        primary.blackhole()
        took = daemon.wait_route("wanb", timeout=15)
        daemon.wait_route("wanb", family=6)
        assert took < 8, f"failover took {took:.1f} s"
        assert "primary (wana) down" in daemon.text()
        assert nmlab.default_routes(4)[0] == ("wanb", 100)

        primary.heal()
        healed = time.monotonic()
        daemon.wait_route("wana", timeout=HOLD_DOWN + 15)
        assert time.monotonic() - healed >= HOLD_DOWN, "failed back before the hold-down"
        assert "moving back" in daemon.text()

        assert daemon.stop(signal.SIGTERM) == 0
    # The profiles' own metrics are NetworkManager's default (-1): it numbers equal ones 100, 101 in the order
    # the routes come back, and every Reapply restarts a device's IPv6 configuration, so which of the two
    # gets 100 is NetworkManager's choice; each device has its default route back, at those metrics.
    expected = {family: settled_of(routes) for family, routes in ((4, before4), (6, before6))}
    try:
        wait_for(
            lambda: all(settled_of(nmlab.default_routes(f)) == expected[f] for f in (4, 6)), 10, "routes"
        )
    except TimeoutError:
        after = nmlab.default_routes(4), nmlab.default_routes(6)
        raise AssertionError(f"default routes {after}, before {before4, before6}") from None
    assert nmlab.profiles_on_disk() == on_disk
    assert nmlab.nmcli("-g", "connection.autoconnect-priority", "connection", "show", "backup").strip() == "0"


def test_both_down_changes_nothing_and_failing_standby_is_ignored(nmlab: NMLab, tmp_path: Path) -> None:
    primary, backup = nmlab.upstreams
    with running_daemon(nmlab, tmp_path / "daemon.log", standby_interval="2") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        backup.blackhole()
        daemon.wait_log(r"backup \(wanb\) down")
        assert nmlab.default_route(4) == "wana"

        primary.blackhole()
        daemon.wait_log(r"primary \(wana\) down")
        time.sleep(2)
        assert nmlab.default_routes(4)[0] == ("wana", 100), "changed routes with every uplink down"
        assert "switching" not in daemon.text()

        backup.heal()  # only the backup returns: traffic goes there
        daemon.wait_route("wanb", timeout=20)
        assert daemon.stop() == 0


def test_pulled_cable_fails_over_at_once(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].cut_cable()
        took = daemon.wait_route("wanb", timeout=10)
        assert took < 3, f"cable pull took {took:.1f} s to act on"
        assert daemon.stop() == 0


def test_networkmanager_restart_while_failed_over_reapplies(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        nmlab.restart_nm()
        daemon.wait_log("NetworkManager is back")
        # Whatever NetworkManager re-applied on its own start, the backup must be preferred again.
        wait_for(lambda: nmlab.default_routes(4)[:1] == [("wanb", 100)], 20, "backup preferred again")
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0


def test_systemd_notify_ready_watchdog_and_stopping(nmlab: NMLab, tmp_path: Path) -> None:
    import socket

    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(10)
        overrides = {"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"}
        with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=overrides) as daemon:
            messages = [sock.recv(4096).decode() for _ in range(3)]
            assert "ready: traffic on primary" in daemon.text(), "READY=1 before the first decision"
            ready = next(m for m in messages if "READY=1" in m)
            assert "STATUS=traffic on primary" in ready
            assert sum("WATCHDOG=1" in m for m in messages) >= 1
            assert daemon.stop() == 0
            rest: list[str] = []
            while "STOPPING=1" not in "".join(rest):
                rest.append(sock.recv(4096).decode())
