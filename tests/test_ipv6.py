"""No IPv6 black hole, against the real NetworkManager: a dual-stack primary dies behind its router while the
backup has IPv4 only; the primary's IPv6 default route must go, so a dual-stack client falls back to IPv4
at once instead of waiting out its connect timeout on IPv6; it comes back with the primary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

# What a program without Happy Eyeballs does with a name that has AAAA and A records (Python's
# socket.create_connection, for one): each address in getaddrinfo's order, IPv6 first, with its timeout.
_CLIENT = """
import json, socket, sys, time
start = time.monotonic()
for address in ("2001:db8:ffff::10", "203.0.113.10"):
    try:
        socket.create_connection((address, 80), timeout=30).close()
    except OSError as exc:
        continue
    print(json.dumps({"address": address, "seconds": time.monotonic() - start}))
    sys.exit(0)
print(json.dumps({"address": None, "seconds": time.monotonic() - start}))
"""


def dual_stack_connect(lab: NMLab) -> dict[str, object]:
    done = lab.host(sys.executable, "-c", _CLIENT, timeout=90)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def backup_without_ipv6(lab: NMLab) -> None:
    lab.nmcli(
        "connection", "modify", "backup", "ipv6.method", "disabled", "ipv6.addresses", "", "ipv6.gateway", ""
    )
    lab.nmcli("connection", "up", "backup")
    lab.wait_activated()


def test_a_dead_dual_stack_primary_loses_its_ipv6_default_route_while_the_backup_has_none(
    nmlab: NMLab, tmp_path: Path
) -> None:
    backup_without_ipv6(nmlab)
    on_disk = nmlab.profiles_on_disk()
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        assert [dev for dev, _ in nmlab.default_routes(6)] == ["wana"]
        primary = nmlab.upstreams[0]
        primary.blackhole()
        try:
            daemon.wait_route("wanb", timeout=10)
            wait_for(lambda: not nmlab.default_routes(6), 5, "no IPv6 default route")
            connected = dual_stack_connect(nmlab)
            print(f"\ndual-stack connect after failover: {connected}")
            assert connected["address"] == "203.0.113.10"
            assert isinstance(connected["seconds"], float) and connected["seconds"] < 1.0
            status = json.loads(
                nmlab.host(sys.executable, "-m", "nmfailover", "status", "--json", env=nmlab.env).stdout
            )
            assert [u["ipv6_default_route"] for u in status["uplinks"]] == [False, True]
        finally:
            primary.heal()
        # Up again, it gets its IPv6 back at once, before the failback's hold-down is over.
        wait_for(lambda: bool(nmlab.default_routes(6)), 15, "the primary's IPv6 default route back")
        assert nmlab.default_route(4) == "wanb"
        assert daemon.stop() == 0
    assert nmlab.profiles_on_disk() == on_disk  # all of it at run time, nothing saved


def test_stopping_while_the_primary_is_dead_gives_its_ipv6_default_route_back(
    nmlab: NMLab, tmp_path: Path
) -> None:
    backup_without_ipv6(nmlab)
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=10)
        wait_for(lambda: not nmlab.default_routes(6), 5, "no IPv6 default route")
        assert daemon.stop() == 0
    # The profile's own state again: its IPv6 default route with the profile's metric.
    wait_for(lambda: bool(nmlab.default_routes(6)), 10, "the primary's IPv6 default route back")
    assert [dev for dev, _ in nmlab.default_routes(6)] == ["wana"]


def test_when_only_the_primarys_ipv6_dies_ipv6_moves_to_the_backup_and_ipv4_stays(
    nmlab: NMLab, tmp_path: Path
) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        daemon.wait_log(r"primary \(wana\) IPv6 up")  # its IPv6 path judged on its own
        primary = nmlab.upstreams[0]
        primary.blackhole6()
        try:
            # An IPv6 check every 20 s, then a burst: within 30 s IPv6 leaves through the backup.
            wait_for(lambda: nmlab.default_route(6) == "wanb", 30, "IPv6 on the backup")
            assert nmlab.default_route(4) == "wana"
            assert "switching" not in daemon.text()
            status = json.loads(
                nmlab.host(sys.executable, "-m", "nmfailover", "status", "--json", env=nmlab.env).stdout
            )
            primary_status, backup_status = status["uplinks"]
            assert (primary_status["health"], primary_status["ipv6_health"]) == ("up", "down")
            # The standby's IPv6 is checked at its own pace (30 s): not judged yet is fine.
            assert backup_status["ipv6_health"] in (None, "up")
        finally:
            primary.heal()
        wait_for(lambda: nmlab.default_route(6) == "wana", 40, "IPv6 back on the primary")
        assert daemon.stop() == 0
