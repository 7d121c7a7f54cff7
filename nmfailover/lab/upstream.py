"""A simulated ISP's "internet": HTTP probe targets and a DNS resolver, run inside an upstream namespace.

Started by nmfailover.lab.sandbox as
`ip netns exec UP python -m nmfailover.lab.upstream --state-dir DIR --resolver IP`, and without
`--resolver` (HTTP only) as the bulk source behind the upstream's router.

State directory protocol (all plain files, so the test process needs no IPC):
- `mode` (written by the lab, read on every HTTP request, so a change reaches an open keep-alive
  connection too): `ok` (default), `portal` (302 to a login page), `wrong-body` (200 with a login page),
  `slow:SECONDS`, `hang` (the request is read and never answered; the connection is closed without an
  answer once the mode changes).
- `dns-mode` (written by the lab, read on every DNS query): `ok` (default) or `servfail` (every query is
  answered SERVFAIL, as a resolver whose upstream is unreachable does).
- `http.log`: one line per HTTP request:
  `METHOD<TAB>HOST<TAB>PATH<TAB>LOCAL-ADDRESS<TAB>PEER-ADDRESS<TAB>CONNECTION`, CONNECTION numbering the
  server's TCP connections from 1 (several requests on one kept-alive connection share it).
- `idle-timeout` (optional, read each time a connection waits for its next request): seconds a kept-alive
  connection may stay idle before the server closes it; default IDLE_TIMEOUT.
- `dns.log`: one line per DNS query: `QNAME<TAB>QTYPE<TAB>PEER-ADDRESS`.
- `ready`: created once every socket listens.

Besides the probe pages, `GET /bulk` streams zeros until the client closes (or `?bytes=N` of them), for
loading a link: sent with a loss-based congestion control (`?cc=NAME`, default cubic) that keeps sending
until the queue in front of the link overflows, which is what makes bufferbloat, whatever the machine's
default (often BBR, which would keep the queue short). The probe-page modes do not apply to it.

Connections are HTTP/1.1 keep-alive: several requests each, until the client sends `Connection: close` (or
speaks HTTP/1.0 without keep-alive), an answer says `Connection: close` (a bulk download always does), or
the connection stays idle for the idle timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import socket
from pathlib import Path
from typing import NoReturn, cast
from urllib.parse import parse_qs

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 5
ZONE4 = {
    "target1.test.": "203.0.113.10",
    "target2.test.": "203.0.113.11",
    "target3.test.": "203.0.113.12",
}
# The names the lab's user traffic (nmfailover.lab.usertraffic) looks up: IPv4 only, so an application's
# connections follow the IPv4 default route, the one the benchmark watches.
USER_SITES = {
    "site1.test.": "203.0.113.10",
    "site2.test.": "203.0.113.11",
    "site3.test.": "203.0.113.12",
}
ZONE4.update(USER_SITES)
ZONE6 = {
    "target1.test.": "2001:db8:ffff::10",
    "target2.test.": "2001:db8:ffff::11",
    "target3.test.": "2001:db8:ffff::12",
}
PORTAL_BODY = b'<html><body>Redirecting to <a href="http://portal.example/">the portal</a></body></html>\n'
LOGIN_BODY = (
    b"<html><head><title>Hotspot login</title></head>"
    b'<body><form action="http://portal.example/login"><input name="user"></form></body></html>\n'
)
REASONS = {200: "OK", 204: "No Content", 302: "Found", 400: "Bad Request", 404: "Not Found"}
BULK_PATH = "/bulk"
BULK_CHUNK = bytes(64 * 1024)
BULK_CONGESTION_CONTROL = "cubic"
# A hung request re-reads the mode this often, and is dropped after HANG_LIMIT in any case.
HANG_POLL = 0.5
HANG_LIMIT = 600.0
# Bounded so a half-open client can neither pin a task forever nor feed us unlimited headers.
HEADER_TIMEOUT = 10.0
MAX_HEADER_LINES = 100
IDLE_TIMEOUT = 120.0  # seconds a kept-alive connection may wait for its next request (as common servers do)

_connection_ids = itertools.count(1)


def _append(path: Path, fields: list[str]) -> None:
    # One short write per event in append mode: the lab can count lines at any moment.
    with path.open("a", encoding="utf-8") as f:
        f.write("\t".join(fields) + "\n")


def _read_mode(state_dir: Path, name: str = "mode") -> str:
    try:
        return (state_dir / name).read_text(encoding="utf-8").strip() or "ok"
    except FileNotFoundError:
        return "ok"


def _response(status: int, body: bytes, extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Content-Length: {len(body)}",
        "Content-Type: text/html; charset=utf-8" if body.startswith(b"<") else "Content-Type: text/plain",
        *(f"{k}: {v}" for k, v in extra or []),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + body


async def _hang(state_dir: Path) -> NoReturn:
    """Hold a request unanswered while the mode stays `hang` (at most HANG_LIMIT); then drop the connection
    without an answer, as a hung server that comes back does: an answer after the fault would be a lie."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_LIMIT
    while _read_mode(state_dir) == "hang" and loop.time() < deadline:
        await asyncio.sleep(HANG_POLL)
    raise ConnectionAbortedError("hung request dropped")  # the caller closes the connection


async def _answer(state_dir: Path, path: str) -> bytes:
    mode = _read_mode(state_dir)
    if mode == "hang":
        await _hang(state_dir)
    if mode.startswith("slow:"):
        await asyncio.sleep(float(mode.removeprefix("slow:")))
    elif mode == "portal":
        return _response(302, PORTAL_BODY, [("Location", "http://portal.example/")])
    elif mode == "wrong-body":
        return _response(200, LOGIN_BODY)
    if path == "/generate_204":
        return _response(204, b"")
    if path == "/success.txt":
        return _response(200, b"success\n")
    return _response(404, b"not found\n")


def _bulk_params(query: str) -> tuple[int | None, str]:
    """(bytes to send or None for endless, congestion control) from /bulk's query string."""
    params = parse_qs(query)
    count = params.get("bytes", [""])[-1]
    cc = params.get("cc", [BULK_CONGESTION_CONTROL])[-1]
    return (int(count) if count.isdigit() else None), cc


async def _send_bulk(writer: asyncio.StreamWriter, method: str, query: str) -> None:
    count, cc = _bulk_params(query)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Needs CAP_NET_ADMIN for an algorithm not in tcp_allowed_congestion_control; the lab runs as root.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode("ascii", "replace"))
    headers = ["HTTP/1.1 200 OK", "Content-Type: application/octet-stream", "Connection: close"]
    if count is not None:
        headers.append(f"Content-Length: {count}")
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("ascii"))
    if method == "HEAD":
        return
    remaining = count
    while remaining is None or remaining > 0:
        chunk = BULK_CHUNK if remaining is None or remaining >= len(BULK_CHUNK) else BULK_CHUNK[:remaining]
        writer.write(chunk)
        await writer.drain()  # the pace of the link: blocks while the socket buffer is full
        if remaining is not None:
            remaining -= len(chunk)


def _idle_timeout(state_dir: Path) -> float:
    try:
        return float((state_dir / "idle-timeout").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return IDLE_TIMEOUT


def _says_close(response: bytes) -> bool:
    return b"\r\nconnection: close\r\n" in response.partition(b"\r\n\r\n")[0].lower() + b"\r\n"


def _closing(response: bytes) -> bytes:
    """The response saying `Connection: close` (once): the last on its connection."""
    if _says_close(response):
        return response
    head, blank, body = response.partition(b"\r\n\r\n")
    return head + b"\r\nConnection: close" + blank + body


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """A request's headers after its request line, names in lower case."""
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def _handle_http(state_dir: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    connection = str(next(_connection_ids))
    local = str(writer.get_extra_info("sockname")[0])
    peer = str(writer.get_extra_info("peername")[0])
    try:
        wait = HEADER_TIMEOUT  # a new connection's first request comes at once; later ones may idle
        while True:
            async with asyncio.timeout(wait):
                line = await reader.readline()
            if not line:  # the client closed
                break
            async with asyncio.timeout(HEADER_TIMEOUT):
                headers = await _read_headers(reader)
                length = headers.get("content-length", "0")
                if length.isdigit():
                    await reader.readexactly(int(length))  # a POST's body, so the next request starts clean
            parts = line.decode("latin-1").split()
            if len(parts) != 3:
                writer.write(_closing(_response(400, b"bad request\n")))
                break
            method, target, version = parts
            _append(
                state_dir / "http.log", [method, headers.get("host", "-"), target, local, peer, connection]
            )
            path, _, query = target.partition("?")
            if path == BULK_PATH:
                await _send_bulk(writer, method, query)
                break
            response = await _answer(state_dir, path)
            if method == "HEAD":
                response = response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
            unread_body = not length.isdigit() or "transfer-encoding" in headers
            if "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens) or unread_body:
                response = _closing(response)
            writer.write(response)
            await writer.drain()
            if _says_close(response):
                break
            wait = _idle_timeout(state_dir)
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def dns_reply(wire: bytes, *, servfail: bool = False) -> tuple[bytes, str, str] | None:
    """Answer one query from the fixed zone (`servfail`: answer SERVFAIL instead); None for anything that is
    not a parseable query."""
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError):  # garbage: a resolver just drops it
        return None
    if query.flags & dns.flags.QR or len(query.question) != 1:
        return None
    question = query.question[0]
    name = question.name.to_text().lower()
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    zone = ZONE4 if question.rdtype == dns.rdatatype.A else ZONE6
    if servfail:
        response.flags &= ~dns.flags.AA
        response.set_rcode(dns.rcode.SERVFAIL)
    elif name not in ZONE4:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and name in zone:
        response.answer.append(
            dns.rrset.from_text(question.name, TTL, dns.rdataclass.IN, question.rdtype, zone[name])
        )
    # Other types for a known name (AAAA for an IPv4-only site too): NOERROR with no answer (NODATA), like a
    # real authoritative server.
    return response.to_wire(), name, dns.rdatatype.to_text(question.rdtype)


class _DNSProtocol(asyncio.DatagramProtocol):
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not subclass DatagramTransport (only duck-types it).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = dns_reply(data, servfail=_read_mode(self.state_dir, "dns-mode") == "servfail")
        if reply is None or self.transport is None:
            return
        wire, name, rdtype = reply
        _append(self.state_dir / "dns.log", [name, rdtype, str(addr[0])])
        self.transport.sendto(wire, addr)


async def serve(state_dir: Path, resolver: str | None, http_port: int = 80, dns_port: int = 53) -> None:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(
        lambda r, w: _handle_http(state_dir, r, w),
        host=["0.0.0.0", "::"],  # asyncio sets IPV6_V6ONLY, so both binds coexist
        port=http_port,
        reuse_address=True,
    )
    if resolver is not None:
        family = socket.AF_INET6 if ":" in resolver else socket.AF_INET
        await loop.create_datagram_endpoint(
            lambda: _DNSProtocol(state_dir), local_addr=(resolver, dns_port), family=family
        )
    (state_dir / "ready").write_text("ready\n", encoding="utf-8")
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--resolver", help="address to serve DNS on (UDP 53); without it, HTTP only")
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--dns-port", type=int, default=53)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.state_dir, args.resolver, args.http_port, args.dns_port))


if __name__ == "__main__":
    main()
