"""Connections outlive switches: each uplink's own routing table and its "from <its addresses>" rules, put on
the applied connections by Reapply, against a real NetworkManager (no mocks), and the pure parts.

The lab's upstreams each hold their own copy of the target addresses (203.0.113.x, 2001:db8:ffff::x), and
each runs its own TCP echo server (started here). A connection made through the backup uses the backup's
source address; when the main default route moves to the primary, its packets reach the primary's
upstream, which knows nothing of it: the connection stalls. The first test proves that breakage with the
feature off, the others that with it on the same connections keep exchanging data, and how long the gap
in their data is at each switch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from nmfailover.bus import MessageType
from nmfailover.cli import print_status
from nmfailover.config import load_settings
from nmfailover.engine import Uplink
from nmfailover.engine.actuator import Actuator, ActuatorParams, SourceRoutingStatus
from nmfailover.lab.demo import DaemonProcess, wait_for
from nmfailover.lab.sandbox import NMLab
from nmfailover.nm import (
    DeviceState,
    IpConfigChanged,
    LinkState,
    NetworkManagerClient,
    Profile,
    SourceRouting,
)
from nmfailover.nm.edits import sources
from nmfailover.nm.events import event_of
from nmfailover.status import Status
from tests.daemon import running_daemon
from tests.operate import cli, status

TARGET4, TARGET6 = "203.0.113.10", "2001:db8:ffff::10"
ECHO_PORT = 7007
TABLE, PRIORITY = 7100, 30100  # the defaults: the primary's table, the main-table rules' priority
AFTER_FAILBACK = 30.0  # how long a connection opened on the backup must keep exchanging data
SEND_EVERY = 0.02

# A TCP echo server for one upstream namespace: it answers on every address there, the targets' too.
ECHO_SERVER = """
import pathlib, socket, sys, threading
server = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
def serve(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
pathlib.Path(sys.argv[2]).write_text("ready")
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# One long-lived connection from the host namespace: 8 bytes out every SEND_EVERY, and one line with the
# monotonic time (the same clock as the test's, whatever the namespace) for each echo that comes back.
# A stalled connection just waits: TCP retransmits what it sent, nothing new is sent meanwhile.
ECHO_CLIENT = """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
conn = socket.socket(family, socket.SOCK_STREAM)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
conn.settimeout(5)
conn.connect((sys.argv[1], int(sys.argv[2])))
print("source", conn.getsockname()[0], flush=True)
conn.settimeout(None)
while True:
    conn.sendall(b"12345678")
    got = b""
    while len(got) < 8:
        chunk = conn.recv(8 - len(got))
        if not chunk:
            print("closed", flush=True)
            sys.exit(1)
        got += chunk
    print(time.monotonic(), flush=True)
    time.sleep(float(sys.argv[3]))
"""


class EchoServers:
    """An echo server in every upstream namespace."""

    def __init__(self, lab: NMLab) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        for up in lab.upstreams:
            ready = up.state_dir / "echo-ready"
            self.procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        up.netns,
                        sys.executable,
                        "-c",
                        ECHO_SERVER,
                        str(ECHO_PORT),
                        str(ready),
                    ],
                    stdin=subprocess.DEVNULL,
                )
            )
            wait_for(ready.exists, 10, f"the echo server behind {up.iface}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)


class EchoStream:
    """One connection exchanging data all the time; the times its echoes came back."""

    def __init__(self, lab: NMLab, target: str) -> None:
        self.target = target
        self.proc = lab.popen_host(
            [sys.executable, "-c", ECHO_CLIENT, target, str(ECHO_PORT), str(SEND_EVERY)],
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.source = ""
        self.echoes: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: len(self.echoes) >= 5, 10, f"echoes from {target}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("source "):
                self.source = line.split()[1]
            elif line[:1].isdigit():
                self.echoes.append(float(line))

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time without an echo between `since` (or the first echo, if later) and `until`."""
        since = max(since, self.echoes[0])
        times = [since, *(t for t in self.echoes if since < t < until), until]
        return max(later - earlier for earlier, later in zip(times, times[1:], strict=False))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def echo_servers(nmlab: NMLab) -> Iterator[EchoServers]:
    servers = EchoServers(nmlab)
    yield servers
    servers.stop()


def ip_rules(lab: NMLab, family: int = 4) -> list[str]:
    return lab.host("ip", f"-{family}", "rule").stdout.splitlines()


def table_routes(lab: NMLab, table: int, family: int = 4) -> str:
    """The table's routes; empty while the kernel has no such table yet (a Reapply is answered before
    NetworkManager has made it)."""
    return lab.host("ip", f"-{family}", "route", "show", "table", str(table), check=False).stdout.strip()


def settle(what: str, condition: Callable[[], bool]) -> None:
    # NetworkManager answers a Reapply before it has changed the kernel's rules and routes.
    wait_for(condition, 5, what, step=0.05)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def failback(lab: NMLab, daemon: DaemonProcess) -> float:
    """Heal the primary and return the moment the default route was seen back on it."""
    lab.upstreams[0].heal()
    daemon.wait_route("wana", timeout=30)
    return time.monotonic()


# -- the proof that it can fail ---------------------------------------------------------------------------


def test_without_it_a_connection_on_the_backup_stalls_at_failback(
    nmlab: NMLab, echo_servers: EchoServers, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    with running_daemon(nmlab, log, source_routing="false", failback_hold_down="2") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        assert not [rule for rule in ip_rules(nmlab) if "lookup 710" in rule]
        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        stream = EchoStream(nmlab, TARGET4)
        assert stream.source == nmlab.upstreams[1].address4
        back = failback(nmlab, daemon)
        time.sleep(5)
        stalled = stream.longest_gap(back, time.monotonic())
        print(
            f"\nwithout source routing: the backup's connection went {ms(stalled)} without data after failback"
        )
        assert stalled > 4.5, "the connection survived without source routing: the lab proves nothing"
        stream.stop()
        assert daemon.stop(signal.SIGTERM) == 0


# -- the daemon with it on ------------------------------------------------------------------------------


def test_connections_keep_their_uplink_across_failback_and_a_forced_switch(
    nmlab: NMLab, echo_servers: EchoServers, tmp_path: Path
) -> None:
    on_disk = nmlab.profiles_on_disk()  # nothing is written: checked before the test edits a profile
    primary, backup = nmlab.upstreams
    log = tmp_path / "daemon.log"
    with running_daemon(nmlab, log, failback_hold_down="2") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        # In place before the first metrics move any traffic.
        text = daemon.text()
        assert text.index("keep leaving through it (table 7101)") < text.index("route metric 100 applied")
        rules4, rules6 = ip_rules(nmlab, 4), ip_rules(nmlab, 6)
        for up, table in ((primary, TABLE), (backup, TABLE + 1)):
            assert (
                f"{PRIORITY}:\tfrom {up.address4} lookup main suppress_prefixlength 0 proto static" in rules4
            )
            assert f"{PRIORITY + 1}:\tfrom {up.address4} lookup {table} proto static" in rules4
            prefix6 = up.address6.removesuffix("2") + "/64"
            assert f"{PRIORITY + 1}:\tfrom {prefix6} lookup {table} proto static" in rules6
            assert table_routes(nmlab, table, 4).startswith(f"default via {up.gateway4} dev {up.iface}")
            assert table_routes(nmlab, table, 6).startswith(f"default via {up.gateway6} dev {up.iface}")
        uplinks = status(nmlab)["uplinks"]
        assert [u["routing_table"] for u in uplinks] == [TABLE, TABLE + 1]
        assert f"{PRIORITY + 1}: from {backup.address4}/32 lookup {TABLE + 1}" in uplinks[1]["routing_rules"]
        assert uplinks[1]["routing_routes"][0] == f"default via {backup.gateway4} table {TABLE + 1} metric 10"
        text = cli(nmlab, "status").stdout
        assert "TABLE" in text and f"backup keeps its connections in table {TABLE + 1}:" in text

        # Opened on the backup; the failback moves the main default route back to the primary.
        primary.blackhole()
        daemon.wait_route("wanb", timeout=15)
        daemon.wait_route("wanb", family=6)
        on_backup = [EchoStream(nmlab, TARGET4), EchoStream(nmlab, TARGET6)]
        assert [s.source for s in on_backup] == [backup.address4, backup.address6]
        back = failback(nmlab, daemon)
        time.sleep(AFTER_FAILBACK)
        gaps = {s.target: s.longest_gap(back - 2, back + 3) for s in on_backup}
        for stream in on_backup:
            assert stream.echoes[-1] > back + AFTER_FAILBACK - 1, f"{stream.target}: no data at the end"
            assert stream.longest_gap(back + 3, time.monotonic()) < 1, f"{stream.target}: a stall later"
            assert stream.proc.poll() is None
        # A new connection follows the main default route: the primary's address.
        fresh = EchoStream(nmlab, TARGET4)
        assert fresh.source == primary.address4

        # Opened on the primary: the failover test moves the default route to the backup and back.
        assert cli(nmlab, "test-failover", "--seconds", "60").returncode == 0
        daemon.wait_route("wanb", timeout=10)
        away = time.monotonic()
        time.sleep(3)
        assert cli(nmlab, "test-failover", "--end").returncode == 0
        daemon.wait_route("wana", timeout=10)
        home = time.monotonic()
        time.sleep(3)
        assert fresh.echoes[-1] > time.monotonic() - 1 and fresh.proc.poll() is None
        forced = (fresh.longest_gap(away - 2, away + 2), fresh.longest_gap(home - 2, home + 2))
        print(
            f"\nlongest gap in data around the switch (echo every {ms(SEND_EVERY)}): "
            f"opened on the backup, at failback: IPv4 {ms(gaps[TARGET4])}, IPv6 {ms(gaps[TARGET6])}; "
            f"opened on the primary: forced failover {ms(forced[0])}, its end {ms(forced[1])}"
        )
        assert max(*gaps.values(), *forced) < 1.0
        fresh.stop()

        # The primary's applied connection replaced by hand: the next switch finds its rules missing and
        # puts them back.
        primary_rule = f"{PRIORITY + 1}:\tfrom {primary.address4} lookup {TABLE} proto static"
        nmlab.nmcli("device", "reapply", "wana")
        settle(
            "the primary's rules gone with its applied connection",
            lambda: primary_rule not in ip_rules(nmlab),
        )
        assert cli(nmlab, "test-failover", "--seconds", "60").returncode == 0
        wait_for(lambda: primary_rule in ip_rules(nmlab), 10, "the primary's rules back")
        assert "primary (wana) runs without its routing rules for table 7100" in daemon.text()
        assert cli(nmlab, "test-failover", "--end").returncode == 0
        daemon.wait_route("wana", timeout=10)

        assert nmlab.profiles_on_disk() == on_disk
        # A new address (a profile edited and reapplied by hand here; DHCP's new lease does the same to
        # the device's IP config): the rules follow it.
        nmlab.nmcli("connection", "modify", "backup", "ipv4.addresses", "192.0.2.70/26")
        nmlab.nmcli("device", "reapply", "wanb")
        wait_for(
            lambda: f"{PRIORITY + 1}:\tfrom 192.0.2.70 lookup {TABLE + 1} proto static" in ip_rules(nmlab),
            10,
            "the rule for the backup's new address",
        )
        assert not [rule for rule in ip_rules(nmlab) if backup.address4 in rule]
        for stream in on_backup:
            stream.stop()
        assert daemon.stop(signal.SIGTERM) == 0
    assert "backup (wanb): its routing table and rules removed" in daemon.text()
    assert not [rule for rule in ip_rules(nmlab, 4) + ip_rules(nmlab, 6) if "lookup 710" in rule]
    assert not [rule for rule in ip_rules(nmlab, 4) if "suppress_prefixlength" in rule]
    for table in (TABLE, TABLE + 1):
        assert table_routes(nmlab, table, 4) == table_routes(nmlab, table, 6) == ""


# -- the adapter, on a DHCP and SLAAC uplink ---------------------------------------------------------------


DNSMASQ = [
    "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--interface=gw", "--bind-interfaces", "--port=0",
    "--dhcp-range=192.0.2.70,192.0.2.100,255.255.255.192,1h", "--dhcp-option=3,192.0.2.65",
    "--enable-ra", "--dhcp-range=2001:db8:b::,ra-only,64,1h",
]  # fmt: skip


@pytest.fixture
async def dhcp_backup(nmlab: NMLab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NetworkManagerClient]:
    """The backup's upstream hands out its address by DHCP and its IPv6 prefix by router advertisements."""
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            nmlab.upstreams[1].netns,
            *DNSMASQ,
            f"--dhcp-leasefile={nmlab.workdir}/leases",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nmlab.nmcli("connection", "modify", "backup", "ipv4.method", "auto", "ipv4.addresses", "", "ipv4.gateway", "",
                "ipv6.method", "auto", "ipv6.addresses", "", "ipv6.gateway", "")  # fmt: skip
    nmlab.nmcli("connection", "up", "backup")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nmlab.bus_address)
    client = NetworkManagerClient()
    await client.connect()
    yield client
    await client.close()
    server.kill()
    server.wait(5)


async def test_reapply_routes_a_dhcp_uplink_by_source_and_metrics_keep_it(
    nmlab: NMLab, dhcp_backup: NetworkManagerClient
) -> None:
    client = dhcp_backup
    (backup,) = await client.resolve(["backup"])

    async def leased() -> LinkState:
        link = await client.link_state(backup.uuid)
        return link if link.gateway4 and link.sources4 and link.gateway6 and link.sources6 else LinkState("")

    link = LinkState("")
    for _ in range(150):
        link = await leased()
        if link.device:
            break
        await asyncio.sleep(0.1)
    assert link.device is not None, "no DHCP lease and router advertisement within 15 s"
    assert link.gateway4 == "192.0.2.65" and link.gateway6 is not None and link.gateway6.startswith("fe80:")
    assert link.sources6 == ("2001:db8:b::/64",)  # the prefix: its SLAAC address may change
    address = link.sources4[0].removesuffix("/32")
    wanted = SourceRouting(TABLE + 1, PRIORITY, link.gateway4, link.sources4, link.gateway6, link.sources6)

    assert await client.set_source_routing(link.device, wanted) is True
    assert await client.set_source_routing(link.device, wanted) is False  # already so: no second Reapply
    rule4 = f"{PRIORITY + 1}:\tfrom {address} lookup {TABLE + 1} proto static"
    rule6 = f"{PRIORITY + 1}:\tfrom 2001:db8:b::/64 lookup {TABLE + 1} proto static"
    settle("the rules", lambda: rule4 in ip_rules(nmlab, 4) and rule6 in ip_rules(nmlab, 6))
    settle(
        "the IPv4 route",
        lambda: table_routes(nmlab, TABLE + 1, 4).startswith("default via 192.0.2.65 dev wanb"),
    )
    # NetworkManager may add a host route to a link-local gateway beside it.
    routes6 = table_routes(nmlab, TABLE + 1, 6).splitlines()
    assert any(line.startswith(f"default via {link.gateway6} dev wanb") for line in routes6), routes6
    assert TABLE + 1 in (await client.applied_metrics(link.device)).rule_tables

    # A Reapply of the metrics sends the applied connection back with them: they stay, and the table's
    # route with its own metric is left alone (not replaced, which would leave a moment without it).
    before = [table_routes(nmlab, TABLE + 1, family) for family in (4, 6)]
    assert "metric 10" in before[0]
    monitor = subprocess.Popen(
        ["ip", "netns", "exec", nmlab.host_netns, "ip", "monitor", "route"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert await client.set_route_metrics(link.device, 50, 50) is True
        settle("the new default route", lambda: nmlab.default_routes(4)[0] == ("wanb", 50))
        time.sleep(0.5)
    finally:
        monitor.terminate()
    changes = monitor.communicate(timeout=5)[0]
    assert not [line for line in changes.splitlines() if f"via 192.0.2.65 dev wanb table {TABLE + 1}" in line]
    # Not so for IPv6 on an auto (SLAAC) profile: every Reapply, of the metrics too, restarts its IPv6
    # configuration, and the kernel drops the route with the link-local address it goes through.
    settle("the IPv6 route back", lambda: table_routes(nmlab, TABLE + 1, 6) == before[1])
    assert table_routes(nmlab, TABLE + 1, 4) == before[0]
    assert rule4 in ip_rules(nmlab, 4) and rule6 in ip_rules(nmlab, 6)

    assert await client.set_source_routing(link.device, SourceRouting(TABLE + 1, PRIORITY)) is True
    settle(
        "the rules gone",
        lambda: not [r for r in ip_rules(nmlab, 4) + ip_rules(nmlab, 6) if f"{PRIORITY}" in r],
    )
    settle(
        "the table empty",
        lambda: table_routes(nmlab, TABLE + 1, 4) == table_routes(nmlab, TABLE + 1, 6) == "",
    )
    assert (await client.link_state(backup.uuid)).activated


# -- pure -------------------------------------------------------------------------------------------------


def test_sources_are_ipv4_addresses_and_ipv6_prefixes_never_link_local() -> None:
    ip4 = {"AddressData": [{"address": "192.0.2.66", "prefix": 26}, {"address": "169.254.1.1", "prefix": 16}]}
    ip6 = {
        "AddressData": [
            {"address": "2001:db8:b::2", "prefix": 64},
            {"address": "2001:db8:b::1:2", "prefix": 64},  # a privacy address: the same prefix
            {"address": "fe80::1", "prefix": 64},
        ]
    }
    assert sources(ip4, 4) == ("192.0.2.66/32",)
    assert sources(ip6, 6) == ("2001:db8:b::/64",)
    assert sources({}, 4) == sources(ip4, 6) == ()


def test_only_address_and_gateway_changes_are_ip_config_events() -> None:
    class Signal:
        message_type = MessageType.SIGNAL
        interface = "org.freedesktop.DBus.Properties"
        member = "PropertiesChanged"
        path = "/org/freedesktop/NetworkManager/IP6Config/3"

        def __init__(self, changed: dict[str, object]) -> None:
            self.body = ["org.freedesktop.NetworkManager.IP6Config", changed, []]

    assert event_of(Signal({"AddressData": [], "Gateway": ""})) == IpConfigChanged(Signal.path)
    assert event_of(Signal({"RouteData": []})) is None  # every Reapply changes these: no re-read for them


class Recorder:
    """Records what the actuator asks of NetworkManager's routing by source (the lab tests prove NM's side)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, SourceRouting]] = []

    async def set_source_routing(self, device: str, wanted: SourceRouting) -> bool:
        self.sent.append((device, wanted))
        return True


def _actuator(recorder: Recorder, enabled: str = "true") -> Actuator:
    settings = load_settings(
        {"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "Fiber,LTE", "NMFAILOVER_SOURCE_ROUTING": enabled}
    )
    profiles = [
        Profile(n, f"uuid-{n}", n, i, -1, -1, 0, False) for n, i in (("Fiber", "eth0"), ("LTE", "wwan0"))
    ]
    uplinks = [
        Uplink(
            0,
            profiles[0],
            LinkState("uuid-Fiber", "/dev/a", "eth0", DeviceState.ACTIVATED, gateway4="192.0.2.1", sources4=("192.0.2.2/32",),
                      gateway6="fe80::1", sources6=("2001:db8:a::/64",)),
        ),
        Uplink(1, profiles[1], LinkState("uuid-LTE")),  # not active
    ]  # fmt: skip
    return Actuator(ActuatorParams.from_settings(settings), recorder, uplinks)  # type: ignore[arg-type]  # only the routing part is used


async def test_a_prefix_that_vanishes_for_a_moment_is_kept_and_a_new_one_is_applied() -> None:
    recorder = Recorder()
    actuator = _actuator(recorder)
    primary = actuator.uplinks[0]
    await actuator.route_by_source()
    await actuator.route_by_source()  # nothing changed: nothing sent
    assert [device for device, _ in recorder.sent] == ["/dev/a"]
    first = recorder.sent[0][1]
    assert (first.table, first.priority, first.sources6) == (TABLE, PRIORITY, ("2001:db8:a::/64",))

    # Every Reapply restarts SLAAC: the IPv6 addresses and gateway are gone for a moment. Following that
    # would Reapply again, and again.
    primary.link = LinkState(
        "uuid-Fiber",
        "/dev/a",
        "eth0",
        DeviceState.ACTIVATED,
        gateway4="192.0.2.1",
        sources4=("192.0.2.2/32",),
    )
    await actuator.route_by_source()
    assert len(recorder.sent) == 1

    primary.link = LinkState(
        "uuid-Fiber",
        "/dev/a",
        "eth0",
        DeviceState.ACTIVATED,
        gateway4="192.0.2.1",
        sources4=("192.0.2.9/32",),
    )
    await actuator.route_by_source()
    assert recorder.sent[-1][1].sources4 == ("192.0.2.9/32",)
    assert recorder.sent[-1][1].sources6 == ("2001:db8:a::/64",)
    status = actuator.source_routing_status(0)
    assert status.table == TABLE
    assert f"{PRIORITY + 1}: from 192.0.2.9/32 lookup {TABLE}" in status.rules
    assert actuator.source_routing_status(1) == SourceRoutingStatus(TABLE + 1)

    actuator.forget_source_routing(0)  # a new activation: the applied connection is new
    await actuator.route_by_source()
    assert len(recorder.sent) == 3


async def test_off_means_nothing_is_sent_and_status_shows_no_table() -> None:
    recorder = Recorder()
    actuator = _actuator(recorder, "false")
    await actuator.route_by_source()
    assert recorder.sent == []
    assert actuator.source_routing_status(0).table is None


def test_status_text_lists_each_uplinks_table_rules_and_routes(capsys: pytest.CaptureFixture[str]) -> None:
    routed = SourceRouting(TABLE + 1, PRIORITY, "192.0.2.65", ("192.0.2.66/32",))
    common = {
        "link": "activated", "health": "up", "latency_ms": 12.0, "consecutive_failures": 0,
        "consecutive_successes": 3, "reason": "1/1 ok", "metered": None, "metered_warning": None,
    }  # fmt: skip
    print_status(
        Status.model_validate({
            "preferred": "primary", "last_switch_at": None, "switches": 0, "hold_down_remaining": 0,
            "forced_failover_remaining": 0, "pinned": None, "task_restarts": {},
            "uplinks": [
                {"role": "primary", "profile": "Fiber", "uuid": "uuid-Fiber", "device": "eth0",
                 "carrying_traffic": True, "routing_table": TABLE, "routing_rules": [], "routing_routes": [], **common},
                {"role": "backup", "profile": "LTE", "uuid": "uuid-LTE", "device": "wwan0",
                 "carrying_traffic": False,
                 "routing_table": TABLE + 1, "routing_rules": routed.describe_rules(),
                 "routing_routes": routed.describe_routes(), **common},
            ],
        })
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "TABLE" in out and f" {TABLE + 1} " in out
    assert f"backup keeps its connections in table {TABLE + 1}:\n" in out
    assert f"  default via 192.0.2.65 table {TABLE + 1} metric 10\n" in out
    assert f"  {PRIORITY}: from 192.0.2.66/32 lookup main suppress_prefixlength 0\n" in out
    assert f"  {PRIORITY + 1}: from 192.0.2.66/32 lookup {TABLE + 1}\n" in out
    assert "primary keeps" not in out
