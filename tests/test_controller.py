"""Controller wiring with fakes behind its Protocols (the real adapter is proven in test_nm/test_daemon)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from nmfailover.config import load_settings
from nmfailover.controller import Controller
from nmfailover.nm import LinkState, Metrics, NMError, NMUnavailable, Profile
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
    def __init__(self) -> None:
        self.links = {
            p.uuid: LinkState(
                uuid=p.uuid,
                device=f"/dev/{p.interface_name}",
                interface=p.interface_name,
                state=100,
                nameservers=("192.0.2.53",),
            )
            for p in PROFILES
        }
        self.metrics: dict[str, tuple[int, int]] = {f"/dev/{p.interface_name}": (-1, -1) for p in PROFILES}
        self.priorities: dict[str, int] = {p.uuid: 0 for p in PROFILES}
        self.calls: list[tuple[str, int]] = []
        self.fail_writes = False
        self.disconnected = asyncio.Event()

    async def connect(self) -> None:
        self.disconnected = asyncio.Event()

    async def close(self) -> None:
        pass

    async def wait_for_disconnect(self) -> None:
        await self.disconnected.wait()

    async def link_state(self, uuid: str) -> LinkState:
        return self.links[uuid]

    async def set_route_metrics(self, device: str, metric4: int, metric6: int) -> bool:
        if self.fail_writes:
            raise NMUnavailable("NetworkManager is not answering")
        changed = self.metrics[device] != (metric4, metric6)
        self.metrics[device] = (metric4, metric6)
        self.calls.append((device, metric4))
        return changed

    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool:
        if self.fail_writes:
            raise NMError("Update2 failed")
        self.priorities[uuid] = priority
        return True

    async def profile(self, uuid: str) -> Profile:
        return next(p for p in PROFILES if p.uuid == uuid)

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
            result = ProbeResult(targets[0], False, Reason.TIMEOUT, timeout, "no answer")
        return RoundResult(ok=result.ok, results=(result,), needed=needed)


async def wait_until(condition: object, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def harness() -> tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]]:
    nm, prober = FakeNM(), FakeProber()
    controller = Controller(SETTINGS, nm, PROFILES, prober)
    task = asyncio.create_task(controller.run())
    await asyncio.wait_for(controller.ready.wait(), 2)
    return controller, nm, prober, task


@pytest.fixture
async def slow_harness() -> tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]]:
    """Rounds only every 5 s: any round sooner was caused by an event, however loaded the machine."""
    slow = SETTINGS.model_copy(update={"active_interval": 5.0, "standby_interval": 5.0, "suspect_interval": 5.0})
    nm, prober = FakeNM(), FakeProber()
    controller = Controller(slow, nm, PROFILES, prober)
    task = asyncio.create_task(controller.run())
    await asyncio.wait_for(controller.ready.wait(), 2)
    return controller, nm, prober, task


async def test_starts_on_primary_and_ranks_metrics(
    harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, nm, _, task = harness
    assert controller.current == 0
    assert nm.metrics == {"/dev/wana": (100, 100), "/dev/wanb": (200, 200)}
    assert nm.priorities == {"uuid-primary": 2, "uuid-backup": 1}
    controller.stop()
    await task


async def test_fails_over_new_preferred_first_then_back_and_restores(
    harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, nm, prober, task = harness
    nm.calls.clear()
    prober.healthy["wana"] = False
    await wait_until(lambda: controller.current == 1)
    await wait_until(lambda: nm.metrics == {"/dev/wanb": (100, 100), "/dev/wana": (200, 200)})
    assert nm.calls[:2] == [("/dev/wanb", 100), ("/dev/wana", 200)]  # promote before demote
    prober.healthy["wana"] = True
    await wait_until(lambda: controller.current == 0)
    assert controller.switches == 2
    controller.stop()
    await task
    assert nm.metrics == {"/dev/wana": (-1, -1), "/dev/wanb": (-1, -1)}
    assert nm.priorities == {"uuid-primary": 0, "uuid-backup": 0}


async def test_failed_write_is_retried_and_never_crashes(
    harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, nm, prober, task = harness
    nm.fail_writes = True
    prober.healthy["wana"] = False
    await wait_until(lambda: controller.current == 1)
    await asyncio.sleep(0.15)
    assert nm.metrics["/dev/wanb"] == (200, 200) and not task.done()
    nm.fail_writes = False
    await wait_until(lambda: nm.metrics["/dev/wanb"] == (100, 100))
    controller.stop()
    await task


async def test_link_event_triggers_immediate_probe_and_reactivation_reapplies(
    slow_harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, nm, prober, task = slow_harness
    await asyncio.sleep(0.06)  # let the loops settle into their intervals
    nm.links["uuid-primary"] = LinkState(uuid="uuid-primary", device="/dev/wana", interface="wana", state=20)
    prober.rounds.clear()
    controller.on_nm_event("device 1 activated -> unavailable")
    await wait_until(lambda: None in prober.rounds, timeout=2)  # well before the 5 s interval
    await wait_until(lambda: controller.current == 1)  # no device: down at once, no fail count
    # NetworkManager re-activates the profile with its own metrics: the preference is put back.
    nm.metrics["/dev/wana"] = (-1, -1)
    nm.links["uuid-primary"] = LinkState(uuid="uuid-primary", device="/dev/wana", interface="wana", state=100)
    controller.on_nm_event("device 1 ip-config -> activated")
    await wait_until(lambda: nm.metrics["/dev/wana"] != (-1, -1))
    controller.stop()
    await task


async def test_bus_loss_reconnects_and_reapplies(
    harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, nm, _, task = harness
    nm.metrics["/dev/wana"] = (-1, -1)  # what a restarted NetworkManager would bring back
    nm.disconnected.set()
    await wait_until(lambda: nm.metrics["/dev/wana"] == (100, 100), timeout=3)
    controller.stop()
    await task


async def test_forced_failover_moves_then_returns_by_itself(
    harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, nm, _, task = harness
    events: list[str] = []

    async def record(event: object) -> None:
        events.append(f"{event.action}:{event.to_profile}")  # type: ignore[attr-defined]

    controller.switch_listeners.append(record)
    with pytest.raises(ValueError, match="greater than 0"):
        await controller.force_failover(0)
    await controller.force_failover(0.15)
    assert controller.current == 1 and nm.metrics["/dev/wanb"] == (100, 100)
    assert controller.status()["forced_failover_remaining"] > 0
    await wait_until(lambda: controller.current == 0, timeout=2)
    assert nm.metrics["/dev/wana"] == (100, 100)
    await wait_until(lambda: events == ["avoid:backup", "failback:primary"] or len(events) >= 2)
    assert events[0] == "avoid:backup"
    controller.stop()
    await task


async def test_pin_and_clear(harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]]) -> None:
    controller, _, prober, task = harness
    with pytest.raises(ValueError, match="no uplink 'wanx'"):
        await controller.prefer("wanx")
    await controller.prefer("wanb")
    assert controller.current == 1 and controller.status()["pinned"] == "backup"
    prober.healthy["wanb"] = False  # a pin never holds traffic on a dead uplink
    await wait_until(lambda: controller.current == 0)
    prober.healthy["wanb"] = True
    await wait_until(lambda: controller.current == 1)  # healthy again: the pin applies again
    await controller.clear_preference()
    await wait_until(lambda: controller.current == 0)
    controller.stop()
    await task


async def test_guard_vetoes_failback_until_it_allows(
    harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, _, prober, task = harness
    allow = False
    asked: list[str] = []

    async def guard(event: object) -> bool:
        asked.append(event.action)  # type: ignore[attr-defined]
        return allow

    controller.failback_guard = guard
    prober.healthy["wana"] = False
    await wait_until(lambda: controller.current == 1)
    prober.healthy["wana"] = True
    await wait_until(lambda: len(asked) >= 2, timeout=3)  # asked, vetoed, asked again later
    assert controller.current == 1 and set(asked) == {"failback"}
    allow = True
    await wait_until(lambda: controller.current == 0, timeout=3)
    controller.stop()
    await task


async def test_recheck_wakes_only_the_named_uplink(
    slow_harness: tuple[Controller, FakeNM, FakeProber, asyncio.Task[None]],
) -> None:
    controller, _, prober, task = slow_harness
    await asyncio.sleep(0.06)
    prober.rounds.clear()
    assert await controller.recheck("wanb", "dhcp4-change") == 1
    await wait_until(lambda: "wanb" in prober.rounds, timeout=2)  # well before the 5 s interval
    assert await controller.recheck("", "") == 2
    status = controller.status()
    assert [u["device"] for u in status["uplinks"]] == ["wana", "wanb"]
    assert status["preferred"] == "primary" and status["uplinks"][0]["carrying_traffic"] is True
    controller.stop()
    await task


async def test_nothing_healthy_at_start_changes_nothing() -> None:
    nm, prober = FakeNM(), FakeProber()
    prober.healthy.update(wana=False, wanb=False)
    controller = Controller(SETTINGS, nm, PROFILES, prober)
    task = asyncio.create_task(controller.run())
    await asyncio.wait_for(controller.ready.wait(), 2)
    await asyncio.sleep(0.2)
    assert nm.calls == [] and nm.priorities == {"uuid-primary": 0, "uuid-backup": 0}
    prober.healthy["wanb"] = True  # only the backup comes up: traffic goes there
    await wait_until(lambda: nm.metrics["/dev/wanb"] == (100, 100))
    controller.stop()
    await task


async def test_steady_rounds_ask_the_quorum_in_rotation_and_doubt_asks_everyone() -> None:
    urls = [f"http://192.0.2.{i}/generate_204" for i in (10, 11, 12)]
    settings = SETTINGS.model_copy(update={"probe_targets": tuple(parse_target(u) for u in urls)})
    nm, prober = FakeNM(), FakeProber()
    controller = Controller(settings, nm, PROFILES, prober)
    task = asyncio.create_task(controller.run())
    await asyncio.wait_for(controller.ready.wait(), 2)
    assert [len(t) for i, t in prober.asked if i == "wana"] == [3]  # first round: no verdict yet
    await wait_until(lambda: sum(i == "wana" for i, _ in prober.asked) >= 4)
    lean = [t for i, t in prober.asked if i == "wana"][1:4]
    assert [len(t) for t in lean] == [1, 1, 1] and len({t[0] for t in lean}) == 3  # every target in turn
    prober.healthy["wana"] = False
    await wait_until(lambda: controller.current == 1)
    after = [t for i, t in prober.asked if i == "wana"]
    failed_lean = next(n for n, t in enumerate(after) if n > 0 and len(t) == 3)
    assert all(len(t) == 3 for t in after[failed_lean:])  # in doubt: every target, every round
    controller.stop()
    await task
