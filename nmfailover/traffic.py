"""The user's own traffic as evidence: a passive watch of one uplink's device.

While an uplink carries traffic, that traffic shows an outage at no probe cost: connection attempts (SYNs)
left unanswered or refused, resets, DNS queries left unanswered or answered SERVFAIL/REFUSED. A packet
socket bound to the device sees both directions; a classic BPF filter keeps everything else (the data
itself) in the kernel, so a saturating download costs the daemon nothing. Three layers:

- `parse_packet`: bytes (from the IP header on, as a SOCK_DGRAM packet socket hands them over) to a
  `Packet`, pure.
- `TrafficTracker`: matches questions with answers (SYN with SYN-ACK or RST, DNS query with answer) and
  counts outcomes, pure: time is a parameter, tables are bounded.
- `TrafficWatch`: the socket, the event loop and the device's coming and going; `counters()` gives a
  `TrafficCounters` snapshot that a consumer compares with an earlier one, and `notify()` is called the
  moment a trouble counter grows.

Seen, not seen: TCP over IPv4 and IPv6 without extension headers, DNS over UDP port 53. An ICMP error
answering a SYN, DNS over TCP or TLS, and QUIC are not looked at (their connection attempts are not SYNs).
"""

from __future__ import annotations

import array
import asyncio
import errno
import math
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from loguru import logger

__all__ = [
    "DNS_PATIENCE",
    "FILTER_CODE",
    "NO_LINK",
    "PATIENCE",
    "RECHECK_INTERVAL",
    "REOPEN_INTERVAL",
    "RETRY_MEMORY",
    "SNAPLEN",
    "TABLE_CAPACITY",
    "TICK",
    "LinkStats",
    "Packet",
    "PacketKind",
    "TrafficCounters",
    "TrafficTracker",
    "TrafficWatch",
    "assemble",
    "parse_packet",
]

# A SYN not answered within this many seconds counts as unanswered. Linux resends an unanswered SYN after
# 1 s: half a second more lets that second SYN be answered over a slow link before it counts.
PATIENCE: float = 1.5
# A DNS query not answered within this many seconds counts as unanswered (glibc resends after 5 s; a
# resolver recursing on a cold cache rarely needs more than one or two).
DNS_PATIENCE: float = 2.0
# Pending entries expire on this grid: notify() comes at most this much after a patience runs out, and the
# watch wakes at most this often, and only while something is pending.
TICK: float = 0.1
# Seconds between checks that the watched device is still the one of that name. A device deleted while up
# is noticed at once (the socket says so); only one deleted while down waits for this check.
RECHECK_INTERVAL: float = 5.0
# Seconds between attempts to open a device that is not there (yet): how soon one plugged in is watched.
REOPEN_INTERVAL: float = 1.0
# Pending connection attempts and pending DNS queries remembered, each: the oldest goes first, so a SYN
# flood cannot grow memory. As many of those already counted unanswered are remembered besides.
TABLE_CAPACITY: int = 1024
# How long after its first SYN an attempt counted unanswered is remembered, so that its retransmissions are
# not counted as new attempts: Linux gives up after 127 s of retransmitted SYNs (tcp_syn_retries = 6).
RETRY_MEMORY: float = 130.0

# Bytes of each packet the filter lets through: the largest IPv4 header (60) plus a TCP header up to its
# flags, or a UDP header and a DNS header (8 + 12), with room to spare.
SNAPLEN = 96
# Packets read per wake-up at most, so a burst cannot hold up the event loop.
_BATCH = 256

_DNS_PORT = 53
_DNS_HEADER = 12
_RCODE_SERVFAIL = 2
_RCODE_REFUSED = 5
_TCP_SYN = 0x02
_TCP_RST = 0x04
_TCP_ACK = 0x10
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17

# Linux ABI numbers Python does not export (checked against linux/if_ether.h, asm-generic/socket.h,
# linux/filter.h and linux/bpf_common.h).
_ETH_P_ALL = 0x0003
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_SO_ATTACH_FILTER = 26
# Each packet's arrival (or departure) time from the kernel, as struct __kernel_timespec {s64 sec; s64 nsec}
# on every architecture (the _NEW variant, Linux 5.1): the read time would be late whenever the loop is.
_SO_TIMESTAMPNS_NEW = 64
_TIMESTAMP_SPACE = socket.CMSG_SPACE(16)
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL = 0  # skb->protocol, the EtherType in host order: works for devices without a link header
_SKF_AD_PKTTYPE = 4  # the packet's sll_pkttype
# Classic BPF opcodes: class | size | mode (loads), class | op | source (jumps).
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_H_IND, _LD_B_IND = 0x48, 0x50
_LDX_B_MSH = 0xB1  # X = 4 * (P[k] & 0x0f): the IPv4 header's length
_JEQ_K, _JSET_K = 0x15, 0x45
_RET_K = 0x06

# Errors that mean "the device is not there (yet), or went down": wait and open it again by name.
_DEVICE_GONE = frozenset({errno.ENODEV, errno.ENXIO, errno.ENETDOWN})
# Errors that mean "no packet sockets for this process": no CAP_NET_RAW, or a sandbox without AF_PACKET.
_NOT_ALLOWED = frozenset({errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT})


class PacketKind(Enum):
    SYN = "syn"
    SYN_ACK = "syn-ack"
    RST = "rst"
    DNS_QUERY = "dns-query"
    DNS_ANSWER = "dns-answer"


@dataclass(frozen=True)
class Packet:
    """One packet the tracker cares about; addresses as text, ports as numbers."""

    kind: PacketKind
    outgoing: bool
    source: str
    source_port: int
    destination: str
    destination_port: int
    dns_id: int = 0  # DNS only
    rcode: int = 0  # DNS answers only


def parse_packet(data: bytes, outgoing: bool) -> Packet | None:
    """The packet starting at its IP header, or None for anything else (data segments, other protocols,
    later fragments, IPv6 extension headers, truncated or malformed input)."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4:
        header = (data[0] & 0x0F) * 4
        if header < 20 or len(data) < header or struct.unpack_from("!H", data, 6)[0] & 0x1FFF:
            return None
        protocol, family, addresses = data[9], socket.AF_INET, (data[12:16], data[16:20])
    elif version == 6:
        header = 40
        if len(data) < header:
            return None
        protocol, family, addresses = data[6], socket.AF_INET6, (data[8:24], data[24:40])
    else:
        return None
    payload = data[header:]
    source, destination = (socket.inet_ntop(family, a) for a in addresses)
    if protocol == _IPPROTO_TCP:
        if len(payload) < 14:
            return None
        source_port, destination_port = struct.unpack_from("!HH", payload)
        flags = payload[13]
        if flags & _TCP_RST:
            kind = PacketKind.RST
        elif flags & _TCP_SYN:
            kind = PacketKind.SYN_ACK if flags & _TCP_ACK else PacketKind.SYN
        else:
            return None
        return Packet(kind, outgoing, source, source_port, destination, destination_port)
    if protocol == _IPPROTO_UDP:
        if len(payload) < 8 + _DNS_HEADER:
            return None
        source_port, destination_port = struct.unpack_from("!HH", payload)
        dns_id, dns_flags = struct.unpack_from("!HH", payload, 8)
        is_answer = bool(dns_flags & 0x8000)
        if not is_answer and destination_port == _DNS_PORT:
            kind = PacketKind.DNS_QUERY
        elif is_answer and source_port == _DNS_PORT:
            kind = PacketKind.DNS_ANSWER
        else:
            return None
        return Packet(
            kind, outgoing, source, source_port, destination, destination_port, dns_id, dns_flags & 0x0F
        )
    return None


@dataclass(frozen=True)
class LinkStats:
    """The device's own counters (/sys/class/net/DEV/statistics): every packet, not only the filtered ones.
    A re-created device starts again from zero under a new ifindex; compare only equal ifindexes."""

    ifindex: int | None  # None while the device is absent
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0


NO_LINK = LinkStats(None)


@dataclass(frozen=True)
class TrafficCounters:
    """Cumulative counts of one device's watch at time `at` (monotonic seconds): compare two snapshots.

    Every connection attempt (a first SYN; its retransmissions, even after it was counted unanswered, are
    not counted again) ends in exactly one of answered, refused or unanswered, or is still pending; the same
    for DNS queries (a retransmission has the same ports and id) with answered, failed (SERVFAIL, REFUSED)
    and unanswered. An answer after the patience is not counted. `resets` are RSTs on connections not
    being opened (including a refusal that came after the patience).
    """

    at: float
    syn_sent: int = 0
    syn_answered: int = 0
    syn_refused: int = 0
    syn_unanswered: int = 0
    resets: int = 0
    # Sum of the answered handshakes' times (first SYN to SYN-ACK, read on arrival): a free RTT sample per
    # connection; the mean between two snapshots is the difference of sums over that of syn_answered.
    handshake_seconds: float = 0.0
    dns_sent: int = 0
    dns_answered: int = 0  # NOERROR, NXDOMAIN and every other answer but the two failures
    dns_failed: int = 0
    dns_unanswered: int = 0
    dns_answer_seconds: float = 0.0
    link: LinkStats = NO_LINK

    @property
    def trouble(self) -> int:
        """How many outcomes so far were signs of an outage: what notify() watches."""
        return self.syn_unanswered + self.syn_refused + self.resets + self.dns_failed + self.dns_unanswered


# local address, local port, remote address, remote port (+ the DNS id)
_Flow = tuple[str, int, str, int]
_Query = tuple[str, int, str, int, int]


class TrafficTracker:
    """Matches a device's packets into outcomes; no I/O and no clock (every call is given the time).

    Times given must not go backwards: the tables are ordered by first-sent time, oldest first, which is
    what expiry and eviction rely on.
    """

    def __init__(
        self, patience: float = PATIENCE, dns_patience: float = DNS_PATIENCE, capacity: int = TABLE_CAPACITY
    ) -> None:
        if patience <= 0 or dns_patience <= 0 or capacity < 1:
            raise ValueError(f"bad tracker parameters: {patience=}, {dns_patience=}, {capacity=}")
        self.patience = patience
        self.dns_patience = dns_patience
        self.capacity = capacity
        self._syns: dict[_Flow, float] = {}  # first-sent time
        self._queries: dict[_Query, float] = {}
        self._syns_given_up: dict[_Flow, float] = {}  # first-sent time of those counted unanswered
        self._queries_given_up: dict[_Query, float] = {}
        self._n = TrafficCounters(0.0)  # `at` and `link` are filled in by counters()

    def observe(self, packet: Packet, now: float) -> None:
        # Expire first: whether an answer was in time must not depend on when the last tick ran.
        self.expire(now)
        n = self._n
        if packet.outgoing:
            flow = (packet.source, packet.source_port, packet.destination, packet.destination_port)
            if packet.kind is PacketKind.SYN and _new(flow, self._syns, self._syns_given_up, now):
                _insert(self._syns, flow, now, self.capacity)
                self._n = replace(n, syn_sent=n.syn_sent + 1)
            elif packet.kind is PacketKind.DNS_QUERY:
                query = (*flow, packet.dns_id)
                if _new(query, self._queries, self._queries_given_up, now):
                    _insert(self._queries, query, now, self.capacity)
                    self._n = replace(n, dns_sent=n.dns_sent + 1)
            return
        flow = (packet.destination, packet.destination_port, packet.source, packet.source_port)
        if packet.kind is PacketKind.SYN_ACK:
            if (sent := self._syns.pop(flow, None)) is not None:
                self._n = replace(
                    n, syn_answered=n.syn_answered + 1, handshake_seconds=n.handshake_seconds + now - sent
                )
        elif packet.kind is PacketKind.RST:
            if self._syns.pop(flow, None) is not None:
                self._n = replace(n, syn_refused=n.syn_refused + 1)
            else:
                self._n = replace(n, resets=n.resets + 1)
        elif packet.kind is PacketKind.DNS_ANSWER:
            if (sent := self._queries.pop((*flow, packet.dns_id), None)) is not None:
                n = replace(n, dns_answer_seconds=n.dns_answer_seconds + now - sent)
                if packet.rcode in (_RCODE_SERVFAIL, _RCODE_REFUSED):
                    self._n = replace(n, dns_failed=n.dns_failed + 1)
                else:
                    self._n = replace(n, dns_answered=n.dns_answered + 1)

    def expire(self, now: float) -> None:
        """Count what has waited `patience` (or `dns_patience`) or longer as unanswered, once."""
        syns = _expire(self._syns, now - self.patience, self._syns_given_up, self.capacity)
        queries = _expire(self._queries, now - self.dns_patience, self._queries_given_up, self.capacity)
        if syns or queries:
            n = self._n
            self._n = replace(
                n, syn_unanswered=n.syn_unanswered + syns, dns_unanswered=n.dns_unanswered + queries
            )
        # An attempt given up RETRY_MEMORY ago counts as new anyway (_new): kept, it would only hold memory
        # (up to `capacity` entries a table, long after the outage that filled it).
        _forget(self._syns_given_up, now - RETRY_MEMORY)
        _forget(self._queries_given_up, now - RETRY_MEMORY)

    def next_deadline(self) -> float | None:
        """When the oldest pending entry runs out of patience; None when nothing is pending."""
        deadlines = [
            next(iter(table.values())) + patience
            for table, patience in ((self._syns, self.patience), (self._queries, self.dns_patience))
            if table
        ]
        return min(deadlines, default=None)

    @property
    def trouble(self) -> int:
        return self._n.trouble

    def counters(self, at: float, link: LinkStats = NO_LINK) -> TrafficCounters:
        return replace(self._n, at=at, link=link)


_K = TypeVar("_K")


def _new(key: _K, pending: dict[_K, float], given_up: dict[_K, float], now: float) -> bool:
    """False for a retransmission: of an attempt pending, or of one given up and first sent less than
    RETRY_MEMORY ago."""
    return key not in pending and given_up.get(key, -math.inf) <= now - RETRY_MEMORY


def _insert(table: dict[_K, float], key: _K, now: float, capacity: int) -> None:
    """Add at the end, oldest out first: the table stays ordered by time."""
    table.pop(key, None)
    if len(table) >= capacity:
        del table[next(iter(table))]
    table[key] = now


def _forget(table: dict[_K, float], cutoff: float) -> None:
    """Drop what was sent at `cutoff` or before (the table is ordered by that time)."""
    while table and next(iter(table.values())) <= cutoff:
        del table[next(iter(table))]


def _expire(table: dict[_K, float], cutoff: float, given_up: dict[_K, float], capacity: int) -> int:
    """Move what was sent at `cutoff` or before from `table` to `given_up`; how many."""
    expired = 0
    while table:
        key, sent = next(iter(table.items()))
        if sent > cutoff:
            break
        del table[key]
        _insert(given_up, key, sent, capacity)
        expired += 1
    return expired


# -- the kernel side: a filtered packet socket ----------------------------------------------------------

# The filter, in classic BPF: (label, opcode, k, jump-if-true label, jump-if-false label); an empty jump
# label means the next instruction. The packet starts at its IP header (a SOCK_DGRAM packet socket strips
# the link header, whichever the device has), so offsets below are the IP header's.
_Instruction = tuple[str, int, int, str, str]
_FILTER: tuple[_Instruction, ...] = (
    # Only what this host sends or receives: not broadcast, multicast, nor others' traffic (promiscuous).
    ("", _LD_W_ABS, _SKF_AD_OFF + _SKF_AD_PKTTYPE, "", ""),
    ("", _JEQ_K, socket.PACKET_HOST, "protocol", ""),
    ("", _JEQ_K, socket.PACKET_OUTGOING, "protocol", "drop"),
    ("protocol", _LD_W_ABS, _SKF_AD_OFF + _SKF_AD_PROTOCOL, "", ""),
    ("", _JEQ_K, _ETH_P_IP, "ipv4", ""),
    ("", _JEQ_K, _ETH_P_IPV6, "ipv6", "drop"),
    # IPv4: a later fragment carries no TCP or UDP header; X = the IP header's length.
    ("ipv4", _LD_H_ABS, 6, "", ""),
    ("", _JSET_K, 0x1FFF, "drop", ""),
    ("", _LDX_B_MSH, 0, "", ""),
    ("", _LD_B_ABS, 9, "", ""),
    ("", _JEQ_K, _IPPROTO_TCP, "tcp4", ""),
    ("", _JEQ_K, _IPPROTO_UDP, "udp4", "drop"),
    ("tcp4", _LD_B_IND, 13, "", ""),  # TCP flags
    ("", _JSET_K, _TCP_SYN | _TCP_RST, "accept", "drop"),
    ("udp4", _LD_H_IND, 0, "", ""),  # source port
    ("", _JEQ_K, _DNS_PORT, "accept", ""),
    ("", _LD_H_IND, 2, "", ""),  # destination port
    ("", _JEQ_K, _DNS_PORT, "accept", "drop"),
    # IPv6: TCP or UDP right after the fixed 40-byte header (extension headers are not followed).
    ("ipv6", _LD_B_ABS, 6, "", ""),  # next header
    ("", _JEQ_K, _IPPROTO_TCP, "tcp6", ""),
    ("", _JEQ_K, _IPPROTO_UDP, "udp6", "drop"),
    ("tcp6", _LD_B_ABS, 40 + 13, "", ""),
    ("", _JSET_K, _TCP_SYN | _TCP_RST, "accept", "drop"),
    ("udp6", _LD_H_ABS, 40, "", ""),
    ("", _JEQ_K, _DNS_PORT, "accept", ""),
    ("", _LD_H_ABS, 42, "", ""),
    ("", _JEQ_K, _DNS_PORT, "accept", "drop"),
    # Returns the bytes of the packet to queue: the headers only, or nothing.
    ("accept", _RET_K, SNAPLEN, "", ""),
    ("drop", _RET_K, 0, "", ""),
)


def assemble(program: Sequence[_Instruction]) -> list[tuple[int, int, int, int]]:
    """The program as struct sock_filter values (code, jt, jf, k): jump labels become forward offsets."""
    where = {label: index for index, (label, *_) in enumerate(program) if label}
    code: list[tuple[int, int, int, int]] = []
    for index, (_, opcode, k, if_true, if_false) in enumerate(program):
        jt, jf = (where[label] - index - 1 if label else 0 for label in (if_true, if_false))
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError(f"instruction {index}: jumps must go forward, at most 255 instructions")
        code.append((opcode, jt, jf, k & 0xFFFFFFFF))
    return code


FILTER_CODE: list[tuple[int, int, int, int]] = assemble(_FILTER)
# struct sock_filter is {u16 code; u8 jt; u8 jf; u32 k}; struct sock_fprog is {unsigned short len; struct
# sock_filter *filter}, native alignment (the kernel reads the array during setsockopt; kept alive here).
# array, not ctypes: importing ctypes makes a callback, which the unit's MemoryDenyWriteExecute may refuse.
_FILTER_ARRAY = array.array("B", b"".join(struct.pack("=HBBI", *insn) for insn in FILTER_CODE))
_FILTER_PROGRAM = struct.pack("@HP", len(FILTER_CODE), _FILTER_ARRAY.buffer_info()[0])


def _ifindex(device: str) -> int | None:
    try:
        return socket.if_nametoindex(device)
    except OSError:
        return None


def _open(device: str) -> tuple[socket.socket, int]:
    """A non-blocking packet socket reading `device` through the filter, and the device's ifindex.
    OSError: ENODEV when there is no such device, EPERM and the like when packet sockets are not allowed."""
    # Protocol 0 receives nothing until bind(): no unfiltered packet is queued before the filter is on.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _FILTER_PROGRAM)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS_NEW, 1)
        ifindex = _ifindex(device)
        sock.bind((device, _ETH_P_ALL))  # by name; the kernel keeps the ifindex it found
        if ifindex is None or _ifindex(device) != ifindex:  # replaced in between: which one is bound?
            raise OSError(errno.ENODEV, f"{device} changed while being opened")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, ifindex


def _link_stats(device: str) -> LinkStats:
    base = Path("/sys/class/net", device)
    try:

        def read(name: str) -> int:
            return int((base / name).read_text())

        return LinkStats(
            ifindex=read("ifindex"),
            rx_bytes=read("statistics/rx_bytes"),
            tx_bytes=read("statistics/tx_bytes"),
            rx_packets=read("statistics/rx_packets"),
            tx_packets=read("statistics/tx_packets"),
        )
    except (OSError, ValueError):
        return NO_LINK


class _Once:
    said = False


def _say_not_allowed(device: str, exc: OSError) -> None:
    if not _Once.said:
        _Once.said = True
        logger.warning(
            "no passive traffic evidence (first seen on {}): cannot open a packet socket ({}); it needs "
            "CAP_NET_RAW and AF_PACKET",
            device,
            exc.strerror or exc,
        )


def _nothing() -> None:
    pass


class TrafficWatch:
    """Watches one device by name for the whole life of the daemon; `run()` until `aclose()`.

    The device may be absent, go down, or be deleted and come back under a new ifindex: run() waits and
    opens it again, and never raises for it. Without the privilege to open packet sockets it says so once
    (for the whole process) and runs on without evidence: counters() then still has the link statistics.

    `notify()` is called in the event loop, at once when a trouble counter grows (an RST, an answer that
    failed) or at most `tick` after a patience ran out; it must not block. Counters are cumulative over the
    watch's life, across the device's comings and goings.
    """

    def __init__(
        self,
        device: str,
        notify: Callable[[], None] = _nothing,
        *,
        patience: float = PATIENCE,
        dns_patience: float = DNS_PATIENCE,
        capacity: int = TABLE_CAPACITY,
        tick: float = TICK,
        recheck: float = RECHECK_INTERVAL,
        reopen: float = REOPEN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self._tracker = TrafficTracker(patience, dns_patience, capacity)
        self._notify = notify
        self._tick = tick
        self._recheck = recheck
        self._reopen = reopen
        self._clock = clock
        self._ifindex: int | None = None
        self._reported = 0  # trouble already notified
        self._last_seen = -math.inf  # the tracker's time must not go backwards
        self._closing = False
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False

    @property
    def watching(self) -> int | None:
        """The ifindex whose packets are being read; None while the device is absent or not allowed."""
        return self._ifindex

    def counters(self) -> TrafficCounters:
        return self._tracker.counters(self._clock(), _link_stats(self.device))

    async def run(self) -> None:
        """Watch until aclose(); raises only for the unexpected (an OSError that is not about the device
        or the privilege), so a supervisor restarts it."""
        if self._running:
            raise RuntimeError(f"the traffic watch of {self.device} is already running")
        self._running = True
        self._finished.clear()
        try:
            while not self._closing:
                try:
                    sock, self._ifindex = _open(self.device)
                except OSError as exc:
                    if exc.errno in _NOT_ALLOWED:
                        _say_not_allowed(self.device, exc)
                        while not self._closing:
                            await self._sleep(math.inf)
                    elif exc.errno in _DEVICE_GONE:
                        await self._wait_for_device()
                    else:
                        raise
                    continue
                logger.debug("traffic watch: reading {} (ifindex {})", self.device, self._ifindex)
                try:
                    await self._read(sock)
                finally:
                    self._ifindex = None
                    sock.close()
        finally:
            self._running = False
            self._finished.set()

    async def aclose(self) -> None:
        """Stop run() and wait until it has closed its socket. Idempotent."""
        self._closing = True
        self._wake.set()
        if self._running:
            await self._finished.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _wait_for_device(self) -> None:
        # Pending entries still run out of patience meanwhile: they will never be answered on this device.
        reopen_at = self._clock() + self._reopen
        while not self._closing and self._clock() < reopen_at:
            await self._sleep(reopen_at)
            self._settle()

    async def _read(self, sock: socket.socket) -> None:
        """Read until closed, or until the device is gone or replaced (then the caller opens it again)."""
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._wake.set)
        try:
            recheck_at = self._clock() + self._recheck
            while not self._closing:
                await self._sleep(recheck_at)
                went_down = not self._drain(sock)
                self._settle()
                if went_down or self._clock() >= recheck_at:
                    # A device deleted while up says ENETDOWN first; one deleted while down says nothing,
                    # hence the check now and then too. Down and up again, the same socket reads on.
                    if _ifindex(self.device) != self._ifindex:
                        logger.debug("traffic watch: {} is gone or was replaced", self.device)
                        return
                    recheck_at = self._clock() + self._recheck
        finally:
            loop.remove_reader(sock.fileno())

    def _drain(self, sock: socket.socket) -> bool:
        """Feed what is queued to the tracker; False when the socket says the device went down."""
        now = self._clock()
        to_clock = now - time.time()  # kernel stamps are wall-clock time
        for _ in range(_BATCH):
            try:
                data, ancillary, _, address = sock.recvmsg(SNAPLEN, _TIMESTAMP_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _DEVICE_GONE:
                    return False
                raise
            # address: (device, ethertype, sll_pkttype, hatype, link address); the filter passed only
            # PACKET_HOST and PACKET_OUTGOING.
            packet = parse_packet(data, address[2] == socket.PACKET_OUTGOING)
            if packet is not None:
                seen = now
                for level, kind, value in ancillary:
                    if (level, kind, len(value)) == (socket.SOL_SOCKET, _SO_TIMESTAMPNS_NEW, 16):
                        seconds, nanoseconds = struct.unpack("=qq", value)
                        seen = min(now, seconds + nanoseconds * 1e-9 + to_clock)
                # A wall clock stepped back must not take the tracker's time with it.
                self._last_seen = max(self._last_seen, seen)
                self._tracker.observe(packet, self._last_seen)
        return True

    def _settle(self) -> None:
        self._tracker.expire(self._clock())
        if self._tracker.trouble > self._reported:
            self._reported = self._tracker.trouble
            self._notify()

    async def _sleep(self, until: float) -> None:
        """Until woken (packets, aclose), `until`, or the tick after the next pending entry runs out."""
        deadline = self._tracker.next_deadline()
        if deadline is not None:
            # On the tick grid, so a stream of connection attempts costs at most one wake-up per tick.
            until = min(until, max(deadline, math.ceil(deadline / self._tick) * self._tick))
        handle = None
        if until != math.inf:
            delay = max(0.0, until - self._clock())
            handle = asyncio.get_running_loop().call_later(delay, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            if handle is not None:
                handle.cancel()
            self._wake.clear()
