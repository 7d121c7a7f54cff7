"""How probe outcomes are classified: answers judged through httpx.MockTransport, failures on the way (DNS,
connect, TLS, a broken peer) through the real bound transport on loopback. These prove classification, not
binding: every route on lo is the default for 127/8. tests/test_probe_binding.py proves binding with two
uplinks."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx
import pytest

from nmfailover import __version__
from nmfailover import probe as probe_module
from nmfailover import transport as transport_module
from nmfailover.probe import (
    DEFAULT_TARGETS,
    MAX_BODY,
    Link,
    ProbeResult,
    Reason,
    RoundResult,
    Target,
    parse_target,
    probe,
    probe_round,
)
from tests.conftest import LoopbackDns

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs CAP_NET_RAW")

LO = Link("lo")
T = 0.3  # short timeout for the "never answers" cases

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ---------------------------------------------------------------- parse_target


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("http://example.test/generate_204", Target("http://example.test/generate_204", 204)),
        ("http://example.test/", Target("http://example.test/", 200)),
        ("https://example.test:8443/x", Target("https://example.test:8443/x", 200)),
        ("http://example.test/ok 200", Target("http://example.test/ok", 200)),
        (
            "  http://example.test/ok   200   all good here  ",
            Target("http://example.test/ok", 200, "all good here"),
        ),
        ("http://[2001:db8::1]/generate_204 204", Target("http://[2001:db8::1]/generate_204", 204)),
        (
            "http://detectportal.firefox.com/success.txt",
            Target("http://detectportal.firefox.com/success.txt", 200, "success"),
        ),
        (
            "http://nmcheck.gnome.org/check_network_status.txt",
            Target("http://nmcheck.gnome.org/check_network_status.txt", 200, "NetworkManager is online"),
        ),
        # An explicit expectation wins over the known default.
        (
            "http://detectportal.firefox.com/success.txt 200",
            Target("http://detectportal.firefox.com/success.txt", 200),
        ),
    ],
)
def test_parse_target_valid(spec: str, expected: Target) -> None:
    assert parse_target(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://example.test/", "only http"),
        ("example.test/generate_204", "only http"),
        ("http:///generate_204", "no host"),
        ("http://example.test:99999/", "bad port"),
        ("http://example.test/ 99", "100..599"),
        ("http://example.test/ 600", "100..599"),
        ("http://example.test/ OK", "100..599"),
    ],
)
def test_parse_target_invalid(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_target(spec)
    assert "\n" not in str(info.value)


def test_default_targets_round_trip_and_are_plain_http() -> None:
    assert len({urlhost(t.url) for t in DEFAULT_TARGETS}) == len(DEFAULT_TARGETS) >= 3
    for target in DEFAULT_TARGETS:
        assert target.url.startswith("http://")  # captive portals must be able to show themselves
        assert parse_target(target.url) == target


def urlhost(url: str) -> str:
    return url.split("/")[2]


# ---------------------------------------------------------------- loopback servers


@dataclass
class Server:
    port: int
    requests: list[bytes] = field(default_factory=list)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(srv)
        return Server(srv.sockets[0].getsockname()[1])

    yield start
    for srv in servers:
        srv.close()


def closing(handler: Handler) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


def http_server(response: bytes, requests: list[bytes] | None = None) -> Handler:
    @closing
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if requests is not None:
            requests.append(head)
        writer.write(response)
        await writer.drain()

    return handle


@closing
async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accept, never answer, until the client gives up


@closing
async def plain_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Answers a TLS ClientHello the way a plain HTTP server would.
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


# ---------------------------------------------------------------- answers, judged (httpx.MockTransport)

Respond = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def peer(monkeypatch: pytest.MonkeyPatch) -> Callable[[Respond], list[httpx.Request]]:
    """Put a fake HTTP peer in place of the bound transport; what it was asked, in order."""

    def install(respond: Respond) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def handle(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return respond(request)

        def transport(
            link: Link, deadline: float, progress: object = None, *, https: bool = True
        ) -> httpx.MockTransport:
            return httpx.MockTransport(handle)

        monkeypatch.setattr(probe_module, "BoundTransport", transport)
        return seen

    return install


class Body(httpx.AsyncByteStream):
    """A response body arriving in chunks, as off a socket; counts what the client pulled.

    (httpx.Response(content=...) would hand over a body already read, unlike any real transport.)
    """

    def __init__(self, data: bytes, *, endless: bool = False, chunk: int = 4096) -> None:
        self.data = data
        self.endless = endless
        self.chunk = chunk
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            for i in range(0, len(self.data), self.chunk):
                piece = self.data[i : i + self.chunk]
                self.pulled += len(piece)
                yield piece
            if not self.endless:
                return


@pytest.mark.parametrize(
    ("status", "headers", "body", "target", "reason", "detail"),
    [
        (204, {}, b"", Target("http://t.test/generate_204", 204), Reason.OK, "HTTP 204 from"),
        (200, {}, b"success\n", Target("http://t.test/s.txt", 200, "success"), Reason.OK, "HTTP 200 from"),
        (
            200,
            {},
            b"hello",
            Target("http://t.test/generate_204", 204),
            Reason.UNEXPECTED,
            "HTTP 200, expected 204",
        ),
        (
            302,
            {"Location": "http://portal.test/login"},
            b"",
            Target("http://t.test/generate_204", 204),
            Reason.UNEXPECTED,
            "HTTP 302 -> http://portal.test/login (looks like a captive portal)",
        ),
        (
            307,
            {},
            b"",
            Target("http://t.test/generate_204", 204),
            Reason.UNEXPECTED,
            "HTTP 307 without Location (looks like a captive portal)",
        ),
        (
            511,
            {},
            b"<html>Log in</html>",
            Target("http://t.test/generate_204", 204),
            Reason.UNEXPECTED,
            "HTTP 511, expected 204",
        ),
        (
            200,
            {},
            b"<html>Log in</html>",
            Target("http://t.test/s.txt", 200, "success"),
            Reason.UNEXPECTED,
            "HTTP 200 but body lacks 'success' (captive portal?)",
        ),
        # A redirect the operator asked for is an answer like any other.
        (301, {"Location": "/x"}, b"", Target("http://t.test/old", 301), Reason.OK, "HTTP 301 from"),
    ],
    ids=["204", "200-body", "wrong-status", "redirect", "redirect-bare", "511", "body-mismatch", "want-301"],
)
async def test_answers_are_judged(
    peer: Callable[[Respond], list[httpx.Request]],
    status: int,
    headers: dict[str, str],
    body: bytes,
    target: Target,
    reason: Reason,
    detail: str,
) -> None:
    seen = peer(lambda request: httpx.Response(status, headers=headers, stream=Body(body)))
    result = await probe(LO, target, 2.0)
    assert (result.reason, result.ok) == (reason, reason is Reason.OK), result
    assert detail in result.detail
    # Redirects are verdicts, never followed: one request, to the target itself.
    assert [str(r.url) for r in seen] == [target.url]


async def test_request_headers(peer: Callable[[Respond], list[httpx.Request]]) -> None:
    seen = peer(lambda request: httpx.Response(204))
    assert (await probe(LO, Target("http://t.test/generate_204", 204), 2.0)).ok
    (request,) = seen
    assert request.method == "GET"
    assert request.headers["user-agent"] == f"nmfailover/{__version__}"
    assert request.headers["cache-control"] == "no-cache"
    assert request.headers["connection"] == "close"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["host"] == "t.test"


async def test_environment_proxy_is_ignored(
    peer: Callable[[Respond], list[httpx.Request]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy from the environment would carry the probe off the link (here: to a refusing port). httpx
    # already skips environment proxies when given a transport; trust_env=False makes sure of it.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    seen = peer(lambda request: httpx.Response(204))
    result = await probe(LO, Target("http://t.test/generate_204", 204), 2.0)
    assert result.ok, result
    assert len(seen) == 1


async def test_no_cookie_carries_over_between_probes(peer: Callable[[Respond], list[httpx.Request]]) -> None:
    seen = peer(lambda request: httpx.Response(204, headers={"Set-Cookie": "portal=seen; Path=/"}))
    target = Target("http://t.test/generate_204", 204)
    assert (await probe(LO, target, 2.0)).ok
    assert (await probe(LO, target, 2.0)).ok
    assert [r.headers.get("cookie") for r in seen] == [None, None]


@pytest.mark.parametrize(
    ("padding", "ok"), [(MAX_BODY - len("success"), True), (MAX_BODY - len("success") + 1, False)]
)
async def test_body_is_read_only_up_to_max_body(
    peer: Callable[[Respond], list[httpx.Request]], padding: int, ok: bool
) -> None:
    peer(lambda request: httpx.Response(200, stream=Body(b"x" * padding + b"success")))
    result = await probe(LO, Target("http://t.test/success.txt", 200, "success"), 2.0)
    assert (result.ok, result.reason) == (ok, Reason.OK if ok else Reason.UNEXPECTED), result


async def test_endless_body_is_cut_off(peer: Callable[[Respond], list[httpx.Request]]) -> None:
    body = Body(b"x" * 4096, endless=True)
    peer(lambda request: httpx.Response(200, stream=body))
    result = await probe(LO, Target("http://t.test/success.txt", 200, "success"), 2.0)
    assert result.reason is Reason.UNEXPECTED, result
    assert MAX_BODY <= body.pulled <= MAX_BODY + body.chunk


async def test_body_of_a_wrong_status_is_never_read(peer: Callable[[Respond], list[httpx.Request]]) -> None:
    body = Body(b"x" * 4096, endless=True)
    peer(lambda request: httpx.Response(302, headers={"Location": "http://portal.test/"}, stream=body))
    result = await probe(LO, Target("http://t.test/success.txt", 200, "success"), 2.0)
    assert result.reason is Reason.UNEXPECTED, result
    assert body.pulled == 0


# ---------------------------------------------------------------- through the bound transport, on loopback


@needs_root
@pytest.mark.parametrize(
    "response",
    [b"SPAM SPAM SPAM\r\n\r\n", b"HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n", b""],
    ids=["garbage", "bad-header", "closed"],
)
async def test_broken_peer_is_http(serve: Callable[[Handler], Awaitable[Server]], response: bytes) -> None:
    server = await serve(http_server(response))
    result = await probe(LO, Target(f"http://127.0.0.1:{server.port}/generate_204", 204), 2.0)
    assert (result.ok, result.reason) == (False, Reason.HTTP), result
    assert result.detail.startswith(f"127.0.0.1:{server.port}: ")
    assert "\n" not in result.detail
    assert 0 < result.latency < 1


@needs_root
async def test_answer_on_the_wire(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    requests: list[bytes] = []
    body = b"x" * 10_000 + b"success"
    server = await serve(
        http_server(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body), requests)
    )
    result = await probe(LO, Target(f"http://127.0.0.1:{server.port}/success.txt", 200, "success"), 2.0)
    assert (result.ok, result.detail) == (True, f"HTTP 200 from 127.0.0.1:{server.port}"), result
    head = requests[0].decode().lower()
    assert head.startswith("get /success.txt http/1.1\r\n")
    assert f"user-agent: nmfailover/{__version__}\r\n" in head
    assert "connection: close\r\n" in head


@needs_root
async def test_fresh_connection_every_probe(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    connections = 0

    @closing
    async def keepalive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = await serve(keepalive)
    target = Target(f"http://127.0.0.1:{server.port}/generate_204", 204)
    for _ in range(3):
        assert (await probe(LO, target, 2.0)).ok
    assert connections == 3


@needs_root
async def test_refused_port_is_connect() -> None:
    result = await probe(LO, Target("http://127.0.0.1:1/", 204), 2.0)
    assert (result.reason, result.detail) == (Reason.CONNECT, "127.0.0.1:1: connection refused")


@needs_root
async def test_silent_server_is_timeout(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(silent)
    result = await probe(LO, Target(f"http://127.0.0.1:{server.port}/", 204), T)
    assert result.reason is Reason.TIMEOUT
    assert "waiting for HTTP response" in result.detail
    assert T <= result.latency < T + 0.2


@needs_root
async def test_tls_to_plain_tcp_port_is_tls(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(plain_tcp)
    result = await probe(LO, Target(f"https://127.0.0.1:{server.port}/", 204), 2.0)
    assert result.reason is Reason.TLS, result


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ssl.SSLContext]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d: Path = tmp_path_factory.mktemp("tls")
    argv = (
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
        " -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        [*argv.split(), "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    yield context


@needs_root
async def test_untrusted_certificate_is_tls(self_signed: ssl.SSLContext) -> None:
    handler = http_server(b"HTTP/1.1 204 No Content\r\n\r\n")
    srv = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=self_signed)
    try:
        port = srv.sockets[0].getsockname()[1]
        result = await probe(LO, Target(f"https://127.0.0.1:{port}/generate_204", 204), 2.0)
    finally:
        srv.close()
    assert result.reason is Reason.TLS
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail


@needs_root
async def test_unknown_interface_is_no_device() -> None:
    result = await probe(Link("nosuchdev0", ("127.0.0.1",)), Target("http://127.0.0.1:1/", 204), 1.0)
    assert (result.reason, result.detail) == (Reason.NO_DEVICE, "no device nosuchdev0")
    result = await probe(Link("nosuchdev0", ("127.0.0.1",)), Target("http://name.test/", 204), 1.0)
    assert result.reason is Reason.NO_DEVICE


async def test_no_interface_is_no_device_without_traffic(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    requests: list[bytes] = []
    server = await serve(http_server(b"HTTP/1.1 204 No Content\r\n\r\n", requests))
    result = await probe(Link(None), Target(f"http://127.0.0.1:{server.port}/", 204), 1.0)
    await asyncio.sleep(0.05)
    assert (result.ok, result.reason, requests) == (False, Reason.NO_DEVICE, [])


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/", "http://127.0.0.1:port/", "gopher://x/", "http://", ""]
)
async def test_probe_never_raises_on_weird_urls(url: str) -> None:
    result = await probe(LO, Target(url, 204), 1.0)
    assert not result.ok
    assert result.reason is Reason.CONNECT
    assert result.detail.startswith("invalid URL")


@needs_root
async def test_probe_passes_cancellation_through(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(silent)
    task = asyncio.create_task(probe(LO, Target(f"http://127.0.0.1:{server.port}/", 204), 5.0))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------- DNS over the link's nameservers


class Responder(asyncio.DatagramProtocol):
    """A tiny authoritative-ish DNS server: names in `records` answer A, others NXDOMAIN."""

    def __init__(self, records: dict[str, str], *, mute: bool = False, mute_aaaa: bool = False) -> None:
        self.records = records
        self.mute = mute
        self.mute_aaaa = mute_aaaa
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        self.queries.append((name, dns.rdatatype.to_text(question.rdtype)))
        if self.mute or (self.mute_aaaa and question.rdtype == dns.rdatatype.AAAA):
            return
        reply = dns.message.make_response(query)
        if name not in self.records:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", self.records[name]))
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


@needs_root
async def test_dns_resolves_through_link_nameserver_and_keeps_host_header(
    serve: Callable[[Handler], Awaitable[Server]], loopback_dns: LoopbackDns
) -> None:
    responder = Responder({"target.test": "127.0.0.1"})
    await loopback_dns("127.0.0.1", responder)
    requests: list[bytes] = []
    server = await serve(http_server(b"HTTP/1.1 204 No Content\r\n\r\n", requests))
    result = await probe(
        Link("lo", ("127.0.0.1",)), Target(f"http://target.test:{server.port}/generate_204", 204), 2.0
    )
    assert result.ok, result
    assert sorted(responder.queries) == [("target.test", "A"), ("target.test", "AAAA")]
    assert f"host: target.test:{server.port}\r\n" in requests[0].decode().lower()


@needs_root
async def test_dns_nxdomain(loopback_dns: LoopbackDns) -> None:
    await loopback_dns("127.0.0.1", Responder({}))
    result = await probe(Link("lo", ("127.0.0.1",)), Target("http://missing.test/", 204), 2.0)
    assert (result.reason, result.detail) == (Reason.DNS, "missing.test: NXDOMAIN from 127.0.0.1")


@needs_root
async def test_dns_silent_server(loopback_dns: LoopbackDns) -> None:
    await loopback_dns("127.0.0.1", Responder({"target.test": "127.0.0.1"}, mute=True))
    result = await probe(Link("lo", ("127.0.0.1",)), Target("http://target.test/", 204), T)
    assert (result.reason, result.detail) == (Reason.DNS, "target.test: no answer from 127.0.0.1")
    assert result.latency < T + 0.1


@needs_root
async def test_dns_falls_back_to_next_nameserver(
    serve: Callable[[Handler], Awaitable[Server]], loopback_dns: LoopbackDns
) -> None:
    mute = Responder({}, mute=True)
    good = Responder({"target.test": "127.0.0.1"})
    await loopback_dns("127.0.0.2", mute)
    await loopback_dns("127.0.0.3", good)
    server = await serve(http_server(b"HTTP/1.1 204 No Content\r\n\r\n"))
    link = Link("lo", ("127.0.0.2", "127.0.0.3"))
    result = await probe(link, Target(f"http://target.test:{server.port}/", 204), 1.0)
    assert result.ok, result
    assert mute.queries and good.queries


@needs_root
async def test_dns_missing_aaaa_answer_does_not_stall(
    serve: Callable[[Handler], Awaitable[Server]], loopback_dns: LoopbackDns
) -> None:
    await loopback_dns("127.0.0.1", Responder({"target.test": "127.0.0.1"}, mute_aaaa=True))
    server = await serve(http_server(b"HTTP/1.1 204 No Content\r\n\r\n"))
    result = await probe(Link("lo", ("127.0.0.1",)), Target(f"http://target.test:{server.port}/", 204), 3.0)
    assert result.ok, result
    assert result.latency < transport_module.DNS_STRAGGLER + 0.5


async def test_no_nameservers_is_dns() -> None:
    result = await probe(LO, Target("http://target.test/", 204), 1.0)
    assert (result.reason, result.detail) == (Reason.DNS, "no nameservers for lo")


@needs_root
async def test_ip_literal_needs_no_dns(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(http_server(b"HTTP/1.1 204 No Content\r\n\r\n"))
    assert (await probe(LO, Target(f"http://127.0.0.1:{server.port}/", 204), 1.0)).ok


# ---------------------------------------------------------------- rounds


@needs_root
async def test_round_quorum_and_summary(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    good = await serve(http_server(b"HTTP/1.1 204 No Content\r\n\r\n"))
    targets = [
        Target(f"http://127.0.0.1:{good.port}/a", 204),
        Target(f"http://127.0.0.1:{good.port}/b", 204),
        Target("http://127.0.0.1:1/", 204),
    ]
    two = await probe_round(LO, targets, 1.0, needed=2)
    assert (two.ok, two.summary, two.hard_failure) == (True, "2/3 targets answered", False)
    assert [r.target for r in two.results] == targets
    three = await probe_round(LO, targets, 1.0, needed=3)
    assert (three.ok, three.summary) == (False, "1/3 targets failed (connect)")


@needs_root
async def test_round_runs_targets_concurrently(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(silent)
    targets = [Target(f"http://127.0.0.1:{server.port}/{i}", 204) for i in range(3)]
    result = await probe_round(LO, targets, T, needed=1)
    assert (result.ok, result.summary) == (False, "3/3 targets failed (timeout)")
    assert max(r.latency for r in result.results) < 2 * T


async def test_round_without_device_is_hard_failure() -> None:
    result = await probe_round(Link(None), DEFAULT_TARGETS, 1.0, needed=1)
    assert result.hard_failure
    assert result.summary == f"{len(DEFAULT_TARGETS)}/{len(DEFAULT_TARGETS)} targets failed (no-device)"


def result(reason: Reason) -> ProbeResult:
    return ProbeResult(Target("http://x.test/", 204), reason is Reason.OK, reason, 0.1, "")


@pytest.mark.parametrize(
    ("reasons", "needed", "ok", "summary", "hard"),
    [
        ([Reason.OK] * 3, 2, True, "3/3 targets answered", False),
        ([Reason.OK, Reason.TIMEOUT, Reason.OK], 2, True, "2/3 targets answered", False),
        ([Reason.OK, Reason.TIMEOUT, Reason.DNS], 2, False, "2/3 targets failed (timeout, dns)", False),
        ([Reason.DNS, Reason.TIMEOUT, Reason.DNS], 1, False, "3/3 targets failed (dns, timeout)", False),
        ([Reason.NO_DEVICE, Reason.TIMEOUT], 1, False, "2/2 targets failed (no-device, timeout)", False),
        ([Reason.NO_DEVICE] * 2, 1, False, "2/2 targets failed (no-device)", True),
        ([], 1, False, "no targets probed", False),
    ],
)
def test_round_summary(reasons: list[Reason], needed: int, ok: bool, summary: str, hard: bool) -> None:
    results = tuple(result(r) for r in reasons)
    round_ = RoundResult(sum(r.ok for r in results) >= needed, results, needed)
    assert (round_.ok, round_.summary, round_.hard_failure) == (ok, summary, hard)
