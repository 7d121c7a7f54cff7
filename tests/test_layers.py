"""The cheap layers between proofs: dns_check (one query to the uplink's own resolvers) and KeptAliveProbe (one
request on a kept-alive connection), proven with two uplinks in the lab: wana carries the default route, the
checks go through wanb unless said. They run inside the host namespace in one long-lived process (a connection
is kept between checks there) that the test drives line by line; faults are set between its checks.

The loopback tests at the end classify what the lab cannot stage (a resolver's SERVFAIL, a server closing a
kept connection just as a request goes out); they prove nothing about binding.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from nmfailover import transport as transport_module
from nmfailover.lab.sandbox import Topology, Upstream
from nmfailover.probe import KeptAliveProbe, Link, Reason, Target, dns_check
from tests.conftest import LoopbackDns

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs CAP_NET_RAW")

TARGET = "http://target1.test/generate_204"
ADDRESS = "203.0.113.10"  # target1.test in the lab, where a proof would have connected
BODY_TARGET = "http://target2.test/success.txt 200 success"
BODY_ADDRESS = "203.0.113.11"

# Reads one JSON command a line, answers one JSON line: a ProbeResult's fields.
_DRIVER = r"""
import asyncio, dataclasses, json, sys
from nmfailover.probe import KeptAliveProbe, Link, dns_check, parse_target, probe

async def main():
    kept = {}
    while line := await asyncio.to_thread(sys.stdin.readline):
        c = json.loads(line)
        link = Link(c["iface"], tuple(c.get("ns", ())))
        if c["op"] == "dns":
            result = await dns_check(link, c["name"], c["timeout"])
        elif c["op"] == "proof":
            result = await probe(link, parse_target(c["target"]), c["timeout"])
        else:
            p = kept.setdefault(c.get("probe", "kept"), KeptAliveProbe())
            result = await p.check(link, parse_target(c["target"]), c["address"], c["timeout"])
        print(json.dumps(dataclasses.asdict(result)), flush=True)

asyncio.run(main())
"""


class Driver:
    """The checks' process inside the host namespace."""

    def __init__(self, topology: Topology) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self._proc = topology.popen_host(
            [sys.executable, "-c", _DRIVER],
            env=dict(os.environ, PYTHONPATH=path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run(self, op: str, iface: str = "wanb", timeout: float = 2.0, **args: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"op": op, "iface": iface, "timeout": timeout, **args}) + "\n")
        self._proc.stdin.flush()
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout + 15)
        assert ready, f"no answer to {op} within {timeout + 15} s"
        result: dict[str, Any] = json.loads(self._proc.stdout.readline())
        return result

    def dns(self, nameservers: tuple[str, ...], name: str = "target1.test", **args: Any) -> dict[str, Any]:
        return self.run("dns", ns=list(nameservers), name=name, **args)

    def check(self, target: str = TARGET, address: str = ADDRESS, **args: Any) -> dict[str, Any]:
        return self.run("check", target=target, address=address, **args)

    def proof(self, nameservers: tuple[str, ...], target: str = TARGET, **args: Any) -> dict[str, Any]:
        return self.run("proof", ns=list(nameservers), target=target, **args)

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=10)


@pytest.fixture
def driver(topology: Topology) -> Iterator[Driver]:
    d = Driver(topology)
    yield d
    d.close()


def upstreams(topology: Topology) -> tuple[Upstream, Upstream]:
    a, b = topology.upstreams
    assert (a.iface, b.iface) == ("wana", "wanb") and topology.default_route() == "wana"
    return a, b


def log_fields(up: Upstream, last: int) -> list[list[str]]:
    """The last `last` lines of up's http.log: method, host, path, local address, peer, connection."""
    lines = up.http_log()
    assert len(lines) >= last, lines
    return [line.split("\t") for line in lines[-last:]]


# ---------------------------------------------------------------- dns_check in the lab


def test_dns_check_asks_the_backups_resolver_through_the_backup(topology: Topology, driver: Driver) -> None:
    a, b = upstreams(topology)
    dns_a, dns_b = a.dns_queries(), b.dns_queries()
    tx_a = topology.iface_counters("wana")[1]
    result = driver.dns((b.resolver,))
    assert result["ok"] and result["reason"] == "ok", result
    assert result["detail"] == f"target1.test: {b.resolver}: {ADDRESS}"
    assert result["failed_nameservers"] == [] and not result["unanswered"]
    assert (a.dns_queries() - dns_a, b.dns_queries() - dns_b) == (0, 1)  # ONE query, type A
    assert b.dns_log()[-1].split("\t") == ["target1.test.", "A", b.address4]
    assert topology.iface_counters("wana")[1] - tx_a <= 2  # background noise at most
    assert 60 <= result["payload"] <= 120, result  # one query and its answer

    # The primary's resolver is not reachable through the backup; the next one in the list answers, and the
    # result names the one that failed (what the integrator moves DNS on).
    result = driver.dns((a.resolver, b.resolver))
    assert result["ok"] and result["failed_nameservers"] == [a.resolver], result
    assert result["detail"] == f"target1.test: no answer from {a.resolver}; {b.resolver}: {ADDRESS}"
    assert a.dns_queries() == dns_a

    # A resolver that answers at all is alive: a name it does not know included.
    result = driver.dns((b.resolver,), name="missing.test")
    assert result["ok"] and result["detail"] == f"missing.test: {b.resolver}: NXDOMAIN", result


def test_dns_check_of_a_silent_resolver_is_unanswered(topology: Topology, driver: Driver) -> None:
    _, b = upstreams(topology)
    b.break_dns()
    result = driver.dns((b.resolver,), timeout=0.5)
    assert (result["reason"], result["unanswered"]) == ("dns", True), result
    assert result["failed_nameservers"] == [b.resolver]
    assert result["detail"] == f"target1.test: no answer from {b.resolver}"
    assert result["latency"] < 0.5 + 0.2
    # The HTTP path is alive meanwhile: this is the "resolvers dead, IP path alive" case.
    assert driver.check()["ok"]
    b.heal()
    assert driver.dns((b.resolver,))["ok"]


def test_dns_check_of_a_dead_device_is_no_device(topology: Topology, driver: Driver) -> None:
    _, b = upstreams(topology)
    gone = driver.dns((b.resolver,), iface="wanz")
    assert (gone["reason"], gone["detail"]) == ("no-device", "no device wanz"), gone
    b.cut_cable()
    result = driver.dns((b.resolver,))
    assert (result["reason"], result["detail"]) == ("no-device", "wanb has no carrier"), result
    assert driver.check()["reason"] == "no-device"
    assert driver.check(iface="wanz")["reason"] == "no-device"


# ---------------------------------------------------------------- KeptAliveProbe in the lab


def test_kept_alive_checks_share_one_connection_through_the_backup(
    topology: Topology, driver: Driver
) -> None:
    a, b = upstreams(topology)
    http_a, dns_a, dns_b = a.http_requests(), a.dns_queries(), b.dns_queries()
    tx_a = topology.iface_counters("wana")[1]
    results = [driver.check() for _ in range(5)]
    assert all(r["ok"] for r in results), results
    assert results[0]["detail"] == f"HTTP 204 from {ADDRESS}:80" and results[0]["address"] == ADDRESS
    lines = log_fields(b, 5)
    assert {line[5] for line in lines} == {lines[0][5]}  # 1 TCP connection, 5 requests
    assert {(m, host, path, local, peer) for m, host, path, local, peer, _ in lines} == {
        ("GET", "target1.test", "/generate_204", ADDRESS, b.address4)
    }
    assert a.http_requests() == http_a and topology.iface_counters("wana")[1] - tx_a <= 2
    assert (a.dns_queries(), b.dns_queries()) == (dns_a, dns_b)  # no lookup: the address is given
    # Every check counts its own request and answer, the first too (the handshake is below TCP).
    assert len({r["payload"] for r in results}) == 1 and 100 <= results[0]["payload"] <= 400, results

    # Another address (a new proof connected elsewhere) or another device: a new connection there.
    assert driver.check(address="203.0.113.11")["ok"]
    moved = log_fields(b, 1)[0]
    assert moved[3] == "203.0.113.11" and moved[5] != lines[0][5]
    assert driver.check(iface="wana")["ok"]
    assert log_fields(a, 1)[0][4] == a.address4
    # An answer with a body nobody asked to check is read all the same, or the connection could not serve on.
    plain = [
        driver.check("http://target2.test/success.txt 200", BODY_ADDRESS, probe="plain") for _ in range(2)
    ]
    assert all(r["ok"] for r in plain) and log_fields(b, 2)[0][5] == log_fields(b, 2)[1][5], plain


def test_kept_alive_reconnects_after_the_server_closed(topology: Topology, driver: Driver) -> None:
    _, b = upstreams(topology)
    (b.state_dir / "idle-timeout").write_text("0.3\n", encoding="utf-8")
    steady = [driver.check() for _ in range(2)]  # answered within the idle timeout: one connection
    first = log_fields(b, 2)
    assert first[0][5] == first[1][5], first
    time.sleep(0.8)  # the server closes the idle connection
    again = driver.check()
    assert again["ok"], again
    assert log_fields(b, 1)[0][5] != first[1][5]
    # Seen closed before sending (not a request wasted on a dead connection): the same bytes as a steady
    # check, whose request and answer are the same.
    assert again["payload"] == steady[1]["payload"], (again, steady)


def test_kept_alive_connection_refused(topology: Topology, driver: Driver) -> None:
    _, b = upstreams(topology)
    b.refuse()
    fresh = driver.check(probe="fresh")
    b.heal()
    assert driver.check()["ok"]  # a connection now open
    b.refuse()  # every TCP packet to the targets is answered with a reset, the open connection's too
    kept = driver.check()
    b.heal()
    for result in (fresh, kept):
        assert (result["reason"], result["unanswered"]) == ("connect", False), result
        assert result["detail"] == f"{ADDRESS}:80: connection refused", result
    assert driver.check()["ok"]  # and a new connection once healed


def test_kept_alive_silence_is_an_unanswered_timeout(topology: Topology, driver: Driver) -> None:
    _, b = upstreams(topology)
    assert driver.check()["ok"]
    b.blackhole()
    kept = driver.check(timeout=0.5)
    fresh = driver.check(probe="fresh", timeout=0.5)
    b.heal()
    assert (kept["reason"], kept["unanswered"]) == ("timeout", True), kept
    assert kept["detail"] == f"timed out after 0.5 s waiting for HTTP response from {ADDRESS}:80", kept
    assert (fresh["reason"], fresh["unanswered"]) == ("timeout", True), fresh
    assert fresh["detail"] == f"timed out after 0.5 s connecting to {ADDRESS}:80", fresh
    assert driver.check()["ok"]


@pytest.mark.parametrize(
    ("mode", "target", "address", "detail"),
    [
        ("portal", TARGET, ADDRESS, "HTTP 302 -> http://portal.example/ (looks like a captive portal)"),
        ("wrong-body", BODY_TARGET, BODY_ADDRESS, "HTTP 200 but body lacks 'success' (captive portal?)"),
    ],
)
def test_kept_alive_sees_a_captive_portal(
    topology: Topology, driver: Driver, mode: str, target: str, address: str, detail: str
) -> None:
    _, b = upstreams(topology)
    assert driver.check(target=target, address=address)["ok"]
    b.set_http_mode(mode)
    on_open = driver.check(target=target, address=address)
    fresh = driver.check(target=target, address=address, probe="fresh")
    b.set_http_mode("ok")
    for result in (on_open, fresh):
        assert (result["reason"], result["detail"]) == ("unexpected-response", detail), result
    assert driver.check(target=target, address=address)["ok"]
    # After a failed check, a new connection (a 200 login page left the old one reusable).
    assert log_fields(b, 1)[0][5] != log_fields(b, 3)[0][5]


# ---------------------------------------------------------------- the lab's upstream server

_RAW_HTTP = r"""
import json, socket, sys
def exchange(sock, request):
    sock.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next((int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length:")), 0)
    while len(body) < length:
        body += sock.recv(4096)
    return lines
def closed(sock):
    sock.settimeout(0.5)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
out = []
for requests in json.loads(sys.argv[1]):
    sock = socket.create_connection(("203.0.113.10", 80), timeout=2)
    heads = [exchange(sock, r) for r in requests]
    out.append({"heads": heads, "closed": closed(sock)})
    sock.close()
print(json.dumps(out))
"""


def test_upstream_keeps_connections_alive_until_told(topology: Topology) -> None:
    a, _ = upstreams(topology)
    get = "GET /generate_204 HTTP/1.1\r\nHost: target1.test\r\n"
    post = "POST /generate_204 HTTP/1.1\r\nHost: target1.test\r\nContent-Length: 4\r\n\r\nbody"
    sessions = [
        [
            get + "\r\n",
            post,
            get + "\r\n",
        ],  # HTTP/1.1: kept open, a POST's body read, not taken for a request
        [get + "Connection: close\r\n\r\n"],
        ["GET /generate_204 HTTP/1.0\r\n\r\n"],
        ["GET /bulk?bytes=100 HTTP/1.1\r\n\r\n"],
    ]
    out = json.loads(topology.host(sys.executable, "-c", _RAW_HTTP, json.dumps(sessions)).stdout)
    kept, close, old, bulk = out
    assert [h[0] for h in kept["heads"]] == ["HTTP/1.1 204 No Content"] * 3 and not kept["closed"], kept
    assert not any("Connection: close" in h for h in kept["heads"][0])
    for session in (close, old, bulk):
        assert "Connection: close" in session["heads"][-1] and session["closed"], session
    lines = [line.split("\t") for line in a.http_log()]
    assert [(m, path, conn) for m, _, path, _, _, conn in lines] == [
        ("GET", "/generate_204", "1"), ("POST", "/generate_204", "1"), ("GET", "/generate_204", "1"),
        ("GET", "/generate_204", "2"), ("GET", "/generate_204", "3"), ("GET", "/bulk?bytes=100", "4"),
    ]  # fmt: skip


# ---------------------------------------------------------------- bytes on the wire


def wire_bytes(topology: Topology, iface: str, run: Callable[[], dict[str, Any]], times: int) -> float:
    """Mean bytes received and sent on the device (frames, Ethernet header included) per run."""
    before = sum(topology.iface_bytes(iface))
    for _ in range(times):
        assert run()["ok"]
    time.sleep(0.3)  # the last FIN and ACKs
    return (sum(topology.iface_bytes(iface)) - before) / times


def test_bytes_on_the_wire_of_each_layer(topology: Topology, driver: Driver) -> None:
    _, b = upstreams(topology)
    assert driver.check()["ok"]  # open the connection
    times = 20
    dns = wire_bytes(topology, "wanb", lambda: driver.dns((b.resolver,)), times)
    kept = wire_bytes(topology, "wanb", driver.check, times)
    proof = wire_bytes(topology, "wanb", lambda: driver.proof((b.resolver,)), times)
    print(f"\nbytes on the wire per check: dns {dns:.0f}, kept-alive HTTP {kept:.0f}, proof {proof:.0f}")
    # A query and its answer: 2 frames of 42 header bytes around ~76 bytes of DNS.
    assert 140 <= dns <= 220, dns
    # A request, its answer and their ACKs on an open connection; no handshake, no lookup.
    assert kept <= 600, kept
    assert proof >= 2 * kept and proof >= 4 * dns, (dns, kept, proof)


# ---------------------------------------------------------------- loopback: classification only


class Resolver(asyncio.DatagramProtocol):
    """Answers every query with `rcode` (an A record with NOERROR), or never with None."""

    def __init__(self, rcode: dns.rcode.Rcode | None) -> None:
        self.rcode = rcode
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.rcode is None:
            return
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.set_rcode(self.rcode)
        if self.rcode == dns.rcode.NOERROR:
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "127.0.0.1"))
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


@needs_root
async def test_dns_check_a_refusing_resolver_answered(
    loopback_dns: LoopbackDns,
) -> None:
    await loopback_dns("127.0.0.2", Resolver(dns.rcode.SERVFAIL))
    await loopback_dns("127.0.0.3", Resolver(dns.rcode.REFUSED))
    result = await dns_check(Link("lo", ("127.0.0.2", "127.0.0.3")), "target.test", 1.0)
    assert (result.reason, result.unanswered) == (Reason.DNS, False), result  # answers, not silence
    assert result.detail == "target.test: 127.0.0.2: SERVFAIL; 127.0.0.3: REFUSED"
    assert result.failed_nameservers == ("127.0.0.2", "127.0.0.3")

    await loopback_dns("127.0.0.4", Resolver(dns.rcode.NOERROR))
    result = await dns_check(Link("lo", ("127.0.0.2", "127.0.0.4")), "target.test", 1.0)
    assert result.ok and result.failed_nameservers == ("127.0.0.2",), result
    assert result.detail == "target.test: 127.0.0.2: SERVFAIL; 127.0.0.4: 127.0.0.1"
    assert result.address == "127.0.0.4"


@needs_root
async def test_dns_check_names_a_nameserver_cut_short_by_the_deadline(
    loopback_dns: LoopbackDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a stalled event loop fires the nameserver's timer and the check's at once: the check's wins.
    monkeypatch.setattr(transport_module, "DNS_SHARE", 2.0)
    await loopback_dns("127.0.0.2", Resolver(None))
    result = await dns_check(Link("lo", ("127.0.0.2",)), "target.test", 0.2)
    assert (result.reason, result.unanswered) == (Reason.DNS, True), result
    assert result.failed_nameservers == ("127.0.0.2",)


async def test_dns_check_without_nameservers_or_device() -> None:
    assert (await dns_check(Link("lo"), "x.test", 1.0)).detail == "no nameservers for lo"
    assert (await dns_check(Link(None, ("127.0.0.1",)), "x.test", 1.0)).reason is Reason.NO_DEVICE


@needs_root
async def test_kept_alive_retries_once_on_a_connection_closed_under_its_request() -> None:
    """The server reads the second request on a kept connection and closes it unanswered (as a server whose
    idle timeout fires just as the request arrives does): the check tries a new connection, not a verdict."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        try:
            for answered in range(2):
                await reader.readuntil(b"\r\n\r\n")
                if answered and len(connections) == 1:
                    return  # close, unanswered
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kept = KeptAliveProbe()
    target = Target(f"http://kept.test:{port}/generate_204", 204)
    try:
        first = await kept.check(Link("lo"), target, "127.0.0.1", 2.0)
        second = await kept.check(Link("lo"), target, "127.0.0.1", 2.0)
    finally:
        await kept.aclose()
        server.close()
    assert first.ok and second.ok, (first, second)
    assert connections == [1, 2]
