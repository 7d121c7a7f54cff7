"""Helpers for the control, hook and dispatcher tests: the CLI as a subprocess, a Switched-signal recorder,
a lab whose bus enforces the shipped D-Bus policy, and reading the daemon's log times."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from nmfailover.bus import Message, MessageBus, MessageType
from nmfailover.control import INTERFACE
from nmfailover.lab.sandbox import NMLab
from tests.conftest import _require_lab

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "packaging" / "dbus" / "net.nmfailover.Failover1.conf"
HOOK = ROOT / "dispatcher.d" / "90-nmfailover"


@contextmanager
def policed_lab(dispatcher_dir: Path | None = None) -> Iterator[NMLab]:
    """A two-uplink lab whose bus is configured like Debian's system bus plus the shipped policy."""
    _require_lab()
    with NMLab(2, dispatcher_dir=dispatcher_dir, bus_policy=POLICY) as lab:
        yield lab


def cli(lab: NMLab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.host(sys.executable, "-m", "nmfailover", *args, check=False, env=lab.env, timeout=20)


def status(lab: NMLab) -> dict[str, Any]:
    result = cli(lab, "status", "--json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def log_time(line: str) -> float:
    """Epoch seconds of a daemon log line (human format, local time)."""
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})", line)
    assert match, line
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def first_line(text: str, pattern: str) -> str:
    return next(line for line in text.splitlines() if re.search(pattern, line))


class SignalRecorder:
    """Collects Switched signals from the lab bus on a thread of its own (the tests themselves block)."""

    def __init__(self, bus_address: str) -> None:
        self.signals: list[list[Any]] = []
        self._address = bus_address
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"signal recorder did not start: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._listen())
        except BaseException as exc:  # noqa: BLE001 - reported to the test by __enter__
            self._error = exc
            self._ready.set()

    async def _listen(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        bus = await MessageBus(bus_address=self._address).connect()

        def handler(msg: Any) -> bool:
            if msg.message_type == MessageType.SIGNAL and msg.interface == INTERFACE:
                self.signals.append([msg.member, *msg.body])
            return False

        bus.add_message_handler(handler)
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',interface='{INTERFACE}'"],
            )
        )
        self._ready.set()
        await self._stop.wait()
        bus.disconnect()
