"""Hostile calls to the control interface of a real daemon over a real bus: thousands of them, every method
with wrong signatures, out-of-range and malformed values, unknown members, interfaces and paths. Each one is
refused with a caller's error (never Failed, which means a bug), the daemon stays up with nothing in its log
but refusals, and nothing a refused call could touch has changed."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nmfailover.bus import Message, MessageBus, MessageType, Variant
from nmfailover.control import ERROR_INVALID_ARGS, INTERFACE, OBJECT_PATH, SECONDS_MAX
from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

pytestmark = pytest.mark.lab

CALLS = 3000
BATCH = 20  # calls in flight at once: more, and dbus-fast 5.2 fails a send that fills the socket (EAGAIN)
SEED = 19
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
REFUSALS = frozenset({ERROR_INVALID_ARGS, UNKNOWN_METHOD, UNKNOWN_OBJECT})
SIGNATURES = {
    "Recheck": "ss",
    "ForceFailover": "d",
    "EndForce": "",
    "Prefer": "sd",
    "ClearPreference": "",
    "Status": "",
}
KNOWN_UPLINKS = frozenset({"primary", "backup", "wana", "wanb"})
STRINGS = (
    "",
    " ",
    "primary ",
    "PRIMARY",
    "wana\n",
    "prim",
    "ü",
    "😀" * 50,
    "\u202ebackup",
    "\x01\x02",
    "%s%n{}{0}",
    "<b>x</b>",
    "'; DROP TABLE uplinks; --",
    "../../etc/passwd",
    "a" * 65536,
)
# Seconds no method takes: not a number, not finite, negative, or more than the ceiling.
BAD_SECONDS = (
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    -1.0,
    -5e-324,
    -1e308,
    1e308,
    math.nextafter(SECONDS_MAX, math.inf),
    SECONDS_MAX * 2,
)
ANY_SECONDS = (*BAD_SECONDS, 0.0, -0.0, 5e-324, 1.0, 60.0, SECONDS_MAX)


def _string(rng: random.Random) -> str:
    return rng.choice(STRINGS)


# Bodies for every signature a hostile caller sends, well-formed for the bus but wrong for the method.
BODIES: dict[str, Callable[[random.Random], list[Any]]] = {
    "": lambda rng: [],
    "s": lambda rng: [_string(rng)],
    "d": lambda rng: [rng.choice(ANY_SECONDS)],
    "ds": lambda rng: [60.0, "backup"],
    "sd": lambda rng: [_string(rng), rng.choice(ANY_SECONDS)],
    "sdd": lambda rng: ["backup", 60.0, 60.0],
    "ss": lambda rng: [_string(rng), _string(rng)],
    "sss": lambda rng: ["", "", ""],
    "u": lambda rng: [rng.choice((0, 1, 60, 2**32 - 1))],
    "i": lambda rng: [rng.choice((-(2**31), -1, 0, 60, 2**31 - 1))],
    "x": lambda rng: [rng.choice((-(2**63), 0, 2**63 - 1))],
    "t": lambda rng: [rng.choice((0, 2**64 - 1))],
    "y": lambda rng: [rng.choice((0, 255))],
    "b": lambda rng: [rng.choice((True, False))],
    "o": lambda rng: ["/net/nmfailover/Failover1"],
    "g": lambda rng: ["sd"],
    "v": lambda rng: [Variant("d", 60.0)],
    "as": lambda rng: [["backup"] * rng.choice((0, 1, 1000))],
    "ad": lambda rng: [[60.0, math.nan]],
    "ay": lambda rng: [bytes(rng.choice((0, 1, 4096)))],
    "(sd)": lambda rng: [["backup", 60.0]],
    "a{sv}": lambda rng: [{"seconds": Variant("d", 60.0), "uplink": Variant("s", "backup")}],
}


@dataclass(frozen=True)
class Call:
    member: str
    signature: str
    body: list[Any]
    interface: str | None = INTERFACE
    path: str = OBJECT_PATH


def hostile_call(rng: random.Random) -> Call:
    """One call the daemon must refuse: every branch's calls are wrong whatever the random values."""
    member = rng.choice(sorted(SIGNATURES))
    kind = rng.random()
    if kind < 0.45:  # the wrong signature for the method
        signature = rng.choice([s for s in BODIES if s != SIGNATURES[member]])
        return Call(member, signature, BODIES[signature](rng))
    if kind < 0.65:  # seconds out of range, for a known uplink too
        uplink = rng.choice(sorted(KNOWN_UPLINKS))
        if rng.random() < 0.5:
            return Call("ForceFailover", "d", [rng.choice(BAD_SECONDS)])
        return Call("Prefer", "sd", [uplink, rng.choice(BAD_SECONDS)])
    if kind < 0.8:  # no such uplink, with any seconds
        return Call("Prefer", "sd", [_string(rng), rng.choice(ANY_SECONDS)])
    if kind < 0.9:  # no such member
        unknown = rng.choice(("status", "Statu", "ForceFailover2", "Set", "Get", "Destroy", "X" * 255))
        return Call(unknown, "", [], interface=rng.choice((INTERFACE, None)))
    if kind < 0.95:  # a member of an interface the object has not, or the wrong arguments for one it has
        interface, member, signature, body = rng.choice(
            (
                ("org.freedesktop.DBus.Properties", "Get", "ss", [INTERFACE, "Status"]),
                ("org.freedesktop.DBus.Properties", "Set", "ssv", [INTERFACE, "x", Variant("s", "")]),
                ("org.freedesktop.DBus.Properties", "GetAll", "", []),
                ("org.freedesktop.DBus.Introspectable", "Introspect", "s", [""]),
                ("org.freedesktop.DBus.Peer", "Ping", "d", [1.0]),
                ("net.nmfailover.Failover2", "Prefer", "sd", ["backup", 60.0]),
            )
        )
        return Call(member, signature, body, interface=interface)
    path = rng.choice(("/net/nmfailover/Failover1/x", "/net/nmfailover/Failover", "/", "/net/nmfailover"))
    return Call(member, SIGNATURES[member], BODIES[SIGNATURES[member]](rng), path=path)


def what_a_refused_call_could_change(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "preferred": state["preferred"],
        "pinned": state["pinned"],
        "forced_failover_remaining": state["forced_failover_remaining"],
        "switches": state["switches"],
        "last_switch": state["last_switch"],
        "task_restarts": state["task_restarts"],
    }


async def _call(bus: Any, call: Call) -> Any:
    return await bus.call(
        Message(
            destination="net.nmfailover.Failover1",
            path=call.path,
            interface=call.interface,
            member=call.member,
            signature=call.signature,
            body=call.body,
        )
    )


async def _status(bus: Any) -> dict[str, Any]:
    reply = await _call(bus, Call("Status", "", []))
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    parsed: dict[str, Any] = json.loads(reply.body[0])
    return parsed


async def fuzz(address: str, calls: list[Call]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The state before and after, and what went wrong with any call."""
    bus = await MessageBus(bus_address=address).connect()
    problems: list[str] = []
    try:
        before = await _status(bus)
        for start in range(0, len(calls), BATCH):
            batch = calls[start : start + BATCH]
            async with asyncio.timeout(30):
                replies = await asyncio.gather(*(_call(bus, call) for call in batch))
            for call, reply in zip(batch, replies, strict=True):
                refused = reply.message_type == MessageType.ERROR and reply.error_name in REFUSALS
                if not refused:
                    problems.append(
                        f"{call.member}({call.signature}) {str(call.body)[:80]}: {reply.error_name}"
                    )
        after = await _status(bus)
    finally:
        bus.disconnect()
    return before, after, problems


def test_thousands_of_hostile_calls_are_refused_and_change_nothing(nmlab: NMLab, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    calls = [hostile_call(rng) for _ in range(CALLS)]
    with running_daemon(nmlab, tmp_path / "daemon.log", log_level="INFO") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        wait_for(lambda: nmlab.default_route(4) == "wana", 15, "the primary's default route")
        routes = (nmlab.default_routes(4), nmlab.default_routes(6))
        started = time.monotonic()
        before, after, problems = asyncio.run(fuzz(nmlab.bus_address, calls))
        took = time.monotonic() - started
        assert problems == []
        assert what_a_refused_call_could_change(after) == what_a_refused_call_could_change(before)
        assert (nmlab.default_routes(4), nmlab.default_routes(6)) == routes
        assert daemon.proc.poll() is None
        log = daemon.text()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
        print(f"{CALLS} hostile calls answered in {took:.1f} s ({CALLS / took:.0f}/s)")
        # Still in charge: a good call is carried out.
        asyncio.run(_one_call(nmlab.bus_address, Call("ForceFailover", "d", [30.0])))
        daemon.wait_route("wanb", timeout=15)
        assert daemon.stop() == 0


async def _one_call(address: str, call: Call) -> None:
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await _call(bus, call)
        assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    finally:
        bus.disconnect()
