"""Probe one uplink: HTTP connectivity checks whose every packet (DNS and TCP) leaves through that uplink's device.

Binding happens with SO_BINDTODEVICE on a socket we create ourselves *before* connect/send: options applied
after connect (httpx/httpcore ``socket_options``) let the SYN follow the default route, so a probe of a
backup link would really test the primary one.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import httpcore

from nmfailover import __version__

DNS_PORT = 53  # module-level so tests can point the resolver at an unprivileged loopback port
DNS_SHARE = 0.9  # part of the probe's time that name resolution may use
DNS_STRAGGLER = 0.25  # seconds to wait for the other of A/AAAA once one has answered
MAX_BODY = 64 * 1024
_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}


class Reason(StrEnum):
    OK = "ok"
    NO_DEVICE = "no-device"
    DNS = "dns"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    TLS = "tls"
    HTTP = "http"
    UNEXPECTED = "unexpected-response"


@dataclass(frozen=True)
class Target:
    url: str
    expect_status: int
    expect_body: str | None = None  # substring the body must contain


# Plain HTTP on purpose: a captive portal shows itself by redirecting or rewriting these answers.
DEFAULT_TARGETS: tuple[Target, ...] = (
    Target("http://connectivitycheck.gstatic.com/generate_204", 204),
    Target("http://cp.cloudflare.com/generate_204", 204),
    Target("http://detectportal.firefox.com/success.txt", 200, "success"),
    Target("http://nmcheck.gnome.org/check_network_status.txt", 200, "NetworkManager is online"),
)


def check_url(url: str) -> None:
    """ValueError unless `url` is an http(s) URL with a host and a valid port."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url}: only http:// and https:// URLs are supported")
    if not parts.hostname:
        raise ValueError(f"{url}: no host in URL")
    try:
        _ = parts.port  # urlsplit only checks the port when asked
    except ValueError:
        raise ValueError(f"{url}: bad port") from None


def parse_target(spec: str) -> Target:
    """Parse "URL [STATUS [BODY-SUBSTRING...]]"; the body substring is the rest of the line."""
    words = spec.strip().split(maxsplit=2)
    if not words:
        raise ValueError("empty target: expected 'URL [STATUS [BODY-SUBSTRING]]'")
    url = words[0]
    check_url(url)
    if len(words) == 1:
        for known in DEFAULT_TARGETS:
            if known.url == url:
                return known
        return Target(url, 204 if urlsplit(url).path.endswith("generate_204") else 200)
    try:
        status = int(words[1])
    except ValueError:
        status = 0
    if not 100 <= status <= 599:
        raise ValueError(f"{url}: status {words[1]!r} is not an HTTP status (100..599)")
    return Target(url, status, words[2] if len(words) == 3 else None)


@dataclass(frozen=True)
class Link:
    interface: str | None  # None: the device is gone, report NO_DEVICE without sending anything
    nameservers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeResult:
    target: Target
    ok: bool
    reason: Reason
    latency: float  # seconds from start to verdict
    detail: str


@dataclass(frozen=True)
class RoundResult:
    ok: bool
    results: tuple[ProbeResult, ...]
    needed: int

    @property
    def summary(self) -> str:
        if not self.results:
            return "no targets probed"
        total = len(self.results)
        if self.ok:
            return f"{sum(r.ok for r in self.results)}/{total} targets answered"
        failed = collections.Counter(r.reason for r in self.results if not r.ok)
        reasons = ", ".join(str(reason) for reason, _ in failed.most_common())
        return f"{failed.total()}/{total} targets failed ({reasons})"

    @property
    def hard_failure(self) -> bool:
        return bool(self.results) and all(r.reason is Reason.NO_DEVICE for r in self.results)


class _Failure(Exception):
    """A verdict reached below httpcore; it passes through httpcore untouched."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Progress:
    """Where a probe is, so a timeout or error can be blamed on the right step."""

    phase: Reason = Reason.CONNECT  # DNS, CONNECT, TLS or HTTP
    host: str = ""
    peer: str = ""
    asked: list[str] = field(default_factory=list)  # nameservers queried


def _bound_socket(interface: str, family: int, kind: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENODEV, errno.EINVAL):  # EINVAL: name longer than IFNAMSIZ
            raise _Failure(Reason.NO_DEVICE, f"no device {interface}") from None
        raise
    return sock


def _why(exc: OSError) -> str:
    # asyncio's sock_connect puts "Connect call failed (...)" into strerror; the errno says it shorter.
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _sockaddr(address: str, port: int, interface: str) -> tuple[Any, ...]:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return (str(ip), port)
    # A link-local nameserver (common from RDNSS) is only reachable with a scope.
    scope = socket.if_nametoindex(interface) if ip.is_link_local else 0
    return (str(ip).split("%")[0], port, 0, scope)


async def _exchange(
    interface: str, nameserver: str, queries: Sequence[dns.message.Message], deadline: float
) -> list[dns.message.Message]:
    """Send all queries at once from one bound socket; return the replies that arrived in time, in query order."""
    loop = asyncio.get_running_loop()
    address = _sockaddr(nameserver, DNS_PORT, interface)
    family = socket.AF_INET if len(address) == 2 else socket.AF_INET6
    replies: dict[int, dns.message.Message] = {}
    with _bound_socket(interface, family, socket.SOCK_DGRAM) as sock:
        # Connected UDP: the kernel drops datagrams from anyone else and reports ICMP unreachable to us.
        await loop.sock_connect(sock, address)
        for query in queries:
            await loop.sock_sendall(sock, query.to_wire())
        try:
            while len(replies) < len(queries):
                # Some resolvers never answer AAAA: once one answer is in, wait only briefly for the rest.
                until = deadline if not replies else min(deadline, loop.time() + DNS_STRAGGLER)
                async with asyncio.timeout_at(until):
                    wire = await loop.sock_recv(sock, 65535)
                try:
                    reply = dns.message.from_wire(wire)
                except dns.exception.DNSException:
                    continue
                for i, query in enumerate(queries):
                    if query.is_response(reply):
                        replies[i] = reply
        except TimeoutError:
            if not replies:
                raise
    return [replies[i] for i in sorted(replies)]


async def _resolve(link: Link, progress: _Progress, deadline: float) -> list[str]:
    assert link.interface is not None
    host = progress.host
    if not link.nameservers:
        raise _Failure(Reason.DNS, f"no nameservers for {link.interface}")
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    for i, nameserver in enumerate(link.nameservers):
        progress.asked.append(nameserver)
        # A fair share of the time per nameserver, and DNS never eats the whole probe: a silent resolver
        # then gets its own verdict ("no answer from ...") instead of a generic timeout.
        budget = (deadline - loop.time()) * DNS_SHARE / (len(link.nameservers) - i)
        queries = [dns.message.make_query(host, t) for t in (dns.rdatatype.A, dns.rdatatype.AAAA)]
        try:
            replies = await _exchange(link.interface, nameserver, queries, loop.time() + budget)
        except TimeoutError:
            problems.append(f"no answer from {nameserver}")
            continue
        except OSError as exc:
            problems.append(f"{nameserver}: {_why(exc)}")
            continue
        except ValueError:
            problems.append(f"{nameserver}: not an IP address")
            continue
        if any(r.rcode() == dns.rcode.NXDOMAIN for r in replies):
            raise _Failure(Reason.DNS, f"{host}: NXDOMAIN from {nameserver}")
        # IPv4 first: the A query comes first; CNAME chains end in these rrsets too.
        addresses = [
            rd.to_text()
            for r in replies
            if r.rcode() == dns.rcode.NOERROR
            for rrset in r.answer
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for rd in rrset
        ]
        if addresses:
            return addresses
        errors = sorted({dns.rcode.to_text(r.rcode()) for r in replies} - {"NOERROR"})
        problems.append(f"{nameserver}: {', '.join(errors) or 'no A/AAAA records'}")
    raise _Failure(Reason.DNS, f"{host}: " + "; ".join(problems))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, progress: _Progress
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._progress = progress

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        async with asyncio.timeout(timeout):
            return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            self._writer.write(buffer)
            await self._writer.drain()

    async def aclose(self) -> None:
        # abort, not close: a TLS close waits for the peer's close_notify, which a bad uplink may never send.
        self._writer.transport.abort()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self._progress.phase = Reason.TLS
        async with asyncio.timeout(timeout):
            await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        self._progress.phase = Reason.HTTP
        return self

    def get_extra_info(self, info: str) -> Any:
        if info in ("ssl_object", "socket", "peername", "sockname"):
            return self._writer.get_extra_info(info)
        return None


class _BoundBackend(httpcore.AsyncNetworkBackend):
    """Resolves through the link's nameservers and connects from a socket bound to the link's device."""

    def __init__(self, link: Link, progress: _Progress, deadline: float) -> None:
        self._link = link
        self._progress = progress
        self._deadline = deadline

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        interface = self._link.interface
        assert interface is not None
        loop = asyncio.get_running_loop()
        host = host.strip("[]")
        self._progress.host = host
        if _is_ip(host):
            addresses = [host]
        else:
            self._progress.phase = Reason.DNS
            addresses = await _resolve(self._link, self._progress, self._deadline)
        self._progress.phase = Reason.CONNECT
        problems: list[str] = []
        timed_out = False
        for i, address in enumerate(addresses):
            sockaddr = _sockaddr(address, port, interface)
            self._progress.peer = f"[{address}]:{port}" if len(sockaddr) == 4 else f"{address}:{port}"
            sock = _bound_socket(
                interface, socket.AF_INET if len(sockaddr) == 2 else socket.AF_INET6, socket.SOCK_STREAM
            )
            last = i == len(addresses) - 1
            budget = (self._deadline - loop.time()) / (len(addresses) - i)
            try:
                async with asyncio.timeout(None if last else budget):
                    await loop.sock_connect(sock, sockaddr)
                reader, writer = await asyncio.open_connection(sock=sock)
            except TimeoutError:
                sock.close()
                problems.append(f"no answer from {self._progress.peer}")
                timed_out = True
                continue
            except OSError as exc:
                sock.close()
                if exc.errno in _CONNECT_ERRNOS or not last:
                    problems.append(f"{self._progress.peer}: {_why(exc)}")
                    continue
                raise
            except BaseException:
                sock.close()
                raise
            self._progress.phase = Reason.HTTP
            return _Stream(reader, writer, self._progress)
        raise _Failure(Reason.TIMEOUT if timed_out else Reason.CONNECT, "; ".join(problems))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_ssl_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    # Loading the CA store takes milliseconds of blocking work; do it once.
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def bound_pool(link: Link, deadline: float, https: bool) -> httpcore.AsyncConnectionPool:
    """A connection pool whose every connection resolves and connects through link's device (webhooks)."""
    return httpcore.AsyncConnectionPool(network_backend=_BoundBackend(link, _Progress(), deadline),
                                        ssl_context=_tls() if https else None, retries=0)


def _judge(target: Target, status: int, location: str | None, body: bytes, peer: str) -> tuple[Reason, str]:
    if 300 <= status < 400 and status != target.expect_status:
        where = f" -> {location}" if location else " without Location"
        return Reason.UNEXPECTED, f"HTTP {status}{where} (looks like a captive portal)"
    if status != target.expect_status:
        return Reason.UNEXPECTED, f"HTTP {status}, expected {target.expect_status}"
    if target.expect_body is not None and target.expect_body.encode() not in body:
        return Reason.UNEXPECTED, f"HTTP {status} but body lacks {target.expect_body!r} (captive portal?)"
    return Reason.OK, f"HTTP {status} from {peer}"


def _blame(exc: BaseException, progress: _Progress, timeout: float) -> tuple[Reason, str]:
    if isinstance(exc, _Failure):
        return exc.reason, exc.detail
    if isinstance(exc, TimeoutError):
        if progress.phase is Reason.DNS:
            return Reason.DNS, f"{progress.host}: no answer from {', '.join(progress.asked)}"
        step = {Reason.CONNECT: "connecting to", Reason.TLS: "in TLS handshake with"}.get(
            progress.phase, "waiting for HTTP response from"
        )
        return Reason.TIMEOUT, f"timed out after {timeout:g} s {step} {progress.peer}"
    if isinstance(exc, ssl.SSLError):
        why = exc.reason or str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            why += f" ({exc.verify_message})"
        return Reason.TLS, f"TLS with {progress.peer} failed: {why}"
    if isinstance(exc, OSError) and exc.errno == errno.ENODEV:
        return Reason.NO_DEVICE, str(exc)
    if isinstance(exc, OSError) and exc.errno in _CONNECT_ERRNOS:
        return Reason.CONNECT, f"{progress.peer}: {_why(exc)}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        text = _why(exc)
    if progress.phase is Reason.TLS:
        return Reason.TLS, f"TLS handshake with {progress.peer} failed: {text}"
    if isinstance(exc, httpcore.ProtocolError) or progress.phase is Reason.HTTP:
        return Reason.HTTP, f"{progress.peer}: {text}"
    return progress.phase, text


async def _fetch(link: Link, target: Target, progress: _Progress, deadline: float) -> tuple[Reason, str]:
    headers: dict[bytes | str, bytes | str] = {
        "User-Agent": f"nmfailover/{__version__}",
        "Cache-Control": "no-cache",
        "Connection": "close",
    }
    # A pool per probe: every round must really connect, never reuse a keep-alive from an earlier round.
    backend = _BoundBackend(link, progress, deadline)
    tls = _tls() if target.url.lower().startswith("https:") else None
    pool = httpcore.AsyncConnectionPool(network_backend=backend, ssl_context=tls, retries=0)
    async with pool, pool.stream("GET", target.url, headers=headers) as response:
        body = b""
        if target.expect_body is not None and response.status == target.expect_status:
            async for chunk in response.aiter_stream():
                body += chunk
                if len(body) >= MAX_BODY:
                    break
        location = next((v.decode("latin-1") for k, v in response.headers if k.lower() == b"location"), None)
        return _judge(target, response.status, location, body[:MAX_BODY], progress.peer)


def has_carrier(interface: str) -> bool:
    """False only when the kernel says the device has no carrier (absent or unreadable: let the probe tell)."""
    try:
        return Path(f"/sys/class/net/{interface}/carrier").read_text().strip() != "0"
    except (OSError, ValueError):
        return True


async def probe(link: Link, target: Target, timeout: float) -> ProbeResult:
    """Check one target through link's device; never raises except CancelledError."""
    start = time.monotonic()
    progress = _Progress()
    try:
        if link.interface is None:
            raise _Failure(Reason.NO_DEVICE, "no device")
        if not has_carrier(link.interface):
            # The kernel keeps routes on a link that lost its carrier; probing it would only time out.
            raise _Failure(Reason.NO_DEVICE, f"{link.interface} has no carrier")
        try:
            check_url(target.url)
        except ValueError as exc:
            raise _Failure(Reason.CONNECT, f"invalid URL {exc}") from None
        deadline = asyncio.get_running_loop().time() + timeout
        async with asyncio.timeout_at(deadline):
            reason, detail = await _fetch(link, target, progress, deadline)
    except Exception as exc:  # noqa: BLE001 - a probe reports; it must not take the daemon down
        reason, detail = _blame(exc, progress, timeout)
    detail = " ".join(detail.split())[:200]
    return ProbeResult(target, reason is Reason.OK, reason, time.monotonic() - start, detail)


async def probe_round(link: Link, targets: Sequence[Target], timeout: float, needed: int) -> RoundResult:
    """Probe all targets concurrently; the round is ok when at least `needed` of them answered as expected."""
    results = tuple(await asyncio.gather(*(probe(link, t, timeout) for t in targets)))
    return RoundResult(sum(r.ok for r in results) >= needed, results, needed)
