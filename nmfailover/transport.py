"""HTTP through one uplink: an httpx transport whose every packet, DNS and TCP, leaves through its device.

Binding happens with SO_BINDTODEVICE on a socket we create ourselves *before* connect/send: options applied
after connect (httpx/httpcore ``socket_options``) let the SYN follow the default route, so a probe of a
backup link would really test the primary one. Names are resolved through the link's own nameservers, never
the system resolver, whose answers come over the default route.

Layering, as in httpx's own AsyncHTTPTransport: httpx.AsyncClient -> BoundTransport -> httpcore pool ->
our network backend. What the backend decides (LinkError), TimeoutError, OSError and ssl.SSLError pass
through every layer untouched, so that blame() can say which step failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import httpcore
import httpx

from nmfailover import __version__
from nmfailover.errors import NmfailoverError

DNS_PORT = 53  # module-level so tests can point the resolver at an unprivileged loopback port
DNS_SHARE = 0.9  # part of the probe's time that name resolution may use
DNS_STRAGGLER = 0.25  # seconds to wait for the other of A/AAAA once one has answered
_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}
_SILENT = "no answer"


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
class Link:
    interface: str | None  # None: the device is gone, report NO_DEVICE without sending anything
    nameservers: tuple[str, ...] = ()


class LinkError(NmfailoverError):
    """A request could not be made through the link; `detail` is one line for the log."""

    def __init__(self, reason: Reason, detail: str, *, unanswered: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.unanswered = unanswered  # nothing came back at all (as opposed to a refusal or an error)


@dataclass(frozen=True)
class NameserverFailure:
    nameserver: str
    problem: str  # what it did instead of answering usefully: "no answer", "SERVFAIL", "connection refused"

    @property
    def silent(self) -> bool:
        return self.problem == _SILENT

    def __str__(self) -> str:
        return f"no answer from {self.nameserver}" if self.silent else f"{self.nameserver}: {self.problem}"


@dataclass
class Progress:
    """Where a request is, so a timeout or error can be blamed on the right step."""

    phase: Reason = Reason.CONNECT  # DNS, CONNECT, TLS or HTTP
    host: str = ""
    peer: str = ""  # address:port, as messages show it
    address: str = ""  # the peer's bare address: where a heartbeat goes
    resolved: list[str] = field(default_factory=list)  # every address the name had, IPv4 first
    asked: list[str] = field(default_factory=list)  # nameservers queried
    failures: list[NameserverFailure] = field(default_factory=list)  # the asked that gave no usable answer
    payload: int = 0  # bytes sent and received above UDP and TCP (DNS datagrams and the HTTP stream)
    connected: bool = False  # this request went to a new connection (False: over one kept open)


def _bound_socket(interface: str, family: int, kind: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENODEV, errno.EINVAL):  # EINVAL: name longer than IFNAMSIZ
            raise LinkError(Reason.NO_DEVICE, f"no device {interface}") from None
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
    interface: str,
    nameserver: str,
    queries: Sequence[dns.message.Message],
    deadline: float,
    progress: Progress,
) -> list[dns.message.Message]:
    """Send all queries at once from one bound socket; the replies that arrived in time, in query order."""
    loop = asyncio.get_running_loop()
    address = _sockaddr(nameserver, DNS_PORT, interface)
    family = socket.AF_INET if len(address) == 2 else socket.AF_INET6
    replies: dict[int, dns.message.Message] = {}
    with _bound_socket(interface, family, socket.SOCK_DGRAM) as sock:
        # Connected UDP: the kernel drops datagrams from anyone else and reports ICMP unreachable to us.
        await loop.sock_connect(sock, address)
        for query in queries:
            wire = query.to_wire()
            await loop.sock_sendall(sock, wire)
            progress.payload += len(wire)
        try:
            while len(replies) < len(queries):
                # Some resolvers never answer AAAA: once one answer is in, wait only briefly for the rest.
                until = deadline if not replies else min(deadline, loop.time() + DNS_STRAGGLER)
                async with asyncio.timeout_at(until):
                    wire = await loop.sock_recv(sock, 65535)
                progress.payload += len(wire)
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


def _has_rcode(rcode: dns.rcode.Rcode, replies: Sequence[dns.message.Message]) -> bool:
    return any(r.rcode() == rcode for r in replies)


def answer_addresses(replies: Sequence[dns.message.Message]) -> list[str]:
    """The A and AAAA addresses in NOERROR replies, in reply order (CNAME chains end in these rrsets too)."""
    return [
        rd.to_text()
        for r in replies
        if r.rcode() == dns.rcode.NOERROR
        for rrset in r.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rd in rrset
    ]


async def query_in_turn(
    interface: str,
    nameservers: Sequence[str],
    name: str,
    rdtypes: Sequence[dns.rdatatype.RdataType],
    settles: Callable[[Sequence[dns.message.Message]], bool],
    progress: Progress,
    deadline: float,
) -> tuple[str, list[dns.message.Message]]:
    """Ask the nameservers in turn, every packet bound to `interface`, until one's replies settle the
    question: that nameserver and its replies (in `rdtypes` order, those that came in time).

    The others asked are in progress.failures. Raises LinkError(DNS) when none settled it, unanswered when
    none answered at all.
    """
    if not nameservers:
        raise LinkError(Reason.DNS, f"no nameservers for {interface}")
    loop = asyncio.get_running_loop()
    first = len(progress.failures)
    for i, nameserver in enumerate(nameservers):
        progress.asked.append(nameserver)
        # A fair share of the time per nameserver, and DNS never eats the whole probe: a silent resolver
        # then gets its own verdict ("no answer from ...") instead of a generic timeout.
        budget = (deadline - loop.time()) * DNS_SHARE / (len(nameservers) - i)
        queries = [dns.message.make_query(name, t) for t in rdtypes]
        try:
            replies = await _exchange(interface, nameserver, queries, loop.time() + budget, progress)
        except TimeoutError:
            problem = _SILENT
        except asyncio.CancelledError:
            # The caller's deadline struck first (a stalled loop fires both timers at once): silent too.
            progress.failures.append(NameserverFailure(nameserver, _SILENT))
            raise
        except OSError as exc:
            problem = _why(exc)
        except ValueError:
            problem = "not an IP address"
        else:
            if settles(replies):
                return nameserver, replies
            errors = sorted({dns.rcode.to_text(r.rcode()) for r in replies} - {"NOERROR"})
            types = "/".join(dns.rdatatype.to_text(t) for t in rdtypes)
            problem = ", ".join(errors) or f"no {types} records"
        progress.failures.append(NameserverFailure(nameserver, problem))
    failures = progress.failures[first:]
    raise LinkError(
        Reason.DNS, f"{name}: " + "; ".join(map(str, failures)), unanswered=all(f.silent for f in failures)
    )


async def _resolve(
    interface: str, nameservers: Sequence[str], progress: Progress, deadline: float
) -> list[str]:
    host = progress.host

    def settles(replies: Sequence[dns.message.Message]) -> bool:
        return bool(answer_addresses(replies)) or _has_rcode(dns.rcode.NXDOMAIN, replies)

    # IPv4 first: the A query comes first.
    rdtypes = (dns.rdatatype.A, dns.rdatatype.AAAA)
    nameserver, replies = await query_in_turn(
        interface, nameservers, host, rdtypes, settles, progress, deadline
    )
    if _has_rcode(dns.rcode.NXDOMAIN, replies):
        raise LinkError(Reason.DNS, f"{host}: NXDOMAIN from {nameserver}")
    return answer_addresses(replies)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: _BoundBackend
    ) -> None:
        self._reader = reader
        self._writer = writer
        # The backend's progress, not the one at connect time: a connection kept open serves later requests.
        self._backend = backend

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        async with asyncio.timeout(timeout):
            data = await self._reader.read(max_bytes)
        self._backend.progress.payload += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            self._writer.write(buffer)
            await self._writer.drain()
        self._backend.progress.payload += len(buffer)

    async def aclose(self) -> None:
        # abort, not close: a TLS close waits for the peer's close_notify, which a bad uplink may never send.
        self._writer.transport.abort()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self._backend.progress.phase = Reason.TLS
        async with asyncio.timeout(timeout):
            await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        self._backend.progress.phase = Reason.HTTP
        return self

    def get_extra_info(self, info: str) -> Any:
        if info in ("ssl_object", "socket", "peername", "sockname"):
            return self._writer.get_extra_info(info)
        if info == "is_readable":
            # httpcore asks before reusing an idle connection: anything arriving on it (the server's close,
            # a reset) means it is finished. The socket itself reads empty: asyncio drains it as data comes.
            return self._reader.at_eof() or self._reader.exception() is not None
        return None


class _BoundBackend(httpcore.AsyncNetworkBackend):
    """Resolves through the link's nameservers (or takes the one address given) and connects from a socket
    bound to the link's device. `progress` and `deadline` are the current request's."""

    def __init__(self, link: Link, progress: Progress, deadline: float, address: str | None) -> None:
        self._link = link
        self._address = address
        self.progress = progress
        self.deadline = deadline

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        interface = self._link.interface
        if interface is None:
            raise LinkError(Reason.NO_DEVICE, "no device")
        loop = asyncio.get_running_loop()
        progress = self.progress
        host = host.strip("[]")
        progress.host = host
        if self._address is not None:
            addresses = [self._address]
        elif _is_ip(host):
            addresses = [host]
        else:
            progress.phase = Reason.DNS
            addresses = await _resolve(interface, self._link.nameservers, progress, self.deadline)
        progress.resolved = addresses
        progress.phase = Reason.CONNECT
        progress.connected = True
        problems: list[str] = []
        timed_out = False
        for i, address in enumerate(addresses):
            sockaddr = _sockaddr(address, port, interface)
            progress.peer = f"[{address}]:{port}" if len(sockaddr) == 4 else f"{address}:{port}"
            progress.address = address
            sock = _bound_socket(
                interface, socket.AF_INET if len(sockaddr) == 2 else socket.AF_INET6, socket.SOCK_STREAM
            )
            last = i == len(addresses) - 1
            budget = (self.deadline - loop.time()) / (len(addresses) - i)
            try:
                async with asyncio.timeout(None if last else budget):
                    await loop.sock_connect(sock, sockaddr)
                reader, writer = await asyncio.open_connection(sock=sock)
            except TimeoutError:
                sock.close()
                problems.append(f"no answer from {progress.peer}")
                timed_out = True
                continue
            except OSError as exc:
                sock.close()
                if exc.errno in _CONNECT_ERRNOS or not last:
                    problems.append(f"{progress.peer}: {_why(exc)}")
                    continue
                raise
            except BaseException:
                sock.close()
                raise
            progress.phase = Reason.HTTP
            return _Stream(reader, writer, self)
        raise LinkError(Reason.TIMEOUT if timed_out else Reason.CONNECT, "; ".join(problems))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_ssl_context: ssl.SSLContext | None = None


def is_https(url: str) -> bool:
    return url.lower().startswith("https:")


def _tls() -> ssl.SSLContext:
    # Loading the CA store takes milliseconds of blocking work; do it once.
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


# httpcore raises its own errors only for what it parses (a garbled or missing response) or refuses; users
# of an httpx transport expect httpx's. Most specific first.
_HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _HTTPCORE_ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class BoundTransport(httpx.AsyncBaseTransport):
    """Every connection resolved through link's nameservers and connected from a socket bound to its device.

    `deadline` (loop time) shares the time between nameservers and addresses; the caller enforces it.
    `progress` follows the requests' steps for blame(); give each transport its own. With `address`, every
    connection goes there, whatever the URL's host (which still names the Host header and TLS): no lookup.
    """

    def __init__(
        self,
        link: Link,
        deadline: float,
        progress: Progress | None = None,
        *,
        https: bool = True,
        address: str | None = None,
    ) -> None:
        self._backend = _BoundBackend(link, Progress() if progress is None else progress, deadline, address)
        # The CA store costs megabytes of memory for good: only load it once an https URL needs it.
        tls = _tls() if https else None
        self._pool = httpcore.AsyncConnectionPool(network_backend=self._backend, ssl_context=tls, retries=0)

    def restart(self, deadline: float, progress: Progress) -> None:
        """The next request's deadline and progress, on a transport kept across requests.

        The request starts at the HTTP step with the open connection's peer: where it will go unless that
        connection turns out closed (then connecting starts over and says so in `progress`).
        """
        last = self._backend.progress
        progress.phase, progress.peer, progress.address = Reason.HTTP, last.peer, last.address
        self._backend.progress, self._backend.deadline = progress, deadline

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def client(transport: httpx.AsyncBaseTransport, *, keep_alive: bool = False) -> httpx.AsyncClient:
    """An httpx client through `transport`: for one exchange, then closed (nothing stays open between uses),
    or with `keep_alive` for several over one connection kept open."""
    connection = {} if keep_alive else {"Connection": "close"}
    return httpx.AsyncClient(
        transport=transport,
        # An environment proxy would carry the request over the default route (httpx already skips them
        # once given a transport; this keeps it so) and no .netrc credentials belong on a probe.
        trust_env=False,
        follow_redirects=False,  # a redirect is the answer: it is how a captive portal shows itself
        timeout=None,  # the caller's one deadline covers every step; see BoundTransport
        headers={
            "User-Agent": f"nmfailover/{__version__}",
            **connection,
            # Bodies are read up to a byte cap; compressed, that cap would bound nothing we hold in memory.
            "Accept-Encoding": "identity",
        },
    )


def blame(exc: BaseException, progress: Progress, timeout: float) -> tuple[Reason, str]:
    """The failed step and a line for the log, from what a request through a BoundTransport raised."""
    if isinstance(exc, LinkError):
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
    if isinstance(exc, httpx.ProtocolError) or progress.phase is Reason.HTTP:
        return Reason.HTTP, f"{progress.peer}: {text}"
    return progress.phase, text


async def post_json(link: Link, url: str, body: bytes, timeout: float) -> int:
    """POST `body` as JSON through link's device; the HTTP status, without waiting for the response's body.

    Raises TimeoutError once `timeout` seconds have passed, LinkError (its str: one line for the log) on any
    other failure.
    """
    progress = Progress()
    deadline = asyncio.get_running_loop().time() + timeout
    headers = {"Content-Type": "application/json"}
    try:
        async with (
            asyncio.timeout_at(deadline),
            client(BoundTransport(link, deadline, progress, https=is_https(url))) as http,
            http.stream("POST", url, content=body, headers=headers) as response,
        ):
            return response.status_code
    except (TimeoutError, LinkError):
        raise
    except Exception as exc:
        reason, detail = blame(exc, progress, timeout)
        raise LinkError(reason, " ".join(detail.split())) from exc
