"""The passive traffic watch (nmfailover/traffic.py): the parser and the tracker by tables, the kernel filter
by an interpreter of its instructions, and in the lab, with two uplinks, that a watch counts its own
device's traffic and nothing else, notifies in time, survives its device and costs nothing under load."""

from __future__ import annotations

import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from nmfailover.lab.sandbox import Topology, Upstream
from nmfailover.traffic import (
    DNS_PATIENCE,
    FILTER_CODE,
    PATIENCE,
    RETRY_MEMORY,
    SNAPLEN,
    TICK,
    LinkStats,
    Packet,
    PacketKind,
    TrafficCounters,
    TrafficTracker,
    parse_packet,
)

ROOT = Path(__file__).resolve().parent.parent

# -- crafted packets ---------------------------------------------------------------------------------------

HOST4, PEER4, RESOLVER4 = "192.0.2.2", "203.0.113.10", "203.0.113.53"
HOST6, PEER6 = "2001:db8:a::2", "2001:db8:ffff::10"
SYN, RST, ACK, FIN, PSH = 0x02, 0x04, 0x10, 0x01, 0x08


def ipv4(protocol: int, source: str, destination: str, payload: bytes, *, fragment: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, fragment, 64, protocol, 0,
        socket.inet_pton(socket.AF_INET, source), socket.inet_pton(socket.AF_INET, destination),
    )  # fmt: skip
    return header + payload


def ipv6(next_header: int, source: str, destination: str, payload: bytes) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
        socket.inet_pton(socket.AF_INET6, source), socket.inet_pton(socket.AF_INET6, destination),
    )  # fmt: skip
    return header + payload


def tcp(source_port: int, destination_port: int, flags: int, ack: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", source_port, destination_port, 1, ack, 5 << 4, flags, 65535, 0, 0)


def udp(source_port: int, destination_port: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0) + payload


def query(ident: int = 0x1234, name: str = "target1.test.") -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = ident
    return message.to_wire()


def answer(rcode: dns.rcode.Rcode, ident: int = 0x1234) -> bytes:
    message = dns.message.make_response(dns.message.from_wire(query(ident)))
    message.set_rcode(rcode)
    return message.to_wire()


def tcp4(flags: int, out: bool = True, port: int = 40000) -> bytes:
    """A segment of the flow HOST4:port <-> PEER4:80, in the direction given."""
    if out:
        return ipv4(6, HOST4, PEER4, tcp(port, 80, flags))
    return ipv4(6, PEER4, HOST4, tcp(80, port, flags))


def tcp6(flags: int, out: bool = True, port: int = 40000) -> bytes:
    if out:
        return ipv6(6, HOST6, PEER6, tcp(port, 80, flags))
    return ipv6(6, PEER6, HOST6, tcp(80, port, flags))


def dns4(message: bytes, out: bool = True, port: int = 50000) -> bytes:
    if out:
        return ipv4(17, HOST4, RESOLVER4, udp(port, 53, message))
    return ipv4(17, RESOLVER4, HOST4, udp(53, port, message))


# -- the parser --------------------------------------------------------------------------------------------

OUT_SYN4 = Packet(PacketKind.SYN, True, HOST4, 40000, PEER4, 80)


@pytest.mark.parametrize(
    ("data", "outgoing", "expected"),
    [
        (tcp4(SYN), True, OUT_SYN4),
        (tcp4(SYN | ACK, out=False), False, Packet(PacketKind.SYN_ACK, False, PEER4, 80, HOST4, 40000)),
        (tcp4(RST | ACK, out=False), False, Packet(PacketKind.RST, False, PEER4, 80, HOST4, 40000)),
        (tcp4(RST), True, Packet(PacketKind.RST, True, HOST4, 40000, PEER4, 80)),
        (tcp6(SYN), True, Packet(PacketKind.SYN, True, HOST6, 40000, PEER6, 80)),
        (tcp6(SYN | ACK, out=False), False, Packet(PacketKind.SYN_ACK, False, PEER6, 80, HOST6, 40000)),
        (tcp6(RST, out=False), False, Packet(PacketKind.RST, False, PEER6, 80, HOST6, 40000)),
        # Data, acknowledgements and the end of a connection are not the tracker's business.
        (tcp4(ACK), True, None),
        (tcp4(PSH | ACK, out=False), False, None),
        (tcp6(FIN | ACK), True, None),
        (dns4(query()), True, Packet(PacketKind.DNS_QUERY, True, HOST4, 50000, RESOLVER4, 53, 0x1234)),
        (dns4(answer(dns.rcode.NOERROR), out=False), False,
         Packet(PacketKind.DNS_ANSWER, False, RESOLVER4, 53, HOST4, 50000, 0x1234, 0)),
        (dns4(answer(dns.rcode.SERVFAIL), out=False), False,
         Packet(PacketKind.DNS_ANSWER, False, RESOLVER4, 53, HOST4, 50000, 0x1234, 2)),
        (dns4(answer(dns.rcode.NXDOMAIN), out=False), False,
         Packet(PacketKind.DNS_ANSWER, False, RESOLVER4, 53, HOST4, 50000, 0x1234, 3)),
        (ipv6(17, HOST6, PEER6, udp(50001, 53, query(7))), True,
         Packet(PacketKind.DNS_QUERY, True, HOST6, 50001, PEER6, 53, 7)),
        # A query from port 53 (a server forwarding) is a query, an answer to port 53 from elsewhere is not.
        (ipv4(17, HOST4, RESOLVER4, udp(53, 53, query(9))), True,
         Packet(PacketKind.DNS_QUERY, True, HOST4, 53, RESOLVER4, 53, 9)),
        (ipv4(17, PEER4, HOST4, udp(5353, 53, answer(dns.rcode.NOERROR))), False, None),
        (ipv4(17, HOST4, PEER4, udp(50000, 123, query())), True, None),  # not port 53
        # Truncated, garbage, other protocols, fragments.
        (b"", True, None),
        (b"\x45", True, None),
        (tcp4(SYN)[:33], True, None),  # the TCP header ends before its flags
        (dns4(query())[:39], True, None),  # a DNS header cut short
        (ipv6(6, HOST6, PEER6, b"")[:39], True, None),
        # A header shorter than 20 bytes, whose misread would find a SYN (in the acknowledgement number).
        (b"\x44" + ipv4(6, HOST4, PEER4, tcp(40000, 80, ACK, ack=0x00020000))[1:], True, None),
        (b"\x75" + tcp4(SYN)[1:], True, None),  # IP version 7
        (ipv4(6, HOST4, PEER4, tcp(40000, 80, SYN), fragment=0x0010), True, None),  # a later fragment
        (ipv4(1, HOST4, PEER4, b"\x08\x00" + bytes(30)), True, None),  # ICMP
        (ipv6(0, HOST6, PEER6, bytes(8) + tcp(40000, 80, SYN)), True, None),  # behind a hop-by-hop header
        (bytes(range(256)) * 2, False, None),
    ],
)  # fmt: skip
def test_parse_packet(data: bytes, outgoing: bool, expected: Packet | None) -> None:
    assert parse_packet(data, outgoing) == expected


def test_the_parser_needs_no_more_than_the_filter_keeps() -> None:
    # The largest IPv4 header (60 bytes, with options) before a TCP SYN or a DNS header.
    options = bytes(40)
    for payload, protocol in ((tcp(40000, 80, SYN), 6), (udp(50000, 53, query()), 17)):
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x4F, 0, 60 + len(payload), 1, 0, 64, protocol, 0,
            socket.inet_pton(socket.AF_INET, HOST4), socket.inet_pton(socket.AF_INET, PEER4),
        )  # fmt: skip
        packet = parse_packet((header + options + payload)[:SNAPLEN], True)
        assert packet is not None and packet.kind in (PacketKind.SYN, PacketKind.DNS_QUERY)


# -- the tracker -------------------------------------------------------------------------------------------

Step = tuple[float, bytes, bool]  # time, packet, outgoing


def track(steps: Sequence[Step], until: float, **kwargs: Any) -> TrafficCounters:
    tracker = TrafficTracker(**kwargs)
    for at, data, outgoing in steps:
        packet = parse_packet(data, outgoing)
        assert packet is not None, data
        tracker.observe(packet, at)
    tracker.expire(until)
    return tracker.counters(until)


def counts(counters: TrafficCounters) -> dict[str, int]:
    return {k: v for k, v in asdict(counters).items() if isinstance(v, int) and v}


S_OUT, S_IN = True, False


@pytest.mark.parametrize(
    ("steps", "until", "expected"),
    [
        ([(0.0, tcp4(SYN), S_OUT), (0.05, tcp4(SYN | ACK, out=False), S_IN)], 10.0,
         {"syn_sent": 1, "syn_answered": 1}),
        ([(0.0, tcp6(SYN), S_OUT), (0.05, tcp6(SYN | ACK, out=False), S_IN)], 10.0,
         {"syn_sent": 1, "syn_answered": 1}),
        ([(0.0, tcp4(SYN), S_OUT), (0.01, tcp4(RST | ACK, out=False), S_IN)], 10.0,
         {"syn_sent": 1, "syn_refused": 1}),
        # A reset of a connection not being opened; then the same flow is not pending any more.
        ([(0.0, tcp4(RST, out=False), S_IN)], 10.0, {"resets": 1}),
        ([(0.0, tcp4(SYN), S_OUT), (0.01, tcp4(SYN | ACK, out=False), S_IN), (5.0, tcp4(RST, out=False), S_IN)],
         10.0, {"syn_sent": 1, "syn_answered": 1, "resets": 1}),
        # Unanswered: counted once, however often the SYN is sent again and however late it is looked at.
        ([(0.0, tcp4(SYN), S_OUT), (1.0, tcp4(SYN), S_OUT)], 1.49, {"syn_sent": 1}),
        ([(0.0, tcp4(SYN), S_OUT), (1.0, tcp4(SYN), S_OUT)], 1.5, {"syn_sent": 1, "syn_unanswered": 1}),
        ([(0.0, tcp4(SYN), S_OUT), (1.0, tcp4(SYN), S_OUT), (3.0, tcp4(SYN), S_OUT)], 60.0,
         {"syn_sent": 1, "syn_unanswered": 1}),
        ([(0.0, tcp4(SYN), S_OUT), (131.6, tcp4(SYN), S_OUT)], 140.0, {"syn_sent": 2, "syn_unanswered": 2}),
        ([(0.0, dns4(query()), S_OUT), (5.0, dns4(query()), S_OUT)], 60.0, {"dns_sent": 1, "dns_unanswered": 1}),
        # An answer after the patience is too late, whenever the last tick ran; the late RST is a reset.
        ([(0.0, tcp4(SYN), S_OUT), (1.6, tcp4(SYN | ACK, out=False), S_IN)], 10.0,
         {"syn_sent": 1, "syn_unanswered": 1}),
        ([(0.0, tcp4(SYN), S_OUT), (1.6, tcp4(RST | ACK, out=False), S_IN)], 10.0,
         {"syn_sent": 1, "syn_unanswered": 1, "resets": 1}),
        # Answers must match the flow: another port is someone else's.
        ([(0.0, tcp4(SYN), S_OUT), (0.1, tcp4(SYN | ACK, out=False, port=40001), S_IN)], 10.0,
         {"syn_sent": 1, "syn_unanswered": 1}),
        # Direction matters: an incoming SYN (a server's client) and our own SYN-ACKs and RSTs are not ours.
        ([(0.0, tcp4(SYN, out=False), S_IN), (0.0, tcp4(SYN | ACK), S_OUT), (0.1, tcp4(RST), S_OUT)], 10.0,
         {}),
        ([(0.0, tcp4(SYN | ACK, out=False), S_IN)], 10.0, {}),  # an answer to nothing
        # Two attempts, each with its own outcome.
        ([(0.0, tcp4(SYN), S_OUT), (0.1, tcp4(SYN, port=40001), S_OUT),
          (0.2, tcp4(RST | ACK, out=False, port=40001), S_IN)], 10.0,
         {"syn_sent": 2, "syn_refused": 1, "syn_unanswered": 1}),
        # DNS: every answer but SERVFAIL and REFUSED is an answer, NXDOMAIN included.
        ([(0.0, dns4(query()), S_OUT), (0.02, dns4(answer(dns.rcode.NOERROR), out=False), S_IN)], 10.0,
         {"dns_sent": 1, "dns_answered": 1}),
        ([(0.0, dns4(query()), S_OUT), (0.02, dns4(answer(dns.rcode.NXDOMAIN), out=False), S_IN)], 10.0,
         {"dns_sent": 1, "dns_answered": 1}),
        ([(0.0, dns4(query()), S_OUT), (0.02, dns4(answer(dns.rcode.SERVFAIL), out=False), S_IN)], 10.0,
         {"dns_sent": 1, "dns_failed": 1}),
        ([(0.0, dns4(query()), S_OUT), (0.02, dns4(answer(dns.rcode.REFUSED), out=False), S_IN)], 10.0,
         {"dns_sent": 1, "dns_failed": 1}),
        # A query sent again (same id and ports) is one query; an answer with another id answers nothing.
        ([(0.0, dns4(query()), S_OUT), (1.0, dns4(query()), S_OUT)], 1.99, {"dns_sent": 1}),
        ([(0.0, dns4(query()), S_OUT), (1.0, dns4(query()), S_OUT)], 2.0, {"dns_sent": 1, "dns_unanswered": 1}),
        ([(0.0, dns4(query()), S_OUT), (0.1, dns4(answer(dns.rcode.NOERROR, ident=0x4321), out=False), S_IN)],
         10.0, {"dns_sent": 1, "dns_unanswered": 1}),
        ([(0.0, dns4(query()), S_OUT), (0.1, dns4(answer(dns.rcode.NOERROR), out=False, port=50001), S_IN)],
         10.0, {"dns_sent": 1, "dns_unanswered": 1}),
        ([(0.0, dns4(query()), S_OUT), (2.5, dns4(answer(dns.rcode.NOERROR), out=False), S_IN)], 10.0,
         {"dns_sent": 1, "dns_unanswered": 1}),
        # A second answer to the same query is ignored.
        ([(0.0, dns4(query()), S_OUT), (0.1, dns4(answer(dns.rcode.NOERROR), out=False), S_IN),
          (0.2, dns4(answer(dns.rcode.SERVFAIL), out=False), S_IN)], 10.0, {"dns_sent": 1, "dns_answered": 1}),
        # Our own answers (a DNS server on this host) are not queries of ours.
        ([(0.0, ipv4(17, PEER4, HOST4, udp(50000, 53, query())), S_IN),
          (0.1, ipv4(17, HOST4, PEER4, udp(53, 50000, answer(dns.rcode.NOERROR))), S_OUT)], 10.0, {}),
    ],
)  # fmt: skip
def test_tracker(steps: Sequence[Step], until: float, expected: dict[str, int]) -> None:
    assert counts(track(steps, until)) == expected


def test_answer_times_are_kept_as_sums() -> None:
    steps: list[Step] = [
        (0.0, tcp4(SYN), S_OUT),
        (0.0, tcp4(SYN, port=40001), S_OUT),
        (0.05, tcp4(SYN | ACK, out=False), S_IN),
        (1.2, tcp4(SYN | ACK, out=False, port=40001), S_IN),  # after a retransmission: from the first SYN
        (2.0, dns4(query()), S_OUT),
        (2.25, dns4(answer(dns.rcode.SERVFAIL), out=False), S_IN),
    ]
    result = track(steps, 3.0)
    assert result.handshake_seconds == pytest.approx(1.25)
    assert result.dns_answer_seconds == pytest.approx(0.25)
    assert result.at == 3.0 and result.link == LinkStats(None)


def test_trouble_is_the_sum_of_the_signs_of_an_outage() -> None:
    counters = TrafficCounters(0.0, 9, 9, 1, 2, 4, 1.0, 9, 9, 8, 16, 2.0)
    assert counters.trouble == 1 + 2 + 4 + 8 + 16


def test_patience_is_a_parameter() -> None:
    steps: list[Step] = [(0.0, tcp4(SYN), S_OUT), (0.0, dns4(query()), S_OUT)]
    assert counts(track(steps, 0.3, patience=0.3, dns_patience=0.4)) == {
        "syn_sent": 1, "syn_unanswered": 1, "dns_sent": 1
    }  # fmt: skip


def test_next_deadline_is_the_oldest_pending_entry_running_out() -> None:
    tracker = TrafficTracker(patience=1.5, dns_patience=2.0)
    assert tracker.next_deadline() is None
    for at, data in ((1.0, dns4(query())), (1.2, tcp4(SYN)), (1.3, tcp4(SYN, port=40001))):
        packet = parse_packet(data, True)
        assert packet is not None
        tracker.observe(packet, at)
    assert tracker.next_deadline() == pytest.approx(2.7)  # the SYN's, before the older query's 3.0
    tracker.expire(2.7)
    assert tracker.next_deadline() == pytest.approx(2.8)
    tracker.expire(2.9)
    assert tracker.next_deadline() == pytest.approx(3.0)
    tracker.expire(3.0)
    assert tracker.next_deadline() is None
    assert tracker.trouble == 3


def test_tables_are_bounded_and_forget_the_oldest_first() -> None:
    tracker = TrafficTracker(capacity=3)
    for port in range(40000, 40005):  # five attempts: the first two are forgotten
        packet = parse_packet(tcp4(SYN, port=port), True)
        assert packet is not None
        tracker.observe(packet, 0.1 * (port - 40000))
    for port in (40000, 40004):
        packet = parse_packet(tcp4(SYN | ACK, out=False, port=port), False)
        assert packet is not None
        tracker.observe(packet, 0.5)
    assert tracker.next_deadline() == pytest.approx(0.2 + PATIENCE)
    tracker.expire(60.0)
    result = counts(tracker.counters(60.0))
    assert result == {"syn_sent": 5, "syn_answered": 1, "syn_unanswered": 2}, result
    for ident in range(5):
        packet = parse_packet(dns4(query(ident)), True)
        assert packet is not None
        tracker.observe(packet, 61.0)
    assert len(tracker._queries) == 3


def test_attempts_given_up_are_forgotten_oldest_first() -> None:
    # A's first attempt and B's are given up; A is tried anew much later and given up again, so A is now
    # the newest; C's and D's fill the table and push the oldest out, B: A's retransmission is still known.
    a, b, c, d = (tcp4(SYN, port=port) for port in (40000, 40001, 40002, 40003))
    steps: list[Step] = [
        (0.0, a, S_OUT), (0.1, b, S_OUT), (200.0, a, S_OUT), (210.0, c, S_OUT), (215.0, d, S_OUT), (220.0, a, S_OUT)
    ]  # fmt: skip
    assert counts(track(steps, 300.0, capacity=3)) == {"syn_sent": 5, "syn_unanswered": 5}


def test_a_syn_flood_keeps_memory_bounded() -> None:
    tracker = TrafficTracker(capacity=100)
    for n in range(5000):
        packet = Packet(PacketKind.SYN, True, HOST4, 1024 + n % 60000, PEER4, 80 + n // 60000)
        tracker.observe(packet, n * 1e-4)
    assert len(tracker._syns) == 100 and tracker.counters(1.0).syn_sent == 5000
    tracker.expire(10.0)
    assert not tracker._syns and len(tracker._syns_given_up) == 100


def test_attempts_given_up_are_forgotten_once_a_retransmission_would_count_as_new() -> None:
    tracker = TrafficTracker(capacity=100)
    for n in range(50):
        tracker.observe(Packet(PacketKind.SYN, True, HOST4, 1024 + n, PEER4, 80), n * 0.1)
        tracker.observe(Packet(PacketKind.DNS_QUERY, True, HOST4, 2048, PEER4, 53, dns_id=n), n * 0.1)
    tracker.expire(10.0)
    assert (len(tracker._syns_given_up), len(tracker._queries_given_up)) == (50, 50)
    tracker.expire(2.45 + RETRY_MEMORY)  # the first 25 were sent at 2.4 s or before
    assert (len(tracker._syns_given_up), len(tracker._queries_given_up)) == (25, 25)
    tracker.expire(4.9 + RETRY_MEMORY)
    assert not tracker._syns_given_up and not tracker._queries_given_up


def test_default_patience_fits_the_tick() -> None:
    # The watch's notify comes at most a tick after the patience: both must be small against the goals.
    assert 0 < TICK <= 0.2 and PATIENCE <= 2.0 and DNS_PATIENCE <= 3.0


# -- the kernel filter, run by an interpreter of classic BPF -----------------------------------------------

PACKET_HOST, PACKET_BROADCAST, PACKET_OTHERHOST, PACKET_OUTGOING = 0, 1, 3, 4
ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806


def run_filter(data: bytes, protocol: int, pkttype: int) -> int:
    """What the kernel's run_filter would return for the packet: bytes to keep, 0 to drop."""
    a = x = 0
    pc = 0

    def load(offset: int, size: int) -> int | None:
        if offset >= 0x100000000 - 0x1000:  # SKF_AD_OFF: ancillary data
            return {0: protocol, 4: pkttype}[offset - (0x100000000 - 0x1000)]
        if offset + size > len(data):
            return None
        return int.from_bytes(data[offset : offset + size], "big")

    while True:
        code, jt, jf, k = FILTER_CODE[pc]
        pc += 1
        size = {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
        if code in (0x20, 0x28, 0x30, 0x48, 0x50):  # ld [k], ld [x + k]
            loaded = load(k + (x if code & 0x40 else 0), size)
            if loaded is None:
                return 0  # the kernel drops a packet a load reaches past
            a = loaded
        elif code == 0xB1:  # ldxb 4 * ([k] & 0xf)
            byte = load(k, 1)
            if byte is None:
                return 0
            x = 4 * (byte & 0x0F)
        elif code == 0x15:  # jeq #k
            pc += jt if a == k else jf
        elif code == 0x45:  # jset #k
            pc += jt if a & k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not known to this interpreter")


@pytest.mark.parametrize(
    ("data", "protocol", "pkttype", "kept"),
    [
        (tcp4(SYN), ETH_P_IP, PACKET_OUTGOING, True),
        (tcp4(SYN | ACK, out=False), ETH_P_IP, PACKET_HOST, True),
        (tcp4(RST | ACK, out=False), ETH_P_IP, PACKET_HOST, True),
        (tcp4(ACK), ETH_P_IP, PACKET_OUTGOING, False),
        (tcp4(PSH | ACK, out=False) + bytes(1400), ETH_P_IP, PACKET_HOST, False),
        (tcp4(FIN | ACK), ETH_P_IP, PACKET_OUTGOING, False),
        (tcp6(SYN), ETH_P_IPV6, PACKET_OUTGOING, True),
        (tcp6(RST, out=False), ETH_P_IPV6, PACKET_HOST, True),
        (tcp6(PSH | ACK, out=False) + bytes(1400), ETH_P_IPV6, PACKET_HOST, False),
        (dns4(query()), ETH_P_IP, PACKET_OUTGOING, True),
        (dns4(answer(dns.rcode.NOERROR), out=False), ETH_P_IP, PACKET_HOST, True),
        (ipv6(17, HOST6, PEER6, udp(50000, 53, query())), ETH_P_IPV6, PACKET_OUTGOING, True),
        (ipv6(17, PEER6, HOST6, udp(53, 50000, answer(dns.rcode.NOERROR))), ETH_P_IPV6, PACKET_HOST, True),
        (ipv4(17, HOST4, PEER4, udp(50000, 443, bytes(1200))), ETH_P_IP, PACKET_OUTGOING, False),  # QUIC
        (ipv6(17, HOST6, PEER6, udp(50000, 443, bytes(1200))), ETH_P_IPV6, PACKET_OUTGOING, False),
        (ipv4(1, HOST4, PEER4, bytes(64)), ETH_P_IP, PACKET_HOST, False),
        (ipv4(6, HOST4, PEER4, tcp(40000, 80, SYN), fragment=0x0010), ETH_P_IP, PACKET_OUTGOING, False),
        (b"\x46" + tcp4(SYN)[1:20] + bytes(4) + tcp4(SYN)[20:], ETH_P_IP, PACKET_OUTGOING, True),  # options
        (bytes(28), ETH_P_ARP, PACKET_BROADCAST, False),
        (tcp4(SYN), ETH_P_IP, PACKET_BROADCAST, False),
        (tcp4(SYN | ACK, out=False), ETH_P_IP, PACKET_OTHERHOST, False),
        (tcp4(SYN)[:30], ETH_P_IP, PACKET_OUTGOING, False),  # cut before the flags
    ],
)  # fmt: skip
def test_the_filter_keeps_only_handshakes_resets_and_dns(
    data: bytes, protocol: int, pkttype: int, kept: bool
) -> None:
    assert run_filter(data, protocol, pkttype) == (SNAPLEN if kept else 0)


def test_what_the_filter_keeps_parses() -> None:
    for data, outgoing in ((tcp4(SYN), True), (dns4(answer(dns.rcode.SERVFAIL), out=False), False)):
        assert run_filter(data, ETH_P_IP, PACKET_OUTGOING if outgoing else PACKET_HOST) == SNAPLEN
        assert parse_packet(data[:SNAPLEN], outgoing) is not None


# -- in the lab: two uplinks, the watch inside the host namespace ------------------------------------------

# The watches run in their own process inside the host namespace (so /sys/class/net is that namespace's
# too). They print one JSON line per notify and per "snap" command read from stdin.
_WATCHER = """
import asyncio, dataclasses, json, sys, time
from nmfailover.traffic import TrafficWatch
args = json.loads(sys.argv[1])

def say(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    watches = {}
    def notifier(device):
        return lambda: say(event="notify", device=device, at=time.monotonic(),
                           counters=dataclasses.asdict(watches[device].counters()))
    for device in args["devices"]:
        watches[device] = TrafficWatch(device, notifier(device), **args["options"])
    tasks = [asyncio.create_task(w.run()) for w in watches.values()]
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "snap":
            say(event="snap", at=time.monotonic(),
                counters={d: dataclasses.asdict(w.counters()) for d, w in watches.items()},
                watching={d: w.watching for d, w in watches.items()})
        elif line in ("quit", ""):
            for w in watches.values():
                await w.aclose()
            say(event="closed", done=[t.done() and t.exception() is None for t in tasks])
            return

asyncio.run(main())
"""

# Traffic from the host namespace through one device: connection attempts or DNS queries, one after the
# other; prints when each started and ended and how.
_TRAFFIC = """
import json, socket, sys, time
import dns.message
a = json.loads(sys.argv[1])
results = []
for n in range(a["count"]):
    family = socket.AF_INET6 if ":" in a["address"] else socket.AF_INET
    kind = socket.SOCK_STREAM if a["kind"] == "connect" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a["device"].encode())
        s.settimeout(a["timeout"])
        start = time.monotonic()
        try:
            if a["kind"] == "connect":
                s.connect((a["address"], a["port"]))
                outcome = "connected"
            else:
                s.sendto(dns.message.make_query(a["name"], "A").to_wire(), (a["address"], 53))
                outcome = dns.rcode.to_text(dns.message.from_wire(s.recv(4096)).rcode())
        except ConnectionRefusedError:
            outcome = "refused"
        except TimeoutError:
            outcome = "timeout"
    results.append({"outcome": outcome, "start": start, "end": time.monotonic()})
print(json.dumps(results))
"""


# Scheduling delay allowed on a busy two-core machine, beyond what the watch itself promises.
SLACK = 0.25


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


class Watcher:
    """The watch process: snap() for counters, notifies() for what it reported so far."""

    def __init__(self, lab: Topology, devices: Sequence[str], prefix: Sequence[str] = (), **options: Any):
        args = json.dumps({"devices": list(devices), "options": options})
        self.proc = lab.popen_host(
            [*prefix, sys.executable, "-c", _WATCHER, args],
            env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.notified: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "notify":
                self.notified.append(event)
            else:
                self._lines.put(event)

    def _command(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        try:
            return self._lines.get(timeout=10)
        except queue.Empty:
            raise AssertionError(f"no answer to {command!r}; stderr: {self.stderr()}") from None

    def snap(self) -> dict[str, Any]:
        return self._command("snap")

    def counters(self, device: str) -> dict[str, Any]:
        result: dict[str, Any] = self.snap()["counters"][device]
        return result

    def wait_watching(self, device: str, not_index: int | None = None, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            index = self.snap()["watching"][device]
            if index is not None and index != not_index:
                return int(index)
            time.sleep(0.05)
        raise AssertionError(f"{device} not watched (again) within {timeout} s; stderr: {self.stderr()}")

    def wait_not_watching(self, device: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.snap()["watching"][device] is not None:
            assert time.monotonic() < deadline, f"{device} still watched after {timeout} s"
            time.sleep(0.05)

    def close(self) -> dict[str, Any]:
        result = self._command("quit")
        self.proc.wait(10)
        return result

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def watcher(topology: Topology) -> Iterator[Watcher]:
    # Rechecks every second: a test that waits a second sees that they notify nothing.
    watch = Watcher(topology, ["wana", "wanb"], recheck=1.0)
    try:
        watch.wait_watching("wana")
        watch.wait_watching("wanb")
        yield watch
    finally:
        if watch.proc.poll() is None:
            closed = watch.close()
            assert closed["done"] == [True, True], closed


def traffic(lab: Topology, kind: str, device: str, address: str, count: int = 1, timeout: float = 1.0,
            name: str = "target1.test.") -> list[dict[str, Any]]:  # fmt: skip
    args = {"kind": kind, "device": device, "address": address, "port": 80, "count": count,
            "timeout": timeout, "name": name}  # fmt: skip
    proc = lab.host(
        sys.executable, "-c", _TRAFFIC, json.dumps(args), env=_env(), timeout=count * timeout + 30
    )
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results


def upstream(lab: Topology, name: str) -> Upstream:
    return next(up for up in lab.upstreams if up.name == name)


def trouble(counters: dict[str, Any]) -> int:
    keys = ("syn_unanswered", "syn_refused", "resets", "dns_failed", "dns_unanswered")
    return sum(int(counters[k]) for k in keys)


def wait_for_notify(watch: Watcher, device: str, after: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [n for n in watch.notified[after:] if n["device"] == device]
        if mine:
            return mine[0]
        time.sleep(0.02)
    raise AssertionError(f"no notify for {device} within {timeout} s; got {watch.notified}")


def test_refused_connections_count_on_their_own_device_and_answered_ones_on_theirs(
    topology: Topology, watcher: Watcher
) -> None:
    a = upstream(topology, "a")
    a.refuse()
    try:
        refused = traffic(topology, "connect", "wana", "203.0.113.10", count=3)
    finally:
        a.heal()
    assert [r["outcome"] for r in refused] == ["refused"] * 3
    answered = traffic(topology, "connect", "wanb", "203.0.113.10", count=2)
    answered6 = traffic(topology, "connect", "wanb", "2001:db8:ffff::10")
    assert [r["outcome"] for r in answered + answered6] == ["connected"] * 3
    on_a, on_b = watcher.counters("wana"), watcher.counters("wanb")
    assert (on_a["syn_sent"], on_a["syn_refused"], trouble(on_a)) == (3, 3, 3), on_a
    assert (on_b["syn_sent"], on_b["syn_answered"], trouble(on_b)) == (3, 3, 0), on_b
    assert 0 < on_b["handshake_seconds"] < 0.5, on_b
    # The link's own counters are the device's: wana carried the refused attempts, wanb the connections.
    assert on_a["link"]["ifindex"] != on_b["link"]["ifindex"]
    assert on_a["link"]["tx_packets"] >= 3 and on_b["link"]["tx_packets"] >= 6
    # notify() came with the first RST (nothing to wait for), on wana's watch alone.
    assert {n["device"] for n in watcher.notified} == {"wana"}
    first = watcher.notified[0]
    lag = first["at"] - refused[0]["end"]
    print(f"refused: notify {lag * 1000:+.1f} ms after connect() returned ECONNREFUSED")
    assert abs(lag) < SLACK, lag


def test_a_blackholed_upstream_leaves_connection_attempts_unanswered_and_notify_follows_the_patience(
    topology: Topology, watcher: Watcher
) -> None:
    a = upstream(topology, "a")
    a.blackhole()
    try:
        # One connection attempt with its retransmission at 1 s: still one unanswered attempt.
        attempt = traffic(topology, "connect", "wana", "203.0.113.10", timeout=PATIENCE + 1.0)
    finally:
        a.heal()
    assert attempt[0]["outcome"] == "timeout"
    note = wait_for_notify(watcher, "wana", 0, timeout=5)
    lag = note["at"] - attempt[0]["start"]
    print(f"blackhole: notify {lag:.3f} s after the first SYN (patience {PATIENCE} s, tick {TICK} s)")
    assert PATIENCE <= lag <= PATIENCE + TICK + SLACK, lag
    on_a, on_b = watcher.counters("wana"), watcher.counters("wanb")
    assert (on_a["syn_sent"], on_a["syn_unanswered"], trouble(on_a)) == (1, 1, 1), on_a
    assert (on_b["syn_sent"], trouble(on_b)) == (0, 0), on_b
    time.sleep(1.5)  # a recheck or more: one sign of trouble, one notify
    assert [n["device"] for n in watcher.notified] == ["wana"], watcher.notified


def test_dns_queries_to_a_silent_resolver_go_unanswered_and_answered_ones_count(
    topology: Topology, watcher: Watcher
) -> None:
    a, b = upstream(topology, "a"), upstream(topology, "b")
    b.break_dns()
    try:
        silent = traffic(topology, "dns", "wanb", b.resolver, timeout=DNS_PATIENCE + 0.5)
    finally:
        b.heal()
    answered = traffic(topology, "dns", "wana", a.resolver, count=2)
    nxdomain = traffic(topology, "dns", "wana", a.resolver, name="nowhere.test.")
    assert [r["outcome"] for r in silent + answered + nxdomain] == [
        "timeout",
        "NOERROR",
        "NOERROR",
        "NXDOMAIN",
    ]
    note = wait_for_notify(watcher, "wanb", 0, timeout=5)
    lag = note["at"] - silent[0]["start"]
    print(f"silent resolver: notify {lag:.3f} s after the query (patience {DNS_PATIENCE} s, tick {TICK} s)")
    assert DNS_PATIENCE <= lag <= DNS_PATIENCE + TICK + SLACK, lag
    on_a, on_b = watcher.counters("wana"), watcher.counters("wanb")
    assert (on_b["dns_sent"], on_b["dns_unanswered"], trouble(on_b)) == (1, 1, 1), on_b
    assert (on_a["dns_sent"], on_a["dns_answered"], trouble(on_a)) == (3, 3, 0), on_a
    assert 0 < on_a["dns_answer_seconds"] < 0.5, on_a
    assert {n["device"] for n in watcher.notified} == {"wanb"}


def recreate(lab: Topology, up: Upstream) -> None:
    """Build a deleted uplink's veth pair again as the lab does (IPv4 is enough here)."""
    lab.host("ip", "link", "add", up.iface, "type", "veth", "peer", "name", "gw", "netns", up.netns)
    subprocess.run(["ip", "-n", up.netns, "address", "add", f"{up.gateway4}/26", "dev", "gw"], check=True)
    subprocess.run(["ip", "-n", up.netns, "link", "set", "gw", "up"], check=True)
    lab.host("ip", "address", "add", f"{up.address4}/26", "dev", up.iface)
    lab.host("ip", "link", "set", up.iface, "up")
    lab.host("ip", "route", "add", "default", "via", up.gateway4, "dev", up.iface, "metric", "100")


def test_the_watch_survives_its_device_deleted_while_up(topology: Topology) -> None:
    """The socket says ENETDOWN: noticed at once, with no recheck for a minute. An attempt left pending on
    the vanished device still counts as unanswered, on time."""
    a = upstream(topology, "a")
    a.refuse()  # the upstream's rules outlive the device: every attempt through wana is refused
    watch = Watcher(topology, ["wana", "wanb"], recheck=60.0, reopen=0.2)
    try:
        first = watch.wait_watching("wana")
        watch.wait_watching("wanb")
        # Nothing behind the router answers this address (it does not forward): the SYN stays pending.
        pending = topology.popen_host(
            [sys.executable, "-c", _TRAFFIC, json.dumps({"kind": "connect", "device": "wana",
             "address": "198.51.100.99", "port": 80, "count": 1, "timeout": 3.0})],
            env=_env(), stdout=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while watch.counters("wana")["syn_sent"] == 0:
            assert time.monotonic() < deadline, "the SYN was not seen"
            time.sleep(0.02)
        sent = time.monotonic()
        topology.host("ip", "link", "del", "wana")
        watch.wait_not_watching("wana", timeout=1)
        assert watch.counters("wana")["link"] == {"ifindex": None, "rx_bytes": 0, "tx_bytes": 0,
                                                  "rx_packets": 0, "tx_packets": 0}  # fmt: skip
        note = wait_for_notify(watch, "wana", 0, timeout=PATIENCE + 1)
        assert note["counters"]["syn_unanswered"] == 1 and note["at"] - sent < PATIENCE + TICK + SLACK, note
        pending.wait(10)
        recreate(topology, a)
        again = watch.wait_watching("wana", not_index=first, timeout=2)
        assert again == watch.counters("wana")["link"]["ifindex"]
        assert traffic(topology, "connect", "wana", "203.0.113.10")[0]["outcome"] == "refused"
        assert watch.counters("wana")["syn_refused"] == 1
        assert watch.snap()["watching"]["wanb"] is not None and watch.counters("wanb")["syn_sent"] == 0
    finally:
        closed = watch.close()
    assert closed["done"] == [True, True], (closed, watch.stderr())


def test_the_watch_reads_on_across_down_and_up_and_survives_deletion_while_down(topology: Topology) -> None:
    """Down is not gone: the same socket reads on once the device is up again. Deleted while down, the
    socket says nothing: the recheck notices."""
    a = upstream(topology, "a")
    a.refuse()
    watch = Watcher(topology, ["wana"], recheck=0.5, reopen=0.2)
    try:
        first = watch.wait_watching("wana")
        topology.host("ip", "link", "set", "wana", "down")
        cpu = cpu_seconds(watch.proc.pid)
        time.sleep(1.2)  # past two rechecks
        assert watch.snap()["watching"]["wana"] == first
        assert cpu_seconds(watch.proc.pid) - cpu < 0.1
        topology.host("ip", "link", "set", "wana", "up")
        topology.host("ip", "route", "replace", "default", "via", a.gateway4, "dev", "wana", "metric", "100")
        assert traffic(topology, "connect", "wana", "203.0.113.10")[0]["outcome"] == "refused"
        assert watch.counters("wana")["syn_refused"] == 1
        assert watch.snap()["watching"]["wana"] == first

        topology.host("ip", "link", "set", "wana", "down")
        time.sleep(0.2)
        topology.host("ip", "link", "del", "wana")
        watch.wait_not_watching("wana", timeout=2)
        recreate(topology, a)
        watch.wait_watching("wana", not_index=first, timeout=2)
        assert traffic(topology, "connect", "wana", "203.0.113.10")[0]["outcome"] == "refused"
        assert watch.counters("wana")["syn_refused"] == 2
    finally:
        closed = watch.close()
    assert closed["done"] == [True], (closed, watch.stderr())
    # One socket for the device that went down and up, one for the device made anew; none in between.
    assert watch.stderr().count("traffic watch: reading wana") == 2, watch.stderr()


def test_a_device_that_does_not_exist_yet_is_watched_once_it_does(topology: Topology) -> None:
    watch = Watcher(topology, ["wanz"], reopen=0.2)
    try:
        time.sleep(0.5)
        assert watch.snap()["watching"]["wanz"] is None
        topology.host("ip", "link", "add", "wanz", "type", "veth", "peer", "name", "wanzpeer")
        watch.wait_watching("wanz", timeout=3)
    finally:
        closed = watch.close()
    assert closed["done"] == [True], (closed, watch.stderr())


def test_without_the_privilege_it_says_so_once_and_runs_on(topology: Topology) -> None:
    # Root without CAP_NET_RAW cannot open packet sockets; two watches, one warning.
    no_raw = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw"]
    watch = Watcher(topology, ["wana", "wanb"], prefix=no_raw)
    time.sleep(1.0)
    snap = watch.snap()
    assert snap["watching"] == {"wana": None, "wanb": None}
    assert snap["counters"]["wana"]["link"]["ifindex"] is not None  # the link's counters still come
    closed = watch.close()
    assert closed["done"] == [True, True], closed
    log = watch.stderr()
    assert log.count("no passive traffic evidence") == 1, log
    assert "CAP_NET_RAW" in log and "Traceback" not in log, log


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_saturating_download_costs_the_watch_nothing(topology: Topology, watcher: Watcher) -> None:
    with topology.bulk_download(0, streams=2) as download:
        time.sleep(1.0)  # the bulk source is set up and the transfer under way
        before_cpu = cpu_seconds(watcher.proc.pid)
        rx_before, _ = topology.iface_bytes("wana")
        started = time.monotonic()
        time.sleep(4.0)
        elapsed = time.monotonic() - started
        rx_after, _ = topology.iface_bytes("wana")
        cpu = cpu_seconds(watcher.proc.pid) - before_cpu
    received = rx_after - rx_before
    print(
        f"saturating download: {received / elapsed / 1e6:.0f} MB/s through wana for {elapsed:.1f} s, "
        f"the watch used {cpu:.3f} s of CPU ({cpu / elapsed * 100:.2f} % of a core)"
    )
    assert received > 50e6, received  # enough packets that reading each would show
    assert cpu < 0.05 * elapsed, cpu
    on_a = watcher.counters("wana")
    # What it did read: each download's handshake, and nothing went wrong.
    assert on_a["syn_answered"] >= download.starts >= 2, (on_a, download.starts)
    assert on_a["syn_refused"] == on_a["resets"] == on_a["dns_sent"] == 0, on_a


def test_the_service_may_open_packet_sockets() -> None:
    # Without AF_PACKET in the unit's sandbox, socket() fails with EAFNOSUPPORT and the watch sees nothing.
    unit = (ROOT / "packaging" / "nmfailover.service").read_text()
    [line] = [line for line in unit.splitlines() if line.startswith("RestrictAddressFamilies=")]
    assert "AF_PACKET" in line.removeprefix("RestrictAddressFamilies=").split(), line
