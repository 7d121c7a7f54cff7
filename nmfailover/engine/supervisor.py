"""Structured concurrency for the daemon's long-lived loops: a crash is logged with its traceback and the
loop restarts with back-off; a loop that keeps crashing ends the daemon (non-zero), so that systemd
restarts it. Each loop also reports progress, so the watchdog can tell a live loop from a stuck one."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from loguru import logger

from ..backoff import BACKOFF, backoff_delay
from ..errors import TaskGaveUp

Job = Callable[[], Awaitable[None]]

# More crashes than this within the window mean a restart will not help: leave it to the service manager.
CRASH_BUDGET = 5
CRASH_WINDOW = 300.0


@dataclass
class Liveness:
    """Progress of one loop: it must beat at least every `max_silence` seconds while it runs."""

    name: str
    max_silence: float
    clock: Callable[[], float]
    last_beat: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_beat = self.clock()

    def beat(self) -> None:
        self.last_beat = self.clock()

    def silent_for(self) -> float:
        return self.clock() - self.last_beat


class Supervisor:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff: tuple[float, ...] = BACKOFF,
        budget: int = CRASH_BUDGET,
        window: float = CRASH_WINDOW,
    ) -> None:
        self.clock = clock
        self.backoff = backoff
        self.budget = budget
        self.window = window
        self.restarts: dict[str, int] = {}
        self._liveness: dict[str, Liveness] = {}
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def liveness(self, name: str, max_silence: float) -> Liveness:
        live = Liveness(name, max_silence, self.clock)
        self._liveness[name] = live
        return live

    def stuck(self) -> list[str]:
        """Loops that have made no progress within their own bound."""
        return [live.name for live in self._liveness.values() if live.silent_for() > live.max_silence]

    async def run(self, jobs: Mapping[str, Job], stop: asyncio.Event) -> None:
        """Run every job until `stop` is set; TaskGaveUp if one of them keeps crashing."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for name, job in jobs.items():
                    self.start(name, job)
                group.create_task(_raise_when(stop), name="stop")
        except* _Stopped:
            pass
        except* TaskGaveUp as failed:
            raise failed.exceptions[0] from None
        finally:
            self._group = None
            self._tasks.clear()

    def start(self, name: str, job: Job) -> None:
        """Run one more job, supervised like the rest (an uplink that joined); only while run() runs."""
        assert self._group is not None, "jobs start inside run()"
        self._tasks[name] = self._group.create_task(self._keep(name, job), name=name)

    def cancel(self, name: str) -> None:
        """End a job for good (an uplink that left): no restart, and no longer watched for progress."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()  # a task group lets a child that was cancelled go without failing the rest
        self._liveness.pop(name, None)
        self.restarts.pop(name, None)

    @property
    def running(self) -> bool:
        return self._group is not None

    async def _keep(self, name: str, job: Job) -> None:
        crashes: deque[float] = deque()
        self.restarts.setdefault(name, 0)
        while True:
            try:
                await job()
                logger.error("task {} returned, which it never should; restarting it", name)
            except Exception as exc:  # noqa: BLE001 - every crash is logged and counted, never silenced
                logger.opt(exception=exc).error("task {} crashed: {!r}", name, exc)
            now = self.clock()
            crashes.append(now)
            while crashes and crashes[0] < now - self.window:
                crashes.popleft()
            if len(crashes) > self.budget:
                raise TaskGaveUp(
                    f"task {name} crashed {len(crashes)} times within {self.window:g} s; "
                    "stopping so that the service manager restarts the daemon"
                )
            self.restarts[name] += 1
            delay = backoff_delay(len(crashes), self.backoff)
            logger.warning("restarting task {} in {:g} s (restart {})", name, delay, self.restarts[name])
            if name in self._liveness:
                # Waiting out the back-off is not being stuck.
                self._liveness[name].last_beat = now + delay
            await asyncio.sleep(delay)


class _Stopped(Exception):
    """Ends the task group on a requested stop."""


async def _raise_when(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stopped
