"""Engine wiring with fakes behind its Protocols (the real adapter is proven in test_nm/test_daemon), and
its supervision: crashes restart a loop or end the engine, a stuck loop stops the watchdog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from loguru import logger

from nmfailover.config import load_settings
from nmfailover.engine import Engine, EngineParams, Operator, SwitchEvent
from nmfailover.engine.supervisor import Supervisor
from nmfailover.errors import InvalidRequest, NMError, NMUnavailable, TaskGaveUp
from nmfailover.nm import (
    CarrierChanged,
    DeviceState,
    DeviceStateChanged,
    Dns,
    LinkState,
    Metrics,
    Profile,
    ResolverRoutes,
    Restore,
)
from nmfailover.probe import Link, ProbeResult, Reason, RoundResult, Target, parse_target

SETTINGS = load_settings(
    {
        "NMFAILOVER_UPLINKS": "primary,backup",
        "NMFAILOVER_PROBE_URLS": "http://192.0.2.10/generate_204",
        "NMFAILOVER_ENV_FILE": "/dev/null",
        "NMFAILOVER_PROBE_TIMEOUT": "0.01",
        "NMFAILOVER_ACTIVE_INTERVAL": "0.05",
        "NMFAILOVER_STANDBY_INTERVAL": "0.05",
        "NMFAILOVER_SUSPECT_INTERVAL": "0.02",
        "NMFAILOVER_FAILBACK_HOLD_DOWN": "0.2",
    }
)
PROFILES = [
    Profile(
        spec=name,
        uuid=f"uuid-{name}",
        id=name,
        interface_name=iface,
        metric4=-1,
        metric6=-1,
        autoconnect_priority=0,
        never_default=False,
    )
    for name, iface in (("primary", "wana"), ("backup", "wanb"))
]


@pytest.fixture(autouse=True)
def private_runtime_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))


class FakeNM:
    def __init__(self, profiles: Sequence[Profile] = PROFILES) -> None:
        self.profiles = profiles
        self.links = {
            p.uuid: LinkState(
                uuid=p.uuid,
                device=f"/dev/{p.interface_name}",
                interface=p.interface_name,
                state=DeviceState.ACTIVATED,
                nameservers=("192.0.2.53",),
            )
            for p in profiles
        }
        self.metrics: dict[str, tuple[int, int]] = {f"/dev/{p.interface_name}": (-1, -1) for p in profiles}
        self.priorities: dict[str, int] = {p.uuid: 0 for p in profiles}
        self.calls: list[tuple[str, int]] = []
        self.fail_writes = False
        self.ipv6_withdrawn: set[str] = set()
        self.disconnected = asyncio.Event()

    async def connect(self) -> None:
        self.disconnected = asyncio.Event()

    async def close(self) -> None:
        pass

    async def wait_for_disconnect(self) -> None:
        await self.disconnected.wait()

    async def link_state(self, uuid: str) -> LinkState:
        return self.links[uuid]

    async def set_route_metrics(
        self, device: str, metric4: int, metric6: int, mptcp_flags: int | None = None
    ) -> bool:
        if self.fail_writes:
            raise NMUnavailable("NetworkManager is not answering")
        changed = self.metrics[device] != (metric4, metric6)
        self.metrics[device] = (metric4, metric6)
        self.calls.append((device, metric4))
        return changed

    async def set_metered(self, device: str, metered: int) -> bool:
        raise AssertionError("no uplink is configured metered here")  # tests/test_metered.py covers it

    async def set_dns(self, device: str, dns: Dns) -> bool:
        raise AssertionError("no DNS is moved here")  # tests/test_dns_override.py covers it

    async def set_resolver_routes(self, device: str, wanted: ResolverRoutes) -> bool:
        raise AssertionError("no DNS is moved here")

    async def restore_applied(self, device: str, back: Restore) -> bool:
        return await self.set_route_metrics(device, back.metric4, back.metric6)

    async def set_ipv6_default(self, device: str, allowed: bool, gateway: str | None = None) -> str | None:
        (self.ipv6_withdrawn.discard if allowed else self.ipv6_withdrawn.add)(device)
        return None

    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool:
        if self.fail_writes:
            raise NMError("Update2 failed")
        self.priorities[uuid] = priority
        return True

    async def profile(self, uuid: str) -> Profile:
        return next(p for p in self.profiles if p.uuid == uuid)

    async def has_profile(self, uuid: str) -> bool:
        return uuid in self.links

    async def applied_metrics(self, device: str) -> Metrics:
        return Metrics(*self.metrics[device])


class FakeProber:
    """Answers per interface from a switchable table; counts rounds."""

    def __init__(self) -> None:
        self.healthy = {"wana": True, "wanb": True}
        self.rounds: list[str | None] = []
        self.asked: list[tuple[str | None, list[str]]] = []

    async def __call__(
        self, link: Link, targets: Sequence[Target], timeout: float, needed: int
    ) -> RoundResult:
        self.rounds.append(link.interface)
        self.asked.append((link.interface, [t.url for t in targets]))
        if link.interface is None:
            result = ProbeResult(targets[0], False, Reason.NO_DEVICE, 0.0, "no device")
        elif self.healthy[link.interface]:
            result = ProbeResult(targets[0], True, Reason.OK, 0.001, "HTTP 204")
        else:
            result = ProbeResult(targets[0], False, Reason.TIMEOUT, timeout, "no answer", unanswered=True)
        return RoundResult(ok=result.ok, results=(result,), needed=needed)


async def wait_until(condition: object, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


Harness = tuple[Engine, FakeNM, FakeProber, asyncio.Task[None]]


async def start(engine: Engine) -> asyncio.Task[None]:
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(engine.ready.wait(), 2)
    return task


async def stop(engine: Engine, task: asyncio.Task[None]) -> None:
    engine.stop()
    await task


async def ended(engine: Engine, task: asyncio.Task[None]) -> None:
    """A fixture's teardown: the engine stops as at SIGTERM, or is cancelled if it will not, and is awaited
    either way; never left running into the next test. How it ended was the test's to check."""
    engine.stop()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    nm, prober = FakeNM(), FakeProber()
    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober)
    task = await start(engine)
    yield engine, nm, prober, task
    await ended(engine, task)


@pytest.fixture
async def slow_harness() -> AsyncIterator[Harness]:
    """Rounds only every 5 s: any round sooner was caused by an event, however loaded the machine."""
    slow = SETTINGS.model_copy(
        update={"active_interval": 5.0, "standby_interval": 5.0, "suspect_interval": 5.0}
    )
    nm, prober = FakeNM(), FakeProber()
    engine = Engine(EngineParams.from_settings(slow), nm, PROFILES, prober)
    task = await start(engine)
    yield engine, nm, prober, task
    await ended(engine, task)


class SteppedClock:
    """The monotonic clock plus what the test moved it on: a duration the engine waits out ends when the
    test says so, not when a loaded machine gets round to looking."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


async def test_starts_on_primary_and_ranks_metrics(harness: Harness) -> None:
    engine, nm, _, task = harness
    assert engine.current == 0
    assert nm.metrics == {"/dev/wana": (100, 100), "/dev/wanb": (200, 200)}
    assert nm.priorities == {"uuid-primary": 2, "uuid-backup": 1}
    await stop(engine, task)


async def test_fails_over_new_preferred_first_then_back_and_restores(harness: Harness) -> None:
    engine, nm, prober, task = harness
    nm.calls.clear()
    prober.healthy["wana"] = False
    await wait_until(lambda: engine.current == 1)
    await wait_until(lambda: nm.metrics == {"/dev/wanb": (100, 100), "/dev/wana": (200, 200)})
    assert nm.calls[:2] == [("/dev/wanb", 100), ("/dev/wana", 200)]  # promote before demote
    prober.healthy["wana"] = True
    await wait_until(lambda: engine.current == 0)
    assert engine.switches == 2
    await stop(engine, task)
    assert nm.metrics == {"/dev/wana": (-1, -1), "/dev/wanb": (-1, -1)}
    assert nm.priorities == {"uuid-primary": 0, "uuid-backup": 0}


async def test_failed_write_is_retried_and_never_crashes(harness: Harness) -> None:
    engine, nm, prober, task = harness
    nm.fail_writes = True
    prober.healthy["wana"] = False
    await wait_until(lambda: engine.current == 1)
    await asyncio.sleep(0.15)
    assert nm.metrics["/dev/wanb"] == (200, 200) and not task.done()
    nm.fail_writes = False
    await wait_until(lambda: nm.metrics["/dev/wanb"] == (100, 100))
    assert engine.supervisor.restarts == dict.fromkeys(engine.supervisor.restarts, 0)  # a fault, not a crash
    await stop(engine, task)


async def test_device_state_event_triggers_immediate_probe_and_reactivation_reapplies(
    slow_harness: Harness,
) -> None:
    engine, nm, prober, task = slow_harness
    await asyncio.sleep(0.06)  # let the loops settle into their intervals
    nm.links["uuid-primary"] = LinkState(
        uuid="uuid-primary", device="/dev/wana", interface="wana", state=DeviceState.UNAVAILABLE
    )
    prober.rounds.clear()
    engine.on_nm_event(DeviceStateChanged("/dev/wana", DeviceState.UNAVAILABLE, DeviceState.ACTIVATED))
    await wait_until(lambda: None in prober.rounds, timeout=2)  # well before the 5 s interval
    await wait_until(lambda: engine.current == 1)  # no device: down at once, no fail count
    # NetworkManager re-activates the profile with its own metrics: the preference is put back.
    nm.metrics["/dev/wana"] = (-1, -1)
    nm.links["uuid-primary"] = LinkState(
        uuid="uuid-primary", device="/dev/wana", interface="wana", state=DeviceState.ACTIVATED
    )
    engine.on_nm_event(DeviceStateChanged("/dev/wana", DeviceState.ACTIVATED, DeviceState.IP_CONFIG))
    await wait_until(lambda: nm.metrics["/dev/wana"] != (-1, -1))
    await stop(engine, task)


async def test_carrier_event_probes_every_uplink_at_once(slow_harness: Harness) -> None:
    engine, _, prober, task = slow_harness
    await asyncio.sleep(0.06)
    prober.rounds.clear()
    # No link field changes with the carrier: only the event's own type can explain these rounds.
    engine.on_nm_event(CarrierChanged("/dev/wana", False))
    await wait_until(
        lambda: {"wana", "wanb"} <= set(prober.rounds), timeout=2
    )  # well before the 5 s interval
    await stop(engine, task)


async def test_bus_loss_reconnects_and_reapplies(harness: Harness) -> None:
    engine, nm, _, task = harness
    nm.metrics["/dev/wana"] = (-1, -1)  # what a restarted NetworkManager would bring back
    nm.disconnected.set()
    await wait_until(lambda: nm.metrics["/dev/wana"] == (100, 100), timeout=3)
    await stop(engine, task)


async def test_forced_failover_moves_then_returns_by_itself() -> None:
    nm, prober = FakeNM(), FakeProber()
    events: list[str] = []

    async def record(event: SwitchEvent) -> None:
        events.append(f"{event.action}:{event.to_profile}")

    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober, listeners=[record])
    operator = Operator(engine)
    task = await start(engine)
    with pytest.raises(InvalidRequest, match="greater than 0"):
        await operator.force_failover(0)
    await operator.force_failover(0.15)
    assert engine.current == 1 and nm.metrics["/dev/wanb"] == (100, 100)
    assert operator.status().forced_failover_remaining > 0
    await wait_until(lambda: engine.current == 0, timeout=2)
    assert nm.metrics["/dev/wana"] == (100, 100)
    await wait_until(lambda: len(events) >= 2)
    assert events == ["avoid:backup", "failback:primary"]
    await stop(engine, task)


async def test_pin_and_clear(harness: Harness) -> None:
    engine, _, prober, task = harness
    operator = Operator(engine)
    with pytest.raises(InvalidRequest, match="no uplink 'wanx'"):
        await operator.prefer("wanx")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match="seconds must be"):
            await operator.prefer("wanb", bad)
    await operator.prefer("wanb")
    assert engine.current == 1 and operator.status().pinned == "backup"
    prober.healthy["wanb"] = False  # a pin never holds traffic on a dead uplink
    await wait_until(lambda: engine.current == 0)
    prober.healthy["wanb"] = True
    await wait_until(lambda: engine.current == 1)  # healthy again: the pin applies again
    await operator.clear_preference()
    await wait_until(lambda: engine.current == 0)
    await stop(engine, task)


async def test_timed_pin_expires_by_itself() -> None:
    # The pin's time passes only when the test moves the clock: a pin of a fraction of a second in real time
    # could run out on a loaded machine before prefer() itself had applied it.
    clock = SteppedClock()
    nm, prober = FakeNM(), FakeProber()
    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober, supervisor=Supervisor(clock))
    operator = Operator(engine)
    task = await start(engine)
    try:
        await operator.prefer("backup", 60)
        assert engine.current == 1
        clock.advance(59)
        rounds = len(prober.rounds)
        await wait_until(lambda: len(prober.rounds) >= rounds + 4)  # rounds that decided with the pin on
        assert engine.current == 1 and operator.status().pinned == "backup"
        clock.advance(1)
        await wait_until(lambda: engine.current == 0, timeout=3)
        assert engine.pin is None and operator.status().pinned is None
    finally:
        await ended(engine, task)


async def test_guard_vetoes_failback_until_it_allows() -> None:
    allow = False
    asked: list[str] = []

    async def guard(event: SwitchEvent) -> bool:
        asked.append(event.action)
        return allow

    nm, prober = FakeNM(), FakeProber()
    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober, failback_guard=guard)
    task = await start(engine)
    prober.healthy["wana"] = False
    await wait_until(lambda: engine.current == 1)
    prober.healthy["wana"] = True
    await wait_until(lambda: len(asked) >= 2, timeout=3)  # asked, vetoed, asked again later
    assert engine.current == 1 and set(asked) == {"failback"}
    allow = True
    await wait_until(lambda: engine.current == 0, timeout=3)
    await stop(engine, task)


async def test_recheck_wakes_only_the_named_uplink(slow_harness: Harness) -> None:
    engine, _, prober, task = slow_harness
    operator = Operator(engine)
    await asyncio.sleep(0.06)
    prober.rounds.clear()
    assert await operator.recheck("wanb", "dhcp4-change") == 1
    await wait_until(lambda: "wanb" in prober.rounds, timeout=2)  # well before the 5 s interval
    assert await operator.recheck("", "") == 2
    status = operator.status()
    assert [u.device for u in status.uplinks] == ["wana", "wanb"]
    assert status.preferred == "primary" and status.uplinks[0].carrying_traffic is True
    await stop(engine, task)


async def test_status_only_reads() -> None:
    nm, prober = FakeNM(), FakeProber()
    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober)
    operator = Operator(engine)
    task = await start(engine)
    await operator.prefer("backup", 0.05)
    await asyncio.sleep(0.1)  # the pin has expired, but only the engine's timer may act on that
    engine.stop()
    await task
    pin = engine.pin
    logged: list[str] = []
    sink = logger.add(logged.append)
    try:
        first, second = operator.status(), operator.status()
    finally:
        logger.remove(sink)
    assert first.pinned is None and engine.pin == pin and logged == []
    clocks = {"last_switch_at", "hold_down_remaining", "forced_failover_remaining"}  # off a running clock
    assert first.model_dump(exclude=clocks) == second.model_dump(exclude=clocks)


async def test_nothing_healthy_at_start_changes_nothing() -> None:
    nm, prober = FakeNM(), FakeProber()
    prober.healthy.update(wana=False, wanb=False)
    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober)
    task = await start(engine)
    await asyncio.sleep(0.2)
    assert nm.calls == [] and nm.priorities == {"uuid-primary": 0, "uuid-backup": 0}
    prober.healthy["wanb"] = True  # only the backup comes up: traffic goes there
    await wait_until(lambda: nm.metrics["/dev/wanb"] == (100, 100))
    await stop(engine, task)


async def test_steady_rounds_ask_the_quorum_in_rotation_and_doubt_asks_everyone() -> None:
    urls = [f"http://192.0.2.{i}/generate_204" for i in (10, 11, 12)]
    settings = SETTINGS.model_copy(update={"probe_targets": tuple(parse_target(u) for u in urls)})
    nm, prober = FakeNM(), FakeProber()
    engine = Engine(EngineParams.from_settings(settings), nm, PROFILES, prober)
    task = await start(engine)
    assert [len(t) for i, t in prober.asked if i == "wana"] == [3]  # first round: no verdict yet
    await wait_until(lambda: sum(i == "wana" for i, _ in prober.asked) >= 4)
    lean = [t for i, t in prober.asked if i == "wana"][1:4]
    assert [len(t) for t in lean] == [1, 1, 1] and len({t[0] for t in lean}) == 3  # every target in turn
    prober.healthy["wana"] = False
    await wait_until(lambda: engine.current == 1)
    after = [t for i, t in prober.asked if i == "wana"]
    failed_lean = next(n for n, t in enumerate(after) if n > 0 and len(t) == 3)
    assert all(len(t) == 3 for t in after[failed_lean:])  # in doubt: every target, every round
    await stop(engine, task)


# -- supervision --------------------------------------------------------------------------------------


class CrashingProber(FakeProber):
    """Raises a bug-like exception on the chosen interface for the next `crashes` rounds."""

    def __init__(self, interface: str, crashes: int) -> None:
        super().__init__()
        self.interface, self.crashes = interface, crashes

    async def __call__(
        self, link: Link, targets: Sequence[Target], timeout: float, needed: int
    ) -> RoundResult:
        if link.interface == self.interface and self.crashes > 0 and self.rounds:
            self.crashes -= 1
            self.rounds.append("crash")
            raise RuntimeError("injected crash in a probe round")
        return await super().__call__(link, targets, timeout, needed)


def capture_log() -> tuple[list[str], int]:
    lines: list[str] = []
    return lines, logger.add(lambda message: lines.append(str(message)), level="DEBUG")


async def test_a_crashed_probe_loop_is_logged_and_runs_again() -> None:
    nm, prober = FakeNM(), CrashingProber("wana", crashes=1)
    engine = Engine(
        EngineParams.from_settings(SETTINGS), nm, PROFILES, prober, supervisor=Supervisor(backoff=(0.05,))
    )
    lines, sink = capture_log()
    try:
        task = await start(engine)
        await wait_until(lambda: "crash" in prober.rounds)
        crash_at = prober.rounds.index("crash")
        # The uplink is probed again, so its death is still noticed.
        await wait_until(lambda: "wana" in prober.rounds[crash_at + 1 :])
        prober.healthy["wana"] = False
        await wait_until(lambda: engine.current == 1)
        assert Operator(engine).status().task_restarts["probe-primary"] == 1
        await stop(engine, task)
    finally:
        logger.remove(sink)
    text = "".join(lines)
    assert "task probe-primary crashed" in text and "Traceback" in text and "injected crash" in text


async def test_a_crashed_event_intake_is_logged_and_runs_again(slow_harness: Harness) -> None:
    engine, nm, prober, task = slow_harness
    original = nm.link_state
    calls = 0

    async def crash_once(uuid: str) -> LinkState:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("injected crash in the event intake")
        return await original(uuid)

    nm.link_state = crash_once  # type: ignore[method-assign]
    lines, sink = capture_log()
    try:
        engine.on_nm_event(CarrierChanged("/dev/wana", False))
        await wait_until(lambda: engine.supervisor.restarts.get("nm-events") == 1, timeout=3)
        # Restarted: it re-reads the links and hears the next event.
        await asyncio.sleep(0.6)  # the back-off
        prober.rounds.clear()
        engine.on_nm_event(CarrierChanged("/dev/wana", True))
        await wait_until(lambda: {"wana", "wanb"} <= set(prober.rounds), timeout=3)  # before the 5 s interval
    finally:
        logger.remove(sink)
    assert "task nm-events crashed" in "".join(lines) and "Traceback" in "".join(lines)
    await stop(engine, task)


async def test_a_loop_that_keeps_crashing_ends_the_engine_after_restoring() -> None:
    nm, prober = FakeNM(), CrashingProber("wana", crashes=1000)
    engine = Engine(
        EngineParams.from_settings(SETTINGS),
        nm,
        PROFILES,
        prober,
        supervisor=Supervisor(backoff=(0.01,), budget=3),
    )
    task = await start(engine)
    assert nm.metrics["/dev/wana"] == (100, 100)
    with pytest.raises(TaskGaveUp, match="probe-primary crashed 4 times"):
        await asyncio.wait_for(task, 5)
    assert nm.metrics == {"/dev/wana": (-1, -1), "/dev/wanb": (-1, -1)}  # left as it was found


async def test_a_stuck_probe_loop_is_named_and_stops_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from nmfailover.daemon import systemd

    hang = asyncio.Event()

    class HangingProber(FakeProber):
        async def __call__(
            self, link: Link, targets: Sequence[Target], timeout: float, needed: int
        ) -> RoundResult:
            if link.interface == "wanb" and hang.is_set():
                await asyncio.Event().wait()  # a bug: a round that never ends
            return await super().__call__(link, targets, timeout, needed)

    address = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.setblocking(False)
        nm, prober = FakeNM(), HangingProber()
        engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober)
        owned = asyncio.Event()
        owned.set()
        task = asyncio.create_task(engine.run({"systemd": lambda: systemd(engine, owned, 0.1)}))
        await asyncio.wait_for(engine.ready.wait(), 2)

        def received() -> list[str]:
            found = []
            while True:
                try:
                    found.append(sock.recv(4096).decode())
                except BlockingIOError:
                    return found

        await asyncio.sleep(0.5)
        assert any("WATCHDOG=1" in m for m in received()), "a healthy daemon pets the watchdog"
        hang.set()
        await wait_until(lambda: engine.supervisor.stuck() == ["probe-backup"], timeout=5)
        received()
        await asyncio.sleep(0.5)  # five watchdog periods
        assert not any("WATCHDOG=1" in m for m in received()), "petted while a loop was stuck"
        await stop(engine, task)


async def test_the_third_uplink_takes_over_as_fast_as_the_second() -> None:
    """Standby uplinks are probed only every 5 s; while the uplink carrying traffic is in doubt, the next
    candidate is asked at once, so each takeover in a cascade is as quick as the first."""
    fallback = Profile("fallback", "uuid-fallback", "fallback", "wanc", -1, -1, 0, False)
    profiles = [*PROFILES, fallback]
    settings = SETTINGS.model_copy(
        update={"standby_interval": 5.0, "failback_hold_down": 60.0, "failback_hold_down_max": 60.0}
    )
    nm, prober = FakeNM(profiles), FakeProber()
    prober.healthy["wanc"] = True
    engine = Engine(EngineParams.from_settings(settings), nm, profiles, prober)
    task = await start(engine)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.1)
    prober.healthy["wana"] = False
    started = loop.time()
    await wait_until(lambda: engine.current == 1, timeout=2)
    second = loop.time() - started
    await asyncio.sleep(0.2)
    prober.healthy["wanb"] = False
    started = loop.time()
    await wait_until(lambda: engine.current == 2, timeout=4)
    third = loop.time() - started
    assert third < 1.0, f"the third uplink took {third:.2f} s (the second {second:.2f} s), standby every 5 s"
    await stop(engine, task)


async def test_both_dying_together_switch_nowhere_until_one_returns() -> None:
    nm, prober = FakeNM(), FakeProber()
    switches: list[str] = []

    async def record(event: SwitchEvent) -> None:
        switches.append(event.to_profile)

    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, prober, listeners=[record])
    task = await start(engine)
    prober.healthy.update(wana=False, wanb=False)
    await wait_until(lambda: all(u.health.health.value == "down" for u in engine.uplinks))
    await asyncio.sleep(0.2)
    assert switches == [] and engine.current == 0
    prober.healthy["wanb"] = True
    await wait_until(lambda: engine.current == 1)
    await stop(engine, task)


async def test_a_standby_that_died_silently_is_found_out_before_traffic_moves_to_it() -> None:
    fallback = Profile("fallback", "uuid-fallback", "fallback", "wanc", -1, -1, 0, False)
    profiles = [*PROFILES, fallback]
    settings = SETTINGS.model_copy(
        update={"standby_interval": 5.0, "failback_hold_down": 60.0, "failback_hold_down_max": 60.0}
    )
    nm, prober = FakeNM(profiles), FakeProber()
    prober.healthy["wanc"] = True
    moves: list[str] = []

    async def record(event: SwitchEvent) -> None:
        moves.append(event.to_profile)

    engine = Engine(EngineParams.from_settings(settings), nm, profiles, prober, listeners=[record])
    task = await start(engine)
    prober.healthy["wana"] = False
    await wait_until(lambda: engine.current == 1, timeout=2)
    await asyncio.sleep(0.2)
    # The fallback's last verdict (up) is seconds old; it has died since, and now the backup dies too.
    prober.healthy.update(wanb=False, wanc=False)
    await wait_until(lambda: engine.uplinks[1].health.health.value == "down", timeout=2)
    await asyncio.sleep(0.3)
    assert moves == ["backup"], "traffic moved to an uplink nobody had checked since it died"
    await stop(engine, task)


async def test_timeouts_follow_each_links_answer_times() -> None:
    settings = SETTINGS.model_copy(update={"probe_timeout": 0.04, "probe_timeout_min": 0.02})
    nm, prober = FakeNM(), FakeProber()
    timeouts: list[float] = []
    answer = prober.__call__

    async def recording(link: Link, targets: Sequence[Target], timeout: float, needed: int) -> RoundResult:
        if link.interface == "wana":
            timeouts.append(timeout)
        return await answer(link, targets, timeout, needed)

    engine = Engine(EngineParams.from_settings(settings), nm, PROFILES, recording)
    task = await start(engine)
    await wait_until(lambda: len(timeouts) >= 3)
    # No answer seen yet: the ceiling; then the link answered in 1 ms: the floor.
    assert timeouts[0] == 0.04 and timeouts[2] == 0.02
    assert Operator(engine).status().uplinks[0].probe_timeout_ms == 20
    await stop(engine, task)


async def test_a_busy_link_whose_probes_time_out_is_slow_not_dead() -> None:
    nm, prober = FakeNM(), FakeProber()
    receiving = {"wana": False}
    counters = {"wana": 0, "wanb": 0}

    def rx(interface: str | None) -> int | None:
        if interface is None:
            return None
        if receiving.get(interface):
            counters[interface] += 1_000_000  # a download keeps arriving: 1 MB between any two reads
        return counters[interface]

    moves: list[str] = []

    async def record(event: SwitchEvent) -> None:
        moves.append(event.to_profile)

    timeouts: list[float] = []
    answer = prober.__call__

    async def recording(link: Link, targets: Sequence[Target], timeout: float, needed: int) -> RoundResult:
        if link.interface == "wana":
            timeouts.append(timeout)
        return await answer(link, targets, timeout, needed)

    settings = SETTINGS.model_copy(update={"probe_timeout": 0.04, "probe_timeout_min": 0.01})
    engine = Engine(
        EngineParams.from_settings(settings), nm, PROFILES, recording, listeners=[record], rx_counter=rx
    )
    task = await start(engine)
    await wait_until(lambda: len(timeouts) >= 3)  # its answer times learnt while it is quiet
    receiving["wana"] = True  # a download starts,
    prober.healthy["wana"] = False  # and every probe through the primary times out: its queue is full
    await asyncio.sleep(0.5)  # ten rounds and more
    assert moves == [] and engine.current == 0
    assert Operator(engine).status().uplinks[0].busy_rx_bytes == 1_000_000
    receiving["wana"] = False  # and now nothing arrives any more: dead, as fast as ever
    asked = len(timeouts)
    await wait_until(lambda: engine.current == 1, timeout=1)
    # Traffic that stops dead is no slow moment: the confirming round gets no extra patience.
    assert timeouts[asked : asked + 2] == [0.01, 0.01], timeouts[asked - 2 :]
    await wait_until(lambda: moves == ["backup"])  # listeners hear of it in the background
    await stop(engine, task)


async def test_a_confirming_round_waits_the_full_timeout() -> None:
    settings = SETTINGS.model_copy(update={"probe_timeout": 0.04, "probe_timeout_min": 0.01})
    nm, prober = FakeNM(), FakeProber()
    timeouts: list[tuple[bool, float]] = []
    answer = prober.__call__

    async def recording(link: Link, targets: Sequence[Target], timeout: float, needed: int) -> RoundResult:
        result = await answer(link, targets, timeout, needed)
        if link.interface == "wana":
            timeouts.append((result.ok, timeout))
        return result

    engine = Engine(EngineParams.from_settings(settings), nm, PROFILES, recording)
    task = await start(engine)
    await wait_until(lambda: len(timeouts) >= 3)
    prober.healthy["wana"] = False
    await wait_until(lambda: engine.current == 1)
    first_failure = next(i for i, (ok, _) in enumerate(timeouts) if not ok)
    assert timeouts[first_failure][1] == 0.01 and timeouts[first_failure + 1][1] == 0.04
    await stop(engine, task)


class LossyProber(FakeProber):
    """The primary loses every n-th answer (n = 0: none)."""

    def __init__(self) -> None:
        super().__init__()
        self.every = 0
        self.count = 0

    async def __call__(
        self, link: Link, targets: Sequence[Target], timeout: float, needed: int
    ) -> RoundResult:
        if link.interface == "wana" and self.every:
            self.count += 1
            self.healthy["wana"] = self.count % self.every != 0
        return await super().__call__(link, targets, timeout, needed)


@pytest.mark.parametrize(
    ("every", "moves"), [(5, []), (2, ["backup"])], ids=["20pct-loss-stays", "50pct-loss-moves"]
)
async def test_brownout_moves_traffic_and_light_loss_never_does(every: int, moves: list[str]) -> None:
    settings = SETTINGS.model_copy(update={"brownout_window": 1.0, "failback_hold_down": 60.0})
    nm, prober = FakeNM(), LossyProber()
    seen: list[str] = []

    async def record(event: SwitchEvent) -> None:
        seen.append(event.to_profile)

    engine = Engine(EngineParams.from_settings(settings), nm, PROFILES, prober, listeners=[record])
    task = await start(engine)
    await asyncio.sleep(0.3)
    prober.every = every
    await asyncio.sleep(2.0)
    assert seen == moves
    status = Operator(engine).status().uplinks[0]
    assert status.loss_pct == pytest.approx(100 / every, abs=12)
    if not moves:
        assert status.health in ("up", "suspect") and status.degraded is None
    await stop(engine, task)
