"""ICMP heartbeats: between HTTP proofs a healthy uplink is checked by one echo request, a missed one is
confirmed by a burst, a peer that filters ICMP sends the uplink back to HTTP rounds; and, in the lab, an echo
leaves through the device it is bound to."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Sequence

import pytest

from nmfailover import echo as echo_module
from nmfailover.detection import ECHO_STRIKES
from nmfailover.echo import echo_target
from nmfailover.engine import Engine, EngineParams, Operator
from nmfailover.lab.sandbox import Topology
from nmfailover.probe import Link, ProbeResult, Reason, RoundResult, Target
from tests.test_engine import PROFILES, SETTINGS, FakeNM, FakeProber, start, stop, wait_until
from tests.test_probe_binding import run_in_host

PEER = "192.0.2.10"
PEER6 = "2001:db8:ffff::10"
# Proofs every 0.5 s and heartbeats every 0.05 s: about ten heartbeats per proof.
HEARTBEAT_SETTINGS = SETTINGS.model_copy(
    update={
        "proof_interval": 0.5,
        "standby_proof_interval": 0.5,
        "probe_timeout": 0.04,
        "probe_timeout_min": 0.01,
    }
)


class AnsweringProber(FakeProber):
    """HTTP rounds that name the address that answered, as the real probe does."""

    async def __call__(
        self, link: Link, targets: Sequence[Target], timeout: float, needed: int
    ) -> RoundResult:
        result = await super().__call__(link, targets, timeout, needed)
        answer = result.results[0]
        named = ProbeResult(**{**answer.__dict__, "address": PEER, "ipv6": PEER6})
        return RoundResult(result.ok, (named,), needed)


class FakeEcho:
    """Echo requests answered per interface; every call recorded as (interface, address, timeout, count)."""

    def __init__(self) -> None:
        self.answering = {"wana": True, "wanb": True}
        self.calls: list[tuple[str | None, str, float, int]] = []

    async def __call__(self, interface: str | None, address: str, timeout: float, count: int) -> RoundResult:
        self.calls.append((interface, address, timeout, count))
        ok = interface is not None and self.answering[interface]
        result = ProbeResult(
            echo_target(address),
            ok,
            Reason.OK if ok else Reason.TIMEOUT,
            0.001 if ok else timeout,
            "echo",
            16 if ok else 8 * count,
            not ok,
            address,
        )
        return RoundResult(ok, (result,), 1)

    def on(self, interface: str) -> list[tuple[str | None, str, float, int]]:
        return [call for call in self.calls if call[0] == interface]


def engine_with(echo: FakeEcho, prober: FakeProber | None = None) -> tuple[Engine, FakeProber]:
    prober = prober or AnsweringProber()
    return Engine(
        EngineParams.from_settings(HEARTBEAT_SETTINGS), FakeNM(), PROFILES, prober, echo=echo
    ), prober


async def test_healthy_rounds_are_heartbeats_to_the_answering_address_with_a_proof_now_and_then() -> None:
    echo = FakeEcho()
    engine, prober = engine_with(echo)
    task = await start(engine)
    await asyncio.sleep(1.2)
    http = [i for i in prober.rounds if i == "wana"]
    beats = echo.on("wana")
    # The first round proves the path by HTTP; then heartbeats, with a proof again every 0.5 s.
    assert 2 <= len(http) <= 4, http
    # The floor, from the first: until the peer has answered an echo, the HTTP answer times (1 ms) stand
    # in for its own, so a download that starts at once does not leave heartbeats at the 0.04 s ceiling.
    assert len(beats) >= 10 and {call[1:] for call in beats} == {(PEER, 0.01, 1)}
    status = Operator(engine).status().uplinks[0]
    assert status.health == "up"
    await stop(engine, task)


async def test_a_missed_heartbeat_is_confirmed_by_a_burst_and_a_cut_fails_over_at_the_echo_pace() -> None:
    echo = FakeEcho()
    engine, _ = engine_with(echo)
    task = await start(engine)
    await wait_until(lambda: len(echo.on("wana")) >= 3)
    echo.answering["wana"] = False
    await wait_until(lambda: engine.current == 1, timeout=2)
    misses = [call for call in echo.on("wana") if call[3] > 1]
    # One heartbeat, then one burst at the heartbeat's own timeout (not the 0.04 s ceiling), and no HTTP
    # round in between: a cut is as quick to find as two echo timeouts.
    assert misses and misses[0][2:] == (0.01, HEARTBEAT_SETTINGS.echo_burst)
    await stop(engine, task)


async def test_a_lost_heartbeat_answered_by_the_burst_changes_nothing() -> None:
    """Light loss: every fourth heartbeat is lost, and so is any HTTP round right after one (the worst luck
    a lossy link can have); the burst gets through, so nothing moves."""
    echo = FakeEcho()
    just_lost = False

    class UnluckyProber(AnsweringProber):
        async def __call__(
            self, link: Link, targets: Sequence[Target], timeout: float, needed: int
        ) -> RoundResult:
            nonlocal just_lost
            result = await super().__call__(link, targets, timeout, needed)
            if link.interface == "wana" and just_lost:
                just_lost = False
                lost = ProbeResult(targets[0], False, Reason.TIMEOUT, timeout, "", unanswered=True)
                return RoundResult(False, (lost,), needed)
            return result

    class LossyEcho(FakeEcho):
        lost = 0

        async def __call__(
            self, interface: str | None, address: str, timeout: float, count: int
        ) -> RoundResult:
            nonlocal just_lost
            result = await super().__call__(interface, address, timeout, count)
            if interface != "wana":
                return result
            just_lost = False
            if count == 1 and len(self.on("wana")) % 4 == 0:
                self.lost += 1
                just_lost = True
                lost = ProbeResult(echo_target(address), False, Reason.TIMEOUT, timeout, "", 8, True, address)
                return RoundResult(False, (lost,), 1)
            return result

    echo = LossyEcho()
    engine, _ = engine_with(echo, UnluckyProber())
    task = await start(engine)
    await asyncio.sleep(1.5)
    assert echo.lost >= 5 and engine.current == 0 and engine.switches == 0
    assert Operator(engine).status().uplinks[0].health in ("up", "suspect")
    await stop(engine, task)


async def test_a_peer_that_filters_icmp_sends_the_uplink_back_to_http_rounds_without_a_switch() -> None:
    echo = FakeEcho()
    echo.answering["wana"] = False  # never answers an echo, while HTTP works
    engine, prober = engine_with(echo)
    task = await start(engine)
    await wait_until(lambda: engine.uplinks[0].watch.echo_off, timeout=3)
    # ECHO_STRIKES heartbeats, and after each proof that came before one a single echo to meet the peer.
    sent = len(echo.on("wana"))
    assert ECHO_STRIKES <= sent <= 2 * ECHO_STRIKES and all(call[3] == 1 for call in echo.on("wana"))
    before = len([i for i in prober.rounds if i == "wana"])
    await asyncio.sleep(0.3)
    assert len(echo.on("wana")) == sent  # no more echoes
    assert len([i for i in prober.rounds if i == "wana"]) - before >= 4  # HTTP at the active pace
    assert engine.current == 0 and engine.switches == 0
    await stop(engine, task)


async def test_a_recheck_asks_by_http_even_between_proofs() -> None:
    """A dispatcher hook or a link event says the path may have changed: an echo cannot tell a refused or
    unresolvable target, so the round it asks for is HTTP."""
    echo = FakeEcho()
    settings = HEARTBEAT_SETTINGS.model_copy(update={"proof_interval": 30.0, "active_interval": 5.0})
    prober = AnsweringProber()
    engine = Engine(EngineParams.from_settings(settings), FakeNM(), PROFILES, prober, echo=echo)
    task = await start(engine)
    await asyncio.sleep(0.1)
    http, echoes = len(prober.rounds), len(echo.on("wana"))
    assert await Operator(engine).recheck("wana", "dhcp4-change") == 1
    await wait_until(lambda: len(prober.rounds) > http)
    assert prober.rounds[http:] == ["wana"] and len(echo.on("wana")) == echoes
    await stop(engine, task)


async def test_http_timeouts_while_echoes_pass_are_loss_for_a_while_then_failure() -> None:
    """A lossy link fails HTTP rounds by timeouts now and then: while the proof's address answers echoes,
    NMFAILOVER_LOSS_EXCUSES such rounds in a row move nothing; a resolver or server that stays silent behind a live
    path still takes the uplink down after them."""
    echo = FakeEcho()
    settings = HEARTBEAT_SETTINGS.model_copy(update={"proof_interval": 0.1})
    prober = AnsweringProber()
    engine = Engine(EngineParams.from_settings(settings), FakeNM(), PROFILES, prober, echo=echo)
    task = await start(engine)
    await wait_until(lambda: len(echo.on("wana")) >= 2)
    before = len([i for i in prober.rounds if i == "wana"])
    prober.healthy["wana"] = False  # HTTP times out; echoes pass
    await wait_until(lambda: engine.current == 1, timeout=5)
    http = len([i for i in prober.rounds if i == "wana"]) - before
    bursts = [call for call in echo.on("wana") if call[3] == HEARTBEAT_SETTINGS.echo_burst]
    # That many rounds excused, each by an answered burst; then one failure and its confirmation.
    excuses = settings.loss_excuses
    assert (http, len(bursts)) == (excuses + 2, excuses), (http, len(bursts))
    await stop(engine, task)


async def test_a_cut_right_after_start_is_confirmed_by_a_burst() -> None:
    """The proof at start-up meets its heartbeat peer with one echo, so the very first missed heartbeat is
    confirmed by a burst, not by an HTTP round at the full timeout."""
    echo = FakeEcho()
    settings = HEARTBEAT_SETTINGS.model_copy(update={"active_interval": 0.3, "suspect_interval": 0.02})
    prober = AnsweringProber()
    engine = Engine(EngineParams.from_settings(settings), FakeNM(), PROFILES, prober, echo=echo)
    task = await start(engine)
    assert len(echo.on("wana")) == 1  # met, before any heartbeat
    echo.answering["wana"] = False
    prober.healthy["wana"] = False
    await wait_until(lambda: engine.current == 1, timeout=3)
    assert [call[3] for call in echo.on("wana")][1:] == [1, settings.echo_burst]
    assert prober.rounds.count("wana") == 1  # only the proof at start
    await stop(engine, task)


async def test_a_cut_seen_first_by_a_proof_is_confirmed_at_the_echo_pace() -> None:
    echo = FakeEcho()
    settings = HEARTBEAT_SETTINGS.model_copy(update={"proof_interval": 0.1})
    prober = AnsweringProber()
    engine = Engine(EngineParams.from_settings(settings), FakeNM(), PROFILES, prober, echo=echo)
    task = await start(engine)
    await wait_until(lambda: len(echo.on("wana")) >= 2)
    before = len([i for i in prober.rounds if i == "wana"])
    prober.healthy["wana"] = False
    echo.answering["wana"] = False
    await wait_until(lambda: engine.current == 1, timeout=5)
    # At most one HTTP round failed (whichever came first may have been a heartbeat); the rest were bursts.
    assert len([i for i in prober.rounds if i == "wana"]) - before <= 1
    await stop(engine, task)


async def test_ipv6_moves_alone_when_only_the_primarys_ipv6_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    echo = FakeEcho()
    dead: set[tuple[str | None, str]] = set()
    answer = FakeEcho.__call__

    async def sometimes(
        self: FakeEcho, interface: str | None, address: str, timeout: float, count: int
    ) -> RoundResult:
        result = await answer(self, interface, address, timeout, count)
        if (interface, address) in dead:
            lost = ProbeResult(echo_target(address), False, Reason.TIMEOUT, timeout, "", 8, True, address)
            return RoundResult(False, (lost,), 1)
        return result

    monkeypatch.setattr(FakeEcho, "__call__", sometimes)
    nm = FakeNM()
    for uuid, link in nm.links.items():
        nm.links[uuid] = dataclasses.replace(link, gateway6="2001:db8:a::1")
    settings = HEARTBEAT_SETTINGS.model_copy(update={"ipv6_interval": 0.05})
    engine = Engine(EngineParams.from_settings(settings), nm, PROFILES, AnsweringProber(), echo=echo)
    task = await start(engine)
    await wait_until(lambda: engine.uplinks[0].watch.health6.health.value == "up")
    dead.add(("wana", PEER6))
    await wait_until(lambda: nm.metrics["/dev/wana"] == (100, 200) and nm.metrics["/dev/wanb"] == (200, 100))
    assert engine.current == 0 and engine.switches == 0  # IPv4 stays, and no switch is counted
    assert Operator(engine).status().uplinks[0].ipv6_health == "down"
    dead.clear()
    await wait_until(lambda: nm.metrics["/dev/wana"] == (100, 100) and nm.metrics["/dev/wanb"] == (200, 200))
    await stop(engine, task)


async def test_heartbeats_off_means_http_rounds_only() -> None:
    echo = FakeEcho()
    settings = HEARTBEAT_SETTINGS.model_copy(update={"heartbeat": False})
    engine = Engine(EngineParams.from_settings(settings), FakeNM(), PROFILES, AnsweringProber(), echo=echo)
    task = await start(engine)
    await asyncio.sleep(0.3)
    assert echo.calls == []
    await stop(engine, task)


_ECHO_SCRIPT = """
import asyncio, json, sys
from nmfailover.echo import echo
a = json.loads(sys.argv[1])
r = asyncio.run(echo(a["iface"], a["address"], a["timeout"], a["count"]))
print(json.dumps({"ok": r.ok, "reason": r.reason, "unanswered": r.unanswered, "detail": r.detail}))
"""


def run_echo(topology: Topology, iface: str, address: str, count: int = 1) -> dict[str, object]:
    return run_in_host(
        topology, _ECHO_SCRIPT, {"iface": iface, "address": address, "timeout": 0.5, "count": count}
    )


@pytest.mark.parametrize("address", ["203.0.113.10", "2001:db8:ffff::10"])
def test_an_echo_leaves_through_its_device_not_the_default_route(topology: Topology, address: str) -> None:
    assert run_echo(topology, "wana", address)["ok"] is True
    topology.upstreams[0].blackhole()  # the default route's uplink goes silent beyond its router
    dead = run_echo(topology, "wana", address, count=4)
    assert (dead["ok"], dead["reason"], dead["unanswered"]) == (False, "timeout", True), json.dumps(dead)
    assert (
        run_echo(topology, "wanb", address)["ok"] is True
    )  # the backup answers although it has no default route
    topology.upstreams[0].heal()
    assert run_echo(topology, "wana", address)["ok"] is True
    gone = run_echo(topology, "nosuchdev0", address)
    assert (gone["ok"], gone["reason"]) == (False, "no-device")


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs CAP_NET_RAW")
async def test_replies_waiting_in_the_socket_count_when_the_loop_wakes_late() -> None:
    # A busy machine: the loop is blocked past the deadline while the loopback's reply already waits to be
    # read. That is our lateness, not a lost echo. (Loopback proves nothing about binding: the lab does.)

    async def hog() -> None:
        await asyncio.sleep(0.01)
        time.sleep(0.5)

    blocker = asyncio.create_task(hog())
    result = await echo_module.echo("lo", "127.0.0.1", 0.3, count=4)
    await blocker
    assert result.ok and result.answered is not None and result.sent is not None, result
    assert 1 <= result.answered <= result.sent < 4, "what the blocked loop never sent is not counted lost"
