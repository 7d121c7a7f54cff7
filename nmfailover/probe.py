"""Probe one uplink: HTTP connectivity checks whose every packet (DNS and TCP) leaves through its device.

How the packets are bound to the device and names resolved through the link's own nameservers is
nmfailover.transport's business; here: what to ask and how to judge the answer.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nmfailover.transport import BoundTransport, Link, LinkError, Progress, Reason, blame, client, post_json

__all__ = [
    "DEFAULT_TARGETS",
    "MAX_BODY",
    "Link",
    "LinkError",
    "ProbeResult",
    "Reason",
    "RoundResult",
    "Target",
    "check_url",
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


async def _fetch(link: Link, target: Target, progress: Progress, deadline: float) -> tuple[Reason, str]:
    # A client and transport per probe: every round must really connect, never reuse a keep-alive from an
    # earlier round, and nothing stays open between rounds.
    transport = BoundTransport(link, deadline, progress, https=target.url.lower().startswith("https:"))
    async with (
        client(transport) as http,
        http.stream("GET", target.url, headers={"Cache-Control": "no-cache"}) as response,
    ):
        body = b""
        if target.expect_body is not None and response.status_code == target.expect_status:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= MAX_BODY:
                    break
        location = response.headers.get("location")
        return _judge(target, response.status_code, location, body[:MAX_BODY], progress.peer)


def has_carrier(interface: str) -> bool:
    """False only when the kernel says the device has no carrier (absent, unreadable: let the probe tell)."""
    try:
        return Path(f"/sys/class/net/{interface}/carrier").read_text().strip() != "0"
    except (OSError, ValueError):
        return True


async def probe(link: Link, target: Target, timeout: float) -> ProbeResult:
    """Check one target through link's device; never raises except CancelledError."""
    start = time.monotonic()
    progress = Progress()
    try:
        if link.interface is None:
            raise LinkError(Reason.NO_DEVICE, "no device")
        if not has_carrier(link.interface):
            # The kernel keeps routes on a link that lost its carrier; probing it would only time out.
            raise LinkError(Reason.NO_DEVICE, f"{link.interface} has no carrier")
        try:
            check_url(target.url)
        except ValueError as exc:
            raise LinkError(Reason.CONNECT, f"invalid URL {exc}") from None
        deadline = asyncio.get_running_loop().time() + timeout
        async with asyncio.timeout_at(deadline):
            reason, detail = await _fetch(link, target, progress, deadline)
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
    )


async def probe_round(link: Link, targets: Sequence[Target], timeout: float, needed: int) -> RoundResult:
    """Probe all targets concurrently; the round is ok when at least `needed` of them answered as expected."""
    results = tuple(await asyncio.gather(*(probe(link, t, timeout) for t in targets)))
    return RoundResult(sum(r.ok for r in results) >= needed, results, needed)
