"""Probe one uplink: HTTP connectivity checks whose every packet (DNS and TCP) leaves through its device.

How the packets are bound to the device and names resolved through the link's own nameservers is
nmfailover.transport's business; here: what to ask and how to judge the answer.

A proof (probe) looks the name up and opens a new connection: it proves DNS, TCP and HTTP together. Between
proofs two cheaper checks cover the same layers on fewer bytes: dns_check (one query to the link's own
nameservers) and KeptAliveProbe (one request on a connection kept open, to the address a proof connected to).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dns.message
import dns.rcode
import dns.rdatatype
import httpx

from nmfailover.transport import (
    BoundTransport,
    Link,
    LinkError,
    Progress,
    Reason,
    answer_addresses,
    blame,
    client,
    is_https,
    post_json,
    query_in_turn,
)

__all__ = [
    "DEFAULT_TARGETS",
    "MAX_BODY",
    "KeptAliveProbe",
    "Link",
    "LinkError",
    "ProbeResult",
    "Reason",
    "RoundResult",
    "Target",
    "check_url",
    "dns_check",
    "dns_target",
    "has_carrier",
    "parse_target",
    "post_json",
    "probe",
    "probe_round",
]

MAX_BODY = 64 * 1024


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
class ProbeResult:
    target: Target
    ok: bool
    reason: Reason
    latency: float  # seconds from start to verdict
    detail: str
    payload: int = 0  # bytes it sent and received above UDP and TCP
    unanswered: bool = False  # it failed because nothing came back in time (DNS or HTTP), not by an error
    address: str = ""  # the address that answered (or was last tried)
    ipv6: str = ""  # the target's first IPv6 address, where the uplink's IPv6 heartbeats go
    # Nameservers asked that gave no usable answer (silent, SERVFAIL, REFUSED, unreachable), in order.
    failed_nameservers: tuple[str, ...] = ()
    sent: int = 1  # requests it sent (an echo burst sends several)
    answered: int | None = None  # how many of them were answered; None: as ok says

    @property
    def answers(self) -> int:
        return (1 if self.ok else 0) if self.answered is None else self.answered


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
    def payload(self) -> int:
        return sum(r.payload for r in self.results)

    @property
    def portal(self) -> bool:
        """Every target answered, but not as expected: a captive portal (or a proxy) stands in the way."""
        return not self.ok and bool(self.results) and all(r.reason is Reason.UNEXPECTED for r in self.results)

    @property
    def hard_failure(self) -> bool:
        return bool(self.results) and all(r.reason is Reason.NO_DEVICE for r in self.results)


def _judge(target: Target, status: int, location: str | None, body: bytes, peer: str) -> tuple[Reason, str]:
    if 300 <= status < 400 and status != target.expect_status:
        where = f" -> {location}" if location else " without Location"
        return Reason.UNEXPECTED, f"HTTP {status}{where} (looks like a captive portal)"
    if status != target.expect_status:
        return Reason.UNEXPECTED, f"HTTP {status}, expected {target.expect_status}"
    if target.expect_body is not None and target.expect_body.encode() not in body:
        return Reason.UNEXPECTED, f"HTTP {status} but body lacks {target.expect_body!r} (captive portal?)"
    return Reason.OK, f"HTTP {status} from {peer}"


async def _get(
    http: httpx.AsyncClient, target: Target, progress: Progress, *, keep: bool
) -> tuple[Reason, str]:
    """GET the target and judge the answer; with `keep`, read all of an expected answer (up to MAX_BODY) so
    the connection can serve the next request."""
    async with http.stream("GET", target.url, headers={"Cache-Control": "no-cache"}) as response:
        body = b""
        if response.status_code == target.expect_status and (keep or target.expect_body is not None):
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= MAX_BODY:
                    break
        location = response.headers.get("location")
        return _judge(target, response.status_code, location, body[:MAX_BODY], progress.peer)


def _valid(target: Target) -> None:
    try:
        check_url(target.url)
    except ValueError as exc:
        raise LinkError(Reason.CONNECT, f"invalid URL {exc}") from None


def has_carrier(interface: str) -> bool:
    """False only when the kernel says the device has no carrier (absent, unreadable: let the probe tell)."""
    try:
        return Path(f"/sys/class/net/{interface}/carrier").read_text().strip() != "0"
    except (OSError, ValueError):
        return True


# What a check does through the link's device, given its name and the deadline (loop time): a verdict, or it
# raises what blame() explains.
_Step = Callable[[str, float], Awaitable[tuple[Reason, str]]]


async def _checked(
    link: Link, target: Target, timeout: float, progress: Progress, step: _Step
) -> ProbeResult:
    """Run `step` through link's device within `timeout`; never raises except CancelledError."""
    start = time.monotonic()
    try:
        if link.interface is None:
            raise LinkError(Reason.NO_DEVICE, "no device")
        if not has_carrier(link.interface):
            # The kernel keeps routes on a link that lost its carrier; probing it would only time out.
            raise LinkError(Reason.NO_DEVICE, f"{link.interface} has no carrier")
        deadline = asyncio.get_running_loop().time() + timeout
        async with asyncio.timeout_at(deadline):
            reason, detail = await step(link.interface, deadline)
    except Exception as exc:  # noqa: BLE001 - a probe reports; it must not take the daemon down
        reason, detail = blame(exc, progress, timeout)
        unanswered = isinstance(exc, TimeoutError) or (isinstance(exc, LinkError) and exc.unanswered)
    else:
        unanswered = False
    detail = " ".join(detail.split())[:200]
    return ProbeResult(
        target,
        reason is Reason.OK,
        reason,
        time.monotonic() - start,
        detail,
        progress.payload,
        unanswered or reason is Reason.TIMEOUT,
        progress.address,
        next((a for a in progress.resolved if ":" in a), ""),
        tuple(f.nameserver for f in progress.failures),
    )


async def probe(link: Link, target: Target, timeout: float) -> ProbeResult:
    """Check one target through link's device (a proof: DNS lookup, new connection); never raises except
    CancelledError."""
    progress = Progress()

    async def fetch(interface: str, deadline: float) -> tuple[Reason, str]:
        _valid(target)
        # A client and transport per proof: every round must really connect, never reuse a keep-alive from an
        # earlier round, and nothing stays open between rounds.
        async with client(BoundTransport(link, deadline, progress, https=is_https(target.url))) as http:
            return await _get(http, target, progress, keep=False)

    return await _checked(link, target, timeout, progress, fetch)


def dns_target(name: str) -> Target:
    """The key a DNS check's answer times are kept under, beside the HTTP targets'."""
    return Target(f"dns://{name}", 0)


def _alive(replies: Sequence[dns.message.Message]) -> bool:
    # A resolver that answers at all is alive, NXDOMAIN included: resolving a name that does not exist is the
    # proofs' verdict to give (on every uplink alike); asking other resolvers would not fix it.
    return any(r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) for r in replies)


async def dns_check(link: Link, name: str, timeout: float) -> ProbeResult:
    """Are link's own nameservers alive? One A query for `name`, to each in turn until one answers NOERROR or
    NXDOMAIN, every packet bound to its device (the time shared as a proof's lookup shares it).

    Reason.DNS when none did (`unanswered` when none sent anything back); `failed_nameservers` names those
    that did not, also when a later one did. Never raises except CancelledError.
    """
    progress = Progress(phase=Reason.DNS, host=name)

    async def ask(interface: str, deadline: float) -> tuple[Reason, str]:
        a_query = (dns.rdatatype.A,)
        nameserver, replies = await query_in_turn(
            interface, link.nameservers, name, a_query, _alive, progress, deadline
        )
        progress.address = nameserver
        answer = ", ".join(answer_addresses(replies)) or dns.rcode.to_text(replies[0].rcode())
        return Reason.OK, f"{name}: " + "; ".join([*map(str, progress.failures), f"{nameserver}: {answer}"])

    return await _checked(link, dns_target(name), timeout, progress, ask)


def _device_index(interface: str) -> int:
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise LinkError(Reason.NO_DEVICE, f"no device {interface}") from None


@dataclass(frozen=True)
class _Kept:
    """The client whose connection a KeptAliveProbe keeps open, and what that connection is to."""

    to: tuple[int, str, str]  # device index (a device re-created under its name is another), address, origin
    transport: BoundTransport
    http: httpx.AsyncClient


class KeptAliveProbe:
    """One uplink's HTTP check between proofs: a GET on an HTTP/1.1 connection kept open from one check to the
    next, so a check costs one request and its answer (no lookup, no handshake).

    The connection goes to the address a proof last connected to and is opened anew when there is none: the
    first check, the server closed it, the address, device or target's origin changed, or the last check
    failed. Answers are judged as a proof judges them. One check at a time; aclose() releases the connection.
    """

    def __init__(self) -> None:
        self._kept: _Kept | None = None

    async def check(self, link: Link, target: Target, address: str, timeout: float) -> ProbeResult:
        """GET target.url (its Host header, `address` connected to) through link's device; never raises except
        CancelledError."""
        progress = Progress()

        async def get(interface: str, deadline: float) -> tuple[Reason, str]:
            _valid(target)
            url = httpx.URL(target.url)
            to = (_device_index(interface), address, f"{url.scheme}://{url.netloc.decode()}")
            kept = self._kept
            if kept is not None and kept.to == to:
                kept.transport.restart(deadline, progress)
            else:
                kept = await self._open(link, target, to, progress, deadline)
            try:
                return await _get(kept.http, target, progress, keep=True)
            except (httpx.RemoteProtocolError, ConnectionError):
                if progress.connected:
                    raise
            # The kept connection was closed or reset under the request (the server's idle timeout may have
            # crossed it): that proves nothing about the path; a new connection does.
            kept = await self._open(link, target, to, progress, deadline)
            return await _get(kept.http, target, progress, keep=True)

        result: ProbeResult | None = None
        try:
            result = await _checked(link, target, timeout, progress, get)
            return result
        finally:
            if result is None or not result.ok:  # failed or cancelled: the next check starts afresh
                await self.aclose()

    async def _open(
        self, link: Link, target: Target, to: tuple[int, str, str], progress: Progress, deadline: float
    ) -> _Kept:
        await self.aclose()
        transport = BoundTransport(link, deadline, progress, https=is_https(target.url), address=to[1])
        self._kept = _Kept(to, transport, client(transport, keep_alive=True))
        return self._kept

    async def aclose(self) -> None:
        """Close the kept connection, if any."""
        kept, self._kept = self._kept, None
        if kept is not None:
            await kept.http.aclose()


class KeptAliveChecks:
    """Every uplink's kept-alive check, by the uplink's profile UUID: one connection each."""

    def __init__(self) -> None:
        self._probes: dict[str, KeptAliveProbe] = {}

    async def __call__(
        self, uuid: str, link: Link, target: Target, address: str, timeout: float
    ) -> RoundResult:
        result = await self._probes.setdefault(uuid, KeptAliveProbe()).check(link, target, address, timeout)
        return RoundResult(result.ok, (result,), 1)

    async def aclose(self) -> None:
        for probe in self._probes.values():
            await probe.aclose()


async def dns_round(link: Link, name: str, timeout: float) -> RoundResult:
    result = await dns_check(link, name, timeout)
    return RoundResult(result.ok, (result,), 1)


async def probe_round(link: Link, targets: Sequence[Target], timeout: float, needed: int) -> RoundResult:
    """Probe all targets concurrently; the round is ok when at least `needed` of them answered as expected."""
    results = tuple(await asyncio.gather(*(probe(link, t, timeout) for t in targets)))
    return RoundResult(sum(r.ok for r in results) >= needed, results, needed)
