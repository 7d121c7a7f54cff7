"""Engine rules that every other test let go: deleting any one of them passed the whole suite. Each test here
fails when its rule is deleted (NetworkManager behind the engine's Protocol, as in test_engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from loguru import logger

from nmfailover.engine import Engine
from nmfailover.engine.actuator import Actuator, ActuatorParams
from nmfailover.engine.core import EngineParams
from nmfailover.engine.probing import MIN_ROUND_GAP
from nmfailover.engine.state import Uplink
from nmfailover.errors import NMError
from nmfailover.nm import LinkState
from tests.test_engine import PROFILES, SETTINGS, FakeNM, FakeProber, capture_log, ended, start, wait_until


@pytest.fixture(autouse=True)
def private_runtime_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))


class LostReapplyNM(FakeNM):
    """NetworkManager accepts the first `lost` Reapplies of new metrics, but the device keeps running with the
    old ones (another client's Reapply replaced ours in between)."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    async def set_route_metrics(
        self, device: str, metric4: int, metric6: int, mptcp_flags: int | None = None
    ) -> bool:
        if self.lost > 0 and self.metrics[device] != (metric4, metric6):
            self.lost -= 1
            return True
        return await super().set_route_metrics(device, metric4, metric6, mptcp_flags)


async def test_a_reapply_that_did_not_stick_is_found_by_reading_back_and_made_again() -> None:
    nm = LostReapplyNM(lost=3)
    engine = Engine(EngineParams.from_settings(SETTINGS), nm, PROFILES, FakeProber())
    lines, sink = capture_log()
    task = await start(engine)
    try:
        await wait_until(lambda: nm.metrics == {"/dev/wana": (100, 100), "/dev/wanb": (200, 200)})
    finally:
        await ended(engine, task)
        logger.remove(sink)
    assert nm.lost == 0
    assert any("runs with metrics -1/-1, expected 100/100" in line for line in lines), lines


class DeletedBackupNM(FakeNM):
    """The backup's profile was deleted: NetworkManager has no connection with its UUID, so an update of it
    fails, as Update2 on a deleted connection does."""

    def __init__(self) -> None:
        super().__init__()
        self.links["uuid-backup"] = LinkState(uuid="uuid-backup")
        self.updated: list[str] = []

    async def has_profile(self, uuid: str) -> bool:
        return uuid != "uuid-backup"

    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool:
        self.updated.append(uuid)
        if uuid == "uuid-backup":
            raise NMError(f"no connection with UUID {uuid}")
        return await super().set_autoconnect_priority(uuid, priority)


async def uplinks_of(nm: FakeNM) -> list[Uplink]:
    return [Uplink(i, p, await nm.link_state(p.uuid)) for i, p in enumerate(PROFILES)]


async def test_applying_leaves_a_deleted_profiles_autoconnect_priority_alone() -> None:
    nm = DeletedBackupNM()
    uplinks = await uplinks_of(nm)
    uplinks[1].missing = True
    actuator = Actuator(ActuatorParams.from_settings(SETTINGS), nm, uplinks)
    actuator.remember_priorities()
    await actuator.apply(0)
    assert "uuid-backup" not in nm.updated
    assert actuator.up_to_date(0)  # the deleted profile did not make the preference fail
    assert nm.priorities["uuid-primary"] == 2


async def test_releasing_a_deleted_profile_updates_nothing_and_logs_no_error() -> None:
    nm = DeletedBackupNM()
    uplinks = await uplinks_of(nm)
    actuator = Actuator(ActuatorParams.from_settings(SETTINGS), nm, uplinks)
    actuator.remember_priorities()  # the backup's own priority is known, from before it was deleted
    lines, sink = capture_log()
    try:
        await actuator.release(uplinks[1])
    finally:
        logger.remove(sink)
    assert nm.updated == []
    assert not any("could not restore" in line for line in lines), lines


async def test_a_burst_of_wake_ups_is_not_a_burst_of_rounds() -> None:
    # Rounds only every 5 s by the intervals: every round here was caused by a wake-up.
    slow = SETTINGS.model_copy(
        update={"active_interval": 5.0, "standby_interval": 5.0, "suspect_interval": 5.0}
    )
    prober = FakeProber()
    engine = Engine(EngineParams.from_settings(slow), FakeNM(), PROFILES, prober)
    task = await start(engine)
    try:
        primary = engine.uplinks[0]
        before = prober.rounds.count("wana")
        started = engine.clock()
        while engine.clock() - started < 10 * MIN_ROUND_GAP:
            primary.wake.set()
            await asyncio.sleep(MIN_ROUND_GAP / 25)
        elapsed = engine.clock() - started
        rounds = prober.rounds.count("wana") - before
    finally:
        await ended(engine, task)
    # However slow the machine: at most one round per gap, plus the one a wake-up starts at once.
    assert 1 <= rounds <= elapsed / MIN_ROUND_GAP + 1, (rounds, elapsed)
