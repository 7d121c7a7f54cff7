"""ICMP echo through one uplink's device: the heartbeat between HTTP probes.

An echo request to the address a probe target answered from proves the same path open for 84 bytes on
the wire, a seventh of an HTTP probe with its DNS lookup; the HTTP probes still run now and then to prove
DNS, HTTP and the absence of a captive portal (nmfailover.engine.probing decides when).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import os
import socket
import struct
import time

from .probe import ProbeResult, Reason, RoundResult, Target, has_carrier

ICMP_HEADER = 8
# (echo request, echo reply, errors that quote our request) per family.
_V4 = (8, 0, {3: "destination unreachable", 11: "time exceeded"})
_V6 = (128, 129, {1: "destination unreachable", 3: "time exceeded"})

_sequence = itertools.count(1)


def echo_target(address: str) -> Target:
    """The key a heartbeat's answer times are kept under, beside the HTTP targets'."""
    return Target(f"icmp://{address}", 0)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _request(v6: bool, ident: int, seq: int) -> bytes:
    kind = _V6[0] if v6 else _V4[0]
    # ICMPv6 raw sockets have their checksum filled in by the kernel (it needs the pseudo-header).
    checksum = 0 if v6 else _checksum(struct.pack("!BBHHH", kind, 0, 0, ident, seq))
    return struct.pack("!BBHHH", kind, 0, checksum, ident, seq)


def _verdict(packet: bytes, v6: bool, ident: int, seq: int) -> str | None:
    """ "" for our reply, an error text for an ICMP error quoting our request, None for anything else.

    IPv4 raw sockets hand over the IP header, IPv6 ones do not.
    """
    if not v6:
        if len(packet) < 20:
            return None
        packet = packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) < ICMP_HEADER:
        return None
    kind, code = packet[0], packet[1]
    reply, errors = (_V6[1], _V6[2]) if v6 else (_V4[1], _V4[2])
    if kind == reply:
        return "" if struct.unpack("!HH", packet[4:8]) == (ident, seq) else None
    if kind in errors:
        quoted = packet[ICMP_HEADER:]
        if not v6:
            if len(quoted) < 20:
                return None
            quoted = quoted[(quoted[0] & 0x0F) * 4 :]
        else:
            quoted = quoted[40:]
        if len(quoted) >= ICMP_HEADER and struct.unpack("!HH", quoted[4:8]) == (ident, seq):
            return f"{errors[kind]} (code {code})"
    return None


async def _exchange(
    interface: str, address: str, v6: bool, deadline: float, count: int
) -> tuple[str, float, int, int]:
    """Send `count` echo requests across the first half of the time left until `deadline` and wait for
    their replies: ("", the first one's round-trip time, how many were answered, how many were sent), or
    (why not, 0, 0, sent) for an ICMP error. Raises OSError, and TimeoutError when nothing was answered by
    the deadline."""
    loop = asyncio.get_running_loop()
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    sent: dict[int, float] = {}
    answered: set[int] = set()
    first = 0.0
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        spacing = (deadline - loop.time()) / (2 * count)

        async def send_one() -> None:
            seq, at = next(_sequence) & 0xFFFF, loop.time()
            # A full socket buffer must not hold the burst past its deadline.
            async with asyncio.timeout_at(deadline):
                await loop.sock_sendto(sock, _request(v6, ident, seq), (address, 0))
            sent[seq] = at

        async def send_rest() -> None:
            for _ in range(count - 1):
                await asyncio.sleep(spacing)
                try:
                    await send_one()
                except TimeoutError:
                    return  # what could not be sent in time is not counted

        def take(packet: bytes, source: tuple[str, int]) -> str:
            """Note our reply in `packet`; an ICMP error quoting our request before any reply, its text."""
            nonlocal first
            # A raw socket sees every ICMP message on the device (a concurrent `ping`'s too): the identifier
            # and sequence number tell ours apart.
            for seq, at in sent.items():
                verdict = _verdict(packet, v6, ident, seq)
                if verdict == "" and source[0] == address and seq not in answered:
                    first = first or loop.time() - at
                    answered.add(seq)
                elif verdict and not answered:
                    return verdict
            return ""

        await send_one()  # an unreachable network fails here, at once
        sender = asyncio.create_task(send_rest())
        try:
            # A burst counts its answers (how much is lost is the evidence), so it waits for all of them.
            while len(answered) < count:
                try:
                    async with asyncio.timeout_at(deadline):
                        packet, source = await loop.sock_recvfrom(sock, 1500)
                except TimeoutError:
                    # Replies already waiting in the socket count: on a busy machine the deadline can fire
                    # before the loop has read them, and our lateness is not the path's loss.
                    for packet, source in _waiting(sock):
                        if why := take(packet, source):
                            return why, 0.0, 0, len(sent)
                    if answered:
                        break
                    raise
                if sender.done():
                    sender.result()  # a send that failed fails the heartbeat
                if why := take(packet, source):
                    return why, 0.0, 0, len(sent)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    # Requests a busy machine sent too late, or never, are not counted as lost.
    return "", first, len(answered), len(sent)


def _waiting(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    """What the socket holds already, without waiting."""
    packets = []
    while True:
        try:
            packets.append(sock.recvfrom(1500))
        except (BlockingIOError, InterruptedError):
            return packets


async def echo(interface: str | None, address: str, timeout: float, count: int = 1) -> ProbeResult:
    """A heartbeat of `count` echo requests to `address` through `interface`, answered when any of them is;
    never raises except CancelledError."""
    target = echo_target(address)
    start = time.monotonic()
    v6 = ipaddress.ip_address(address).version == 6
    unanswered, latency, answers = False, 0.0, 0
    if interface is None:
        reason, detail = Reason.NO_DEVICE, "no device"
    elif not has_carrier(interface):
        reason, detail = Reason.NO_DEVICE, f"{interface} has no carrier"
    else:
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            why, latency, answers, count = await _exchange(interface, address, v6, deadline, count)
        except TimeoutError:
            unanswered = True
            reason, detail = Reason.TIMEOUT, f"no echo reply from {address} in {timeout:g} s ({count} sent)"
        except OSError as exc:
            reason = Reason.NO_DEVICE if exc.errno == errno.ENODEV else Reason.CONNECT
            detail = f"echo to {address}: {exc.strerror or exc}"
        else:
            reason = Reason.CONNECT if why else Reason.OK
            replies = f"{answers}/{count} echo replies" if count > 1 else "echo reply"
            detail = f"{why} for echo to {address}" if why else f"{replies} from {address}"
    if reason is not Reason.OK:
        latency = time.monotonic() - start
    sent = count * ICMP_HEADER if reason is not Reason.NO_DEVICE else 0
    return ProbeResult(
        target,
        reason is Reason.OK,
        reason,
        latency,
        detail,
        sent + ICMP_HEADER * answers,
        unanswered,
        address,
        sent=count,
        answered=answers,
    )


async def echo_round(interface: str | None, address: str, timeout: float, count: int) -> RoundResult:
    result = await echo(interface, address, timeout, count)
    return RoundResult(result.ok, (result,), 1)


def echo_available() -> str | None:
    """Why heartbeats cannot be sent here (no CAP_NET_RAW), or None."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except OSError as exc:
        return f"cannot open a raw ICMP socket ({exc.strerror or exc}); needs CAP_NET_RAW"
    return None
