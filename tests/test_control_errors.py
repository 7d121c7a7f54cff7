"""Errors at the control interface's edge, on a real bus: the caller's mistakes are InvalidArgs, bugs are
Failed (and logged with their traceback), never the other way round."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from loguru import logger

from nmfailover.control import ERROR_FAILED, ERROR_INVALID_ARGS, ControlService, call_daemon
from nmfailover.engine import Engine, EngineParams, Operator
from nmfailover.errors import ControlCallFailed
from nmfailover.lab.sandbox import NMLab
from tests.test_engine import PROFILES, SETTINGS, FakeNM, FakeProber


class BuggyOperator(Operator):
    async def recheck(self, interface: str = "", reason: str = "") -> int:
        raise ValueError("a range check that is a bug, not the caller's mistake")


@pytest.fixture
async def control(nmlab: NMLab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ControlService]:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nmlab.bus_address)
    service = ControlService()
    await service.start(
        BuggyOperator(Engine(EngineParams.from_settings(SETTINGS), FakeNM(), PROFILES, FakeProber()))
    )
    yield service
    await service.close()


@pytest.mark.parametrize(
    ("member", "signature", "body", "message"),
    [
        ("Prefer", "sd", ["wanx", 0.0], "no uplink 'wanx'; known: primary (primary), backup (backup)"),
        ("Prefer", "sd", ["backup", -1.0], "seconds must be a finite number of 0 or more; got -1.0"),
        ("ForceFailover", "d", [float("nan")], "seconds must be a finite number greater than 0; got nan"),
        ("ForceFailover", "s", ["60"], "ForceFailover takes arguments (d), got (s)"),
        ("ForceFailover", "d", [1e308], "seconds must be at most 604800 (7 days); got 1e+308"),
        ("Prefer", "sd", ["backup", 1e308], "seconds must be at most 604800 (7 days); got 1e+308"),
        ("Prefer", "sd", ["backup", 604800.5], "seconds must be at most 604800 (7 days); got 604800.5"),
        ("Prefer", "sd", ["backup", float("inf")], "seconds must be a finite number of 0 or more; got inf"),
    ],
)
async def test_the_callers_mistakes_are_invalid_args(
    control: ControlService, member: str, signature: str, body: list[object], message: str
) -> None:
    with pytest.raises(ControlCallFailed) as raised:
        await call_daemon(member, signature, body)
    assert (raised.value.dbus_error, str(raised.value)) == (ERROR_INVALID_ARGS, message)


async def test_a_bug_is_failed_and_logged_with_its_traceback(control: ControlService) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="ERROR")
    try:
        with pytest.raises(ControlCallFailed) as raised:
            await call_daemon("Recheck", "ss", ["", ""])
    finally:
        logger.remove(sink)
    assert raised.value.dbus_error == ERROR_FAILED
    assert str(raised.value) == "internal error in Recheck: ValueError"
    text = "".join(lines)
    assert "control: Recheck failed" in text and "Traceback" in text and "a range check" in text


async def test_a_pin_for_exactly_a_week_is_accepted(control: ControlService) -> None:
    assert await call_daemon("Prefer", "sd", ["backup", 604800.0]) == []
