"""The lab itself: each fault must have the observable effect the failover tests rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.message
import dns.rcode
import pytest

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import (
    BULK_ADDRESS,
    LAB_PROBE_URLS,
    TARGET_ADDRESSES,
    NMLab,
    Topology,
    cleanup_leftovers,
)
from nmfailover.lab.upstream import dns_reply

# Client snippets run with the host namespace's python; each prints one JSON object.
_HTTP = r"""
import http.client, json, sys, time
host, path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.monotonic()
try:
    conn = http.client.HTTPConnection(host, 80, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    out = {"result": resp.status, "location": resp.getheader("Location"), "body": resp.read().decode()}
except Exception as e:
    out = {"result": type(e).__name__}
out["elapsed"] = time.monotonic() - start
print(json.dumps(out))
"""

_PING = r"""
import json, socket, struct, sys, time
dst, timeout = sys.argv[1], float(sys.argv[2])
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
header = struct.pack("!BBHHH", 8, 0, 0, 0x4E4D, 1)
packet = struct.pack("!BBHHH", 8, 0, checksum(header + b"lab!"), 0x4E4D, 1) + b"lab!"
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(timeout)
sock.sendto(packet, (dst, 0))
deadline = time.monotonic() + timeout
ok = False
try:
    while time.monotonic() < deadline and not ok:
        data, addr = sock.recvfrom(2048)
        ihl = (data[0] & 0x0F) * 4
        ok = addr[0] == dst and data[ihl] == 0 and data[ihl + 4 : ihl + 6] == b"\x4e\x4d"
except TimeoutError:
    pass
print(json.dumps({"reply": ok}))
"""

_DNS = r"""
import json, socket, sys
import dns.exception, dns.message, dns.query, dns.rcode
name, rdtype, server, device, timeout = sys.argv[1:6]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# Bound to the device, as nmfailover's per-uplink resolution does: otherwise it leaves by the default route.
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
sock.setblocking(False)  # dnspython requires it of a socket it is given, or its timeout never fires
try:
    r = dns.query.udp(dns.message.make_query(name, rdtype), server, timeout=float(timeout), sock=sock)
    print(json.dumps({"rcode": dns.rcode.to_text(r.rcode()), "answers": [rd.to_text() for rr in r.answer for rd in rr]}))
except dns.exception.Timeout:
    print(json.dumps({"rcode": "timeout", "answers": []}))
"""


def _py(lab: Topology, script: str, *args: str, timeout: float = 15) -> dict[str, Any]:
    out = lab.host(sys.executable, "-c", script, *args, timeout=timeout).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def http_get(lab: Topology, host: str, path: str = "/generate_204", timeout: float = 3) -> dict[str, Any]:
    return _py(lab, _HTTP, host, path, str(timeout))


def ping(lab: Topology, address: str) -> bool:
    return bool(_py(lab, _PING, address, "2")["reply"])


def dns_query(lab: Topology, name: str, server: str, device: str, rdtype: str = "A") -> dict[str, Any]:
    return _py(lab, _DNS, name, rdtype, server, device, "1")


def _own_netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(f"nmfo-{os.getpid()}-")}


def test_lab_probe_urls_succeed_through_the_lab(topology: Topology) -> None:
    a = topology.upstreams[0]
    for spec in LAB_PROBE_URLS.split(","):
        url, status, *body = spec.split()
        parsed = urlsplit(url)
        assert parsed.hostname is not None
        answer = dns_query(topology, parsed.hostname, a.resolver, "wana")
        assert answer["rcode"] == "NOERROR"
        assert answer["answers"][0] in TARGET_ADDRESSES
        got = http_get(topology, answer["answers"][0], parsed.path)
        assert got["result"] == int(status)
        assert all(b in got["body"] for b in body)


def test_dns_zone_answers_nxdomain_and_aaaa_without_a_lab() -> None:
    def ask(name: str, rdtype: str) -> dns.message.Message:
        reply = dns_reply(dns.message.make_query(name, rdtype).to_wire())
        assert reply is not None
        return dns.message.from_wire(reply[0])

    a = ask("Target2.TEST", "A")
    assert [rd.to_text() for rr in a.answer for rd in rr] == ["203.0.113.11"]
    assert a.answer[0].ttl == 5
    assert [rd.to_text() for rr in ask("target3.test", "AAAA").answer for rd in rr] == ["2001:db8:ffff::12"]
    assert ask("example.com", "A").rcode() == dns.rcode.NXDOMAIN
    assert dns_reply(b"\x00garbage") is None


def test_default_route_carries_traffic_out_of_wana(topology: Topology) -> None:
    assert topology.default_routes(4) == [("wana", 100), ("wanb", 200)]
    assert topology.default_routes(6) == [("wana", 100), ("wanb", 200)]
    a, b = topology.upstreams
    rx_a, tx_a = topology.iface_counters("wana")
    _, tx_b = topology.iface_counters("wanb")
    for target in TARGET_ADDRESSES:
        assert http_get(topology, target)["result"] == 204
    assert http_get(topology, "2001:db8:ffff::11", "/success.txt")["body"] == "success\n"
    # IPv6 housekeeping (MLD reports) may add a packet or two on either link. Each request is at least
    # three packets each way (handshake, request or response, close); GRO and delayed ACKs merge the rest.
    assert topology.iface_counters("wana")[1] - tx_a >= 12
    assert topology.iface_counters("wana")[0] - rx_a >= 12
    assert topology.iface_counters("wanb")[1] - tx_b <= 3
    assert (a.http_requests(), b.http_requests()) == (4, 0)
    assert a.http_log()[0].split("\t")[4] == "192.0.2.2"


def test_blackhole_is_silent_but_router_stays_up_and_heal_restores(topology: Topology) -> None:
    a = topology.upstreams[0]
    a.blackhole()
    assert http_get(topology, "203.0.113.10", timeout=1)["result"] in ("TimeoutError", "timeout")
    assert ping(topology, "192.0.2.1")
    assert "LOWER_UP" in topology.host("ip", "link", "show", "dev", "wana").stdout
    assert dns_query(topology, "target1.test", a.resolver, "wana")["rcode"] == "timeout"
    a.heal()
    assert http_get(topology, "203.0.113.10")["result"] == 204


def test_refuse_fails_fast_and_heal_restores(topology: Topology) -> None:
    a = topology.upstreams[0]
    a.refuse()
    result = http_get(topology, "203.0.113.10", timeout=5)
    assert result["result"] == "ConnectionRefusedError"
    assert result["elapsed"] < 1
    assert http_get(topology, "2001:db8:ffff::10", timeout=5)["result"] == "ConnectionRefusedError"
    a.heal()
    assert http_get(topology, "203.0.113.10")["result"] == 204


def test_cut_cable_drops_carrier_on_the_host_side(topology: Topology) -> None:
    a = topology.upstreams[0]
    a.heal()  # healing a healthy upstream is a harmless no-op

    def link() -> dict[str, Any]:
        out = topology.host("ip", "-j", "link", "show", "dev", "wana").stdout
        info: dict[str, Any] = json.loads(out)[0]
        return info

    a.cut_cable()
    deadline = time.monotonic() + 3
    while "NO-CARRIER" not in link()["flags"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "NO-CARRIER" in link()["flags"]
    assert link()["operstate"] == "DOWN"
    a.restore_cable()
    deadline = time.monotonic() + 3
    while "LOWER_UP" not in link()["flags"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert link()["operstate"] == "UP"
    assert http_get(topology, "203.0.113.10")["result"] == 204


def test_each_resolver_answers_only_through_its_own_uplink(topology: Topology) -> None:
    a, b = topology.upstreams
    assert dns_query(topology, "target1.test", b.resolver, "wanb") == {
        "rcode": "NOERROR",
        "answers": ["203.0.113.10"],
    }
    assert dns_query(topology, "nope.test", b.resolver, "wanb")["rcode"] == "NXDOMAIN"
    assert (a.dns_queries(), b.dns_queries()) == (0, 2)
    # b's resolver does not exist behind uplink a.
    assert dns_query(topology, "target1.test", b.resolver, "wana")["rcode"] == "timeout"
    b.break_dns()
    assert dns_query(topology, "target1.test", b.resolver, "wanb")["rcode"] == "timeout"
    b.heal()
    assert b.dns_queries() == 2


def test_http_modes(topology: Topology) -> None:
    a = topology.upstreams[0]
    a.set_http_mode("portal")
    portal = http_get(topology, "203.0.113.10")
    assert (portal["result"], portal["location"]) == (302, "http://portal.example/")
    a.set_http_mode("wrong-body")
    login = http_get(topology, "203.0.113.11", "/success.txt")
    assert login["result"] == 200
    assert "success" not in login["body"]
    a.set_http_mode("slow:0.5")
    slow = http_get(topology, "203.0.113.10")
    assert slow["result"] == 204
    assert slow["elapsed"] >= 0.5
    a.set_http_mode("ok")
    assert http_get(topology, "203.0.113.12", "/other")["result"] == 404
    assert a.http_requests() == 4
    with pytest.raises(ValueError, match="unknown HTTP mode"):
        a.set_http_mode("sideways")


# -- load: a rate-limited uplink with a deep queue, saturated by a bulk download ------------------------------

RATE_KBIT = 4000
QUEUE_MS = 1500
PROBE_URL = f"http://{TARGET_ADDRESSES[1]}/success.txt"


def rx_rate_mbit(lab: Topology, iface: str, seconds: float) -> float:
    """Megabits per second the host received on `iface` over the next `seconds` (link-layer bytes)."""
    rx0, t0 = lab.iface_bytes(iface)[0], time.monotonic()
    time.sleep(seconds)
    rx1, t1 = lab.iface_bytes(iface)[0], time.monotonic()
    return (rx1 - rx0) * 8 / (t1 - t0) / 1e6


def test_rate_limit_and_bulk_download_make_seconds_of_queue_on_that_uplink_only(topology: Topology) -> None:
    a = topology.upstreams[0]
    assert a.queue_stats() is None
    a.unlimit()  # harmless without a limit
    assert topology.fetch_seconds("wana", PROBE_URL) < 0.2
    a.rate_limit(RATE_KBIT, QUEUE_MS)
    try:
        assert topology.fetch_seconds("wana", PROBE_URL) < 0.2  # a limit alone queues nothing
        with topology.bulk_download(0) as download:
            filled = a.wait_queue(1.0, timeout=30)
            throughput = rx_rate_mbit(topology, "wana", 5)
            stats = a.queue_stats()
            loaded = [topology.fetch_seconds("wana", PROBE_URL) for _ in range(3)]
            other = topology.fetch_seconds("wanb", PROBE_URL)
            assert download.running
            assert download.starts == 1  # one transfer, never ended
        assert not download.running
        print(
            f"\nqueue >= 1 s after {filled:.1f} s; {throughput:.2f} Mbit/s on wana over 5 s; queue {stats}; "
            f"GET through wana {', '.join(f'{t:.2f}' for t in loaded)} s; through wanb {other:.3f} s"
        )
        assert stats is not None
        assert stats.rate_bytes == RATE_KBIT * 1000 // 8
        assert stats.drops > 0 or stats.delay >= 1.0  # full: the sender fills it until it overflows
        assert 0.9 * RATE_KBIT / 1000 <= throughput <= 1.05 * RATE_KBIT / 1000
        # Connect and answer both wait behind the queue: well over the 1 s a probe is given by default.
        assert min(loaded) > 0.8
        assert max(loaded) < 2 * QUEUE_MS / 1000 + 1
        assert other < 0.2
        # Once the download stops, the queue drains at the limited rate and latency is back to normal.
        wait_for(lambda: getattr(a.queue_stats(), "backlog_bytes", 1) == 0, QUEUE_MS / 1000 + 2, "the drain")
        assert topology.fetch_seconds("wana", PROBE_URL) < 0.2
    finally:
        a.unlimit()
    assert a.queue_stats() is None
    with pytest.raises(ValueError, match="positive"):
        a.rate_limit(0, QUEUE_MS)


def test_blackhole_stops_a_bulk_download_once_the_queue_drains_and_heal_resumes_it(
    topology: Topology,
) -> None:
    a = topology.upstreams[0]
    a.rate_limit(RATE_KBIT, QUEUE_MS)
    try:
        with topology.bulk_download(0) as download:
            a.wait_queue(1.0, timeout=30)
            queued = a.queue_stats()
            assert queued is not None
            samples: list[tuple[float, int, int]] = []  # seconds since the cut, rx bytes, queued bytes
            cut = time.monotonic()
            a.blackhole()
            while (now := time.monotonic() - cut) < queued.delay + 3:
                stats = a.queue_stats()
                samples.append((now, topology.iface_bytes("wana")[0], stats.backlog_bytes if stats else -1))
                time.sleep(0.05)
            drained = next(t for t, _, backlog in samples if backlog == 0)
            # A sample that saw more than stray neighbour discovery arrive since the one before.
            last_rx = max(
                t for (t, rx, _), (_, prev, _) in zip(samples[1:], samples, strict=False) if rx - prev > 500
            )
            quiet = samples[-1][1] - next(rx for t, rx, _ in samples if t >= drained + 1)
            print(
                f"\nqueue at the cut {queued.delay:.2f} s; drained {drained:.2f} s after the cut; "
                f"last rx {last_rx:.2f} s after the cut; {quiet} bytes in the last {samples[-1][0] - drained - 1:.1f} s"
            )
            assert drained <= queued.delay + 0.5
            assert (
                last_rx <= drained + 0.3
            )  # nothing beyond the router sends anything, retransmissions included
            assert quiet < 500
            a.heal()
            before = topology.iface_bytes("wana")[0]
            # The stalled transfer recovers or is restarted (after BulkDownload.STALL_SECONDS).
            wait_for(
                lambda: topology.iface_bytes("wana")[0] - before > 200_000, 20, "the download to resume", 0.2
            )
            assert download.running
    finally:
        a.heal()
        a.unlimit()


def test_bulk_download_restarts_transfers_that_end_and_stops_after_its_seconds(topology: Topology) -> None:
    b = topology.upstreams[1]
    rx0 = topology.iface_bytes("wanb")[0]
    with topology.bulk_download(1, 3, url=f"http://{BULK_ADDRESS}/bulk?bytes=1000000") as download:
        wait_for(lambda: download.starts >= 3, 10, "three transfers")
        download.wait()
        assert not download.running
    assert download.exits.count(0) >= 3
    assert topology.iface_bytes("wanb")[0] - rx0 >= 3_000_000
    assert b.http_requests() == 0  # served by the bulk source behind the router, not by the targets
    with pytest.raises(ValueError, match="uplink_index"):
        topology.bulk_download(2)


def test_failed_construction_leaves_nothing(monkeypatch: pytest.MonkeyPatch, lab_machine: None) -> None:

    def boom(self: Topology) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Topology, "_start_upstream_servers", boom)
    before = _own_netns()
    with pytest.raises(RuntimeError, match="boom"):
        Topology(2)
    assert _own_netns() == before


def test_nm_activates_both_profiles_with_its_own_metrics(nmlab: NMLab) -> None:
    active = nmlab.nmcli("-t", "-f", "NAME,DEVICE,STATE", "connection", "show", "--active")
    assert "primary:wana:activated" in active.splitlines()
    assert "backup:wanb:activated" in active.splitlines()
    assert nmlab.profiles == ["primary", "backup"]
    assert nmlab.default_routes(4) == [("wana", 100), ("wanb", 101)]
    assert nmlab.default_routes(6) == [("wana", 100), ("wanb", 101)]
    assert nmlab.default_route() == "wana"
    assert sorted(p.name for p in nmlab.keyfile_dir.iterdir()) == [
        "backup.nmconnection",
        "primary.nmconnection",
    ]
    assert nmlab.nmcli("-g", "ipv4.dns", "connection", "show", "backup").strip() == "203.0.113.54"
    assert http_get(nmlab, "203.0.113.10")["result"] == 204
    assert nmlab.upstreams[0].http_requests() == 1
    assert nmlab.env["DBUS_SYSTEM_BUS_ADDRESS"] == nmlab.bus_address
    assert "NetworkManager" in nmlab.nm_log.read_text()


def test_nm_restart_brings_uplinks_back(nmlab: NMLab) -> None:
    nmlab.stop_nm()
    down = nmlab.host("nmcli", "general", "status", check=False)
    assert down.returncode != 0
    assert "not running" in down.stderr
    # Like a real NM stopped with SIGTERM: the kernel keeps its addresses and routes.
    assert nmlab.default_routes(4) == [("wana", 100), ("wanb", 101)]
    nmlab.start_nm()
    assert nmlab.nmcli("-t", "-f", "RUNNING", "general").strip() == "running"
    nmlab.restart_nm()
    active = nmlab.nmcli("-t", "-f", "NAME,DEVICE,STATE", "connection", "show", "--active").splitlines()
    assert {"primary:wana:activated", "backup:wanb:activated"} <= set(active)
    assert nmlab.default_routes(4) == [("wana", 100), ("wanb", 101)]
    assert nmlab.default_routes(6) == [("wana", 100), ("wanb", 101)]
    assert http_get(nmlab, "203.0.113.10")["result"] == 204


def test_three_uplinks_dispatcher_and_cleanup(tmp_path: Path, lab_machine: None) -> None:
    events = tmp_path / "events"
    hooks = tmp_path / "dispatcher.d"
    hooks.mkdir()
    hook = hooks / "50-record"
    hook.write_text(f'#!/bin/sh\necho "$1 $2 $CONNECTION_ID" >> {events}\n')
    hook.chmod(0o755)
    with NMLab(3, dispatcher_dir=hooks) as lab:
        assert lab.default_routes(4) == [("wana", 100), ("wanb", 101), ("wanc", 102)]
        names = {lab.host_netns, *(up.netns for up in lab.upstreams)}
        assert names <= _own_netns()
        pids = [
            int(p) for name in names for p in subprocess.check_output(["ip", "netns", "pids", name]).split()
        ]
        assert len(pids) >= 6  # 3 upstream servers, dbus-daemon, NetworkManager, nm-dispatcher
        deadline = time.monotonic() + 5
        while "wanc up fallback" not in (events.read_text() if events.exists() else ""):
            assert time.monotonic() < deadline, "dispatcher never ran the hook for wanc"
            time.sleep(0.05)
        workdir = lab.workdir
    assert not names & _own_netns()
    assert not workdir.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_session_guard_removes_a_leaked_lab(topology: Topology) -> None:
    removed = cleanup_leftovers(os.getpid())
    assert f"netns {topology.host_netns}" in removed
    assert not _own_netns()
    topology.close()  # the fixture's own teardown must still be harmless
