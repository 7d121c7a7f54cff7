"""The bus layer's pure parts by tables: the back-off, staying connected with it, and how each client's
failures read (its Words). Calls on a real bus are the lab's business (tests/test_nm.py, test_control*.py,
test_notify.py, test_status_follow.py)."""

from __future__ import annotations

import asyncio

import pytest

from nmfailover.backoff import backoff_delay
from nmfailover.bus import (
    ERROR_ACCESS_DENIED,
    ERROR_NAME_HAS_NO_OWNER,
    ERROR_SERVICE_UNKNOWN,
    ERROR_UNKNOWN_METHOD,
    BusType,
    connect_with_backoff,
)
from nmfailover.control import CONTROL_WORDS
from nmfailover.errors import (
    ControlAccessDenied,
    ControlCallFailed,
    ControlError,
    DaemonNotRunning,
    NMAccessDenied,
    NMError,
    NMLinkChanged,
    NMUnavailable,
    NoticeCallFailed,
    NoticeError,
)
from nmfailover.nm.names import ERROR_NO_SUCH_PROFILE, ERROR_NOT_ACTIVE
from nmfailover.nm.session import NM_WORDS
from nmfailover.notify import NOTICE_WORDS


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 5.0), (5, 10.0), (6, 10.0), (100, 10.0)],
)
def test_the_back_off_grows_then_stays(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt) == delay


@pytest.mark.parametrize(
    ("after_loss", "sleeps"),
    [(False, [0.01, 0.02]), (True, [0.01, 0.02, 0.03])],  # after a loss it waits before the first attempt too
)
async def test_connect_with_backoff_retries_its_failures(
    monkeypatch: pytest.MonkeyPatch, after_loss: bool, sleeps: list[float]
) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    attempts: list[int] = []
    failures: list[tuple[str, int, float]] = []
    beats: list[None] = []

    async def connect() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ControlError(f"down {len(attempts)}")
        return "connected"

    def failed(exc: ControlError, attempt: int, delay: float) -> None:
        failures.append((str(exc), attempt, delay))

    result = await connect_with_backoff(
        connect,
        ControlError,
        failed,
        beat=lambda: beats.append(None),
        after_loss=after_loss,
        steps=(0.01, 0.02, 0.03),
    )
    assert result == "connected" and attempts == [1, 2, 3]
    assert slept == sleeps
    assert failures == [("down 1", 1, sleeps[-2]), ("down 2", 2, sleeps[-1])]
    assert len(beats) == len(sleeps)  # alive before every wait


async def test_connect_with_backoff_lets_other_errors_through() -> None:
    async def connect() -> str:
        raise NMUnavailable("not the kind it retries")

    with pytest.raises(NMUnavailable):
        await connect_with_backoff(connect, ControlError, lambda *_: None)


@pytest.mark.parametrize(
    ("error_name", "text", "kind", "message"),
    [
        (ERROR_SERVICE_UNKNOWN, "gone", NMUnavailable, "NetworkManager is not answering (Reapply): gone"),
        (ERROR_ACCESS_DENIED, "no", NMAccessDenied, "Reapply was refused (permission denied): no"),
        (
            "org.freedesktop.NetworkManager.Settings.PermissionDenied",
            "polkit",
            NMAccessDenied,
            "Reapply was refused (permission denied): polkit",
        ),
        (ERROR_NOT_ACTIVE, "inactive", NMLinkChanged, f"Reapply failed: {ERROR_NOT_ACTIVE}: inactive"),
        (ERROR_UNKNOWN_METHOD, "gone", NMLinkChanged, f"Reapply failed: {ERROR_UNKNOWN_METHOD}: gone"),
        (ERROR_NO_SUCH_PROFILE, "no such", NMError, f"Reapply failed: {ERROR_NO_SUCH_PROFILE}: no such"),
    ],
)
def test_networkmanagers_error_replies(error_name: str, text: str, kind: type[NMError], message: str) -> None:
    error = NM_WORDS.refused("Reapply", error_name, text)
    assert type(error) is kind and str(error) == message and error.dbus_error == error_name


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (NM_WORDS.no_answer("GetDevices", 10.0), NMUnavailable, "GetDevices got no answer within 10 s"),
        (NM_WORDS.lost("GetDevices", None), NMUnavailable, "bus connection lost during GetDevices"),
        (
            NM_WORDS.lost("GetDevices", EOFError("eof")),
            NMUnavailable,
            "bus connection lost during GetDevices: eof",
        ),
        (NM_WORDS.not_connected("GetDevices"), NMUnavailable, "not connected to the system bus"),
        (CONTROL_WORDS.no_answer("Status", 5.0), ControlError, "Status: no answer within 5 s"),
        (CONTROL_WORDS.lost("Status", OSError("reset")), ControlError, "Status: bus connection lost: reset"),
        (CONTROL_WORDS.not_connected("Status"), ControlError, "Status: bus connection lost"),
        (CONTROL_WORDS.refused("Status", ERROR_SERVICE_UNKNOWN, "none"), DaemonNotRunning, "none"),
        (
            CONTROL_WORDS.refused("Status", ERROR_NAME_HAS_NO_OWNER, ""),
            DaemonNotRunning,
            ERROR_NAME_HAS_NO_OWNER,
        ),
        (CONTROL_WORDS.refused("Prefer", ERROR_ACCESS_DENIED, "policy"), ControlAccessDenied, "policy"),
        (CONTROL_WORDS.refused("Prefer", "x.Error.InvalidArgs", "bad"), ControlCallFailed, "bad"),
        (
            NOTICE_WORDS.unreachable(BusType.SESSION, OSError("x")),
            NoticeError,
            "cannot connect to the session bus: x",
        ),
        (
            NOTICE_WORDS.unreachable(BusType.SYSTEM, OSError("x")),
            NoticeError,
            "cannot connect to the system bus: x",
        ),
        (
            NOTICE_WORDS.refused("Notify", ERROR_UNKNOWN_METHOD, "no"),
            NoticeCallFailed,
            f"{ERROR_UNKNOWN_METHOD}: no",
        ),
    ],
)
def test_each_client_words_its_failures(error: Exception, kind: type[Exception], message: str) -> None:
    assert type(error) is kind and str(error) == message


def test_an_unreachable_system_bus_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
    for words, kind in ((NM_WORDS, NMUnavailable), (CONTROL_WORDS, ControlError)):
        error = words.unreachable(BusType.SYSTEM, FileNotFoundError(2, "No such file or directory"))
        assert type(error) is kind
        assert str(error) == (
            "cannot connect to the system bus at /nonexistent/bus (DBUS_SYSTEM_BUS_ADDRESS): [Errno 2] No such "
            "file or directory; is dbus running? check `systemctl status dbus`"
        )
