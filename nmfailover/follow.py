"""`nmfailover status --follow`: one JSON line per change of what a status bar shows, for Waybar, i3blocks,
polybar and scripts.

The daemon's Switched and DnsMoved signals (and its bus name changing owner) make it re-read Status() at
once; a slow periodic re-read catches what changes without a signal (an uplink's health while it does not
carry traffic). A line is printed at start and then only when it differs from the last one, so it holds
nothing that changes by itself (no countdowns, no latencies). A bar must never die: while the daemon or the
system bus is away it waits, says so once on stderr, and goes on when they are back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from .bus import BusType, Connection, MessageType, connect_with_backoff
from .control import BUS_NAME, CALL_TIMEOUT, INTERFACE, OBJECT_PATH, ControlWords
from .errors import ControlError, DaemonNotRunning
from .status import Status

FOLLOW_INTERVAL = 5.0
# A daemon that just took its bus name probes every uplink and takes over the route within seconds, most of
# it without a signal (it may find traffic where it wants it): looked at every second meanwhile.
STARTING_FOR, STARTING_INTERVAL = 10.0, 1.0
# Metered as NetworkManager reports it: what desktops hold big downloads back for.
METERED = ("yes", "guess-yes")
# Any signal of ours means "look again": a forged one costs a Status() call, nothing more, as the line is
# always read from the daemon itself.
_MATCHES = (
    f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',path='{OBJECT_PATH}'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    f"member='NameOwnerChanged',arg0='{BUS_NAME}'",
)


@dataclass(frozen=True)
class UplinkLine:
    role: str
    profile: str
    device: str | None
    health: str
    carrying_traffic: bool
    metered: str | None  # NetworkManager's word: yes, no, guess-yes, guess-no, unknown; null when inactive


@dataclass(frozen=True)
class SwitchLine:
    at: float  # seconds since the epoch
    action: str | None  # failover, failback, pin, avoid, initial; null from a daemon that does not say
    from_role: str | None
    to_role: str | None
    reason: str | None


@dataclass(frozen=True)
class StatusLine:
    """One line of the stream: the structured fields, and Waybar's own (text, tooltip, class)."""

    carrying: str | None  # the role of the uplink carrying traffic
    device: str | None
    metered: bool  # the uplink carrying traffic is metered
    uplinks: tuple[UplinkLine, ...]
    last_switch: SwitchLine | None

    @classmethod
    def from_status(cls, status: Status) -> StatusLine:
        uplinks = tuple(
            UplinkLine(u.role, u.profile, u.device, u.health, u.carrying_traffic, u.metered)
            for u in status.uplinks
        )
        carrier = next((u for u in uplinks if u.carrying_traffic), None)
        last: SwitchLine | None = None
        if status.last_switch_at is not None:
            details = status.last_switch  # None from a daemon of an older version: the time only
            last = SwitchLine(
                round(status.last_switch_at, 3),
                details.action if details else None,
                details.from_role if details else None,
                details.to if details else None,
                details.reason if details else None,
            )
        return cls(
            carrier.role if carrier else None,
            carrier.device if carrier else None,
            carrier is not None and carrier.metered in METERED,
            uplinks,
            last,
        )

    @property
    def text(self) -> str:
        if self.carrying is None:
            return "no uplink"
        where = f"{self.carrying} ({self.device})" if self.device else self.carrying
        return f"{where}, metered" if self.metered else where

    @property
    def tooltip(self) -> str:
        rows = [
            f"{u.role} ({u.device or 'no device'}): {u.health}"
            + (", carrying traffic" if u.carrying_traffic else "")
            + (", metered" if u.metered in METERED else "")
            for u in self.uplinks
        ]
        if self.last_switch is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.last_switch.at))
            rows.append(f"last switch {when}: {self.last_switch.reason or self.last_switch.action or ''}")
        return "\n".join(rows)

    @property
    def css_class(self) -> list[str]:
        # Waybar sets these as CSS classes of the module: style the backup, a metered uplink, an outage.
        classes = [self.carrying or "none"]
        if self.metered:
            classes.append("metered")
        if any(u.health not in ("up", "unknown") for u in self.uplinks):
            classes.append("trouble")
        return classes

    def to_json(self) -> str:
        fields = asdict(self)
        fields["uplinks"] = [asdict(u) for u in self.uplinks]
        if self.last_switch is not None:
            last = self.last_switch
            fields["last_switch"] = {
                "at": last.at,
                "action": last.action,
                "from": last.from_role,
                "to": last.to_role,
                "reason": last.reason,
            }
        fields |= {"text": self.text, "tooltip": self.tooltip, "class": self.css_class}
        return json.dumps(fields, separators=(",", ":"))


class _FollowWords(ControlWords):
    def unreachable(self, bus_type: BusType, exc: BaseException) -> ControlError:
        # Said inside "cannot reach the system bus (...)": the library's own words are enough.
        return ControlError(str(exc) or type(exc).__name__)


_FOLLOW_WORDS = _FollowWords()


class Follower:
    """Reads Status() whenever it may have changed and prints a line when the line changed."""

    def __init__(self, out: TextIO, err: TextIO, interval: float) -> None:
        self._out, self._err = out, err
        self._interval = interval
        self._wake = asyncio.Event()
        self._last: str | None = None
        self._absent_said = False
        self._starting_until = 0.0

    async def run(self) -> None:
        """Until cancelled; BrokenPipeError when the reader went away."""
        while True:
            bus = await connect_with_backoff(self._subscribe, ControlError, self._unreachable)
            try:
                await self._follow(bus)
            finally:
                bus.close()

    def _unreachable(self, exc: ControlError, _attempt: int, _delay: float) -> None:
        self._say_absent(f"cannot reach the system bus ({exc})")

    async def _subscribe(self) -> Connection:
        bus = await Connection.open(_FOLLOW_WORDS, CALL_TIMEOUT)
        bus.add_message_handler(self._on_message)
        try:
            await bus.add_match(*_MATCHES)
        except BaseException:
            bus.close()
            raise
        return bus

    def _on_message(self, msg: Any) -> bool:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged":
                self._starting_until = time.monotonic() + STARTING_FOR
            self._wake.set()
        return False

    async def _follow(self, bus: Connection) -> None:
        lost = asyncio.ensure_future(bus.wait_for_disconnect())
        try:
            while not lost.done():
                self._wake.clear()
                try:
                    (text,) = await bus.call(BUS_NAME, OBJECT_PATH, INTERFACE, "Status")
                except DaemonNotRunning:
                    self._say_absent(f"the daemon is not running (no {BUS_NAME} on the system bus)")
                except ControlError as exc:
                    if lost.done():
                        break
                    self._say_absent(str(exc))
                else:
                    self._absent_said = False
                    self._emit(StatusLine.from_status(Status.model_validate_json(text)).to_json())
                woken = asyncio.ensure_future(self._wake.wait())
                starting = time.monotonic() < self._starting_until
                interval = min(self._interval, STARTING_INTERVAL) if starting else self._interval
                await asyncio.wait({woken, lost}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
        finally:
            lost.cancel()

    def _emit(self, line: str) -> None:
        if line != self._last:
            self._out.write(line + "\n")
            self._out.flush()
            self._last = line

    def _say_absent(self, why: str) -> None:
        # Once per absence: a bar's log must not fill up while the daemon is stopped for the night.
        if not self._absent_said:
            print(f"nmfailover: {why}; waiting for it", file=self._err, flush=True)
            self._absent_said = True


async def follow_status(interval: float, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`nmfailover status --follow`: 0 on SIGINT/SIGTERM or when the reader of its output goes away."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    follower = asyncio.ensure_future(Follower(out, err, interval).run())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({follower, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not follower.done():
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        return 0
    error = follower.exception()
    if isinstance(error, BrokenPipeError):
        # The bar went away: nothing more to say, and Python's own flush at exit must not fail either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 0
    raise error if error is not None else AssertionError("the follower ended without an error")
