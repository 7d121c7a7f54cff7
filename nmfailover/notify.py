"""`nmfailover notify`: the desktop notice. An agent in the user's graphical session that listens for the
daemon's Switched and DnsMoved signals on the system bus and shows one notification per switch (or move of
name resolution) through org.freedesktop.Notifications on the session bus, each replacing the previous
one; what they say is nmfailover.notice's business. At start it asks the daemon's Status(), so that a
login while traffic is on the backup is told too. Buttons on a notice (where the server shows actions)
call Prefer / ClearPreference with the person's own rights: the bus policy and polkit decide. Unless
--no-tray, it also shows a tray indicator (indicator.py, what it shows from tray.py) that follows the
daemon's status, whose menu makes the same calls.

Plain D-Bus messages over nmfailover.bus, like control.py. The daemon may restart (signals count only from
the current owner of its bus name, followed through NameOwnerChanged) and the system bus may go away
(reconnected with back-off); the session bus going away ends the agent (exit 1), as the session is over.
It needs no settings and no privileges: anyone may receive the signal and read Status() under the shipped
D-Bus policy.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import signal
from dataclasses import dataclass
from typing import Any

from loguru import logger

from .bus import (
    ERROR_ACCESS_DENIED,
    ERROR_NAME_HAS_NO_OWNER,
    REQUEST_NAME_DO_NOT_QUEUE,
    REQUEST_NAME_PRIMARY_OWNER,
    BusType,
    Connection,
    MessageType,
    Variant,
    Words,
    connect_with_backoff,
)
from .control import BUS_NAME, INTERFACE, OBJECT_PATH
from .errors import AgentRunning, NoticeCallFailed, NoticeError
from .indicator import Indicator
from .notice import Action, DnsMove, Notice, NoticeBoard, Snapshot, Switch
from .tray import tray_view

CALL_TIMEOUT = 5.0
APP_NAME = "nmfailover"
# Owned on the session bus so that one session never runs two agents (autostart and a user unit both on).
AGENT_NAME = "net.nmfailover.Notify"
EXIT_OK, EXIT_FAILURE = 0, 1

_NOTIFICATIONS = (
    "org.freedesktop.Notifications",
    "/org/freedesktop/Notifications",
    "org.freedesktop.Notifications",
)
_DAEMON = (BUS_NAME, OBJECT_PATH, INTERFACE)
# The bus delivers only the signals of the name's current owner: any local user may send a signal with
# our interface and path, and must not be able to put words on the desktop.
SWITCHED_MATCH = (
    f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',member='Switched',path='{OBJECT_PATH}'"
)
DNS_MATCH = (
    f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',member='DnsMoved',path='{OBJECT_PATH}'"
)
OWNER_MATCH = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    f"member='NameOwnerChanged',arg0='{BUS_NAME}'"
)
ACTION_MATCH = (
    "type='signal',sender='org.freedesktop.Notifications',interface='org.freedesktop.Notifications',"
    "member='ActionInvoked',path='/org/freedesktop/Notifications'"
)
_SIGNATURES = {"Switched": "ssss", "DnsMoved": "sass"}
# How often the tray reads the daemon's status between switches: health changes without a switch too.
TRAY_REFRESH = 10.0


@dataclass(frozen=True)
class Login:
    """The agent found the daemon running: what it does now is news to the person."""


@dataclass(frozen=True)
class Invoked:
    """The person pressed a button on the notice with this id."""

    notification_id: int
    key: str


@dataclass(frozen=True)
class Chosen:
    """The person chose an entry of the tray's menu."""

    action: Action


Event = Switch | DnsMove | Login | Invoked | Chosen


class NoticeAgent:
    def __init__(self, board: NoticeBoard, tray: bool = True) -> None:
        self.board = board
        self.tray = tray
        self._indicator: Indicator | None = None
        self._tray_due = asyncio.Event()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._owner: str | None = None  # unique name of the daemon's connection
        self._owner_changes = 0
        self._session: Connection | None = None
        self._system: Connection | None = None
        self._capabilities: frozenset[str] | None = None
        self._last_id = 0
        self._actions: dict[str, Action] = {}  # the buttons of the notice shown last
        self._told_login = False

    async def run(self) -> None:
        """Until cancelled; NoticeError when the session bus is unreachable or lost, AgentRunning when
        another agent serves the session."""
        self._session = session = await Connection.open(NOTICE_WORDS, CALL_TIMEOUT, BusType.SESSION)
        try:
            (result,) = await session.call_bus("RequestName", "su", [AGENT_NAME, REQUEST_NAME_DO_NOT_QUEUE])
            if result != REQUEST_NAME_PRIMARY_OWNER:
                raise AgentRunning(f"another agent owns {AGENT_NAME} on the session bus")
            session.add_message_handler(self._on_session_message)
            await session.add_match(ACTION_MATCH)
            logger.info("showing nmfailover's switches as desktop notifications")
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch_system_bus())
                group.create_task(self._show_notices())
                group.create_task(self._session_lost())
                if self.tray:
                    self._indicator = Indicator(session, lambda a: self._events.put_nowait(Chosen(a)))
                    await self._indicator.start()
                    group.create_task(self._keep_tray())
        finally:
            session.close()

    async def _session_lost(self) -> None:
        assert self._session is not None
        await self._session.wait_for_disconnect()
        raise NoticeError("lost the session bus")

    # -- the system bus -----------------------------------------------------------------------------

    async def _watch_system_bus(self) -> None:
        while True:
            bus = await connect_with_backoff(self._subscribe, NoticeError, _log_unreachable)
            self._system = bus
            logger.info(
                "listening for switches on the system bus (daemon {})",
                "running" if self._owner else "not running",
            )
            if self._owner and not self._told_login:
                self._events.put_nowait(Login())
            try:
                await bus.wait_for_disconnect()
            finally:
                self._system = None
                bus.close()  # a no-op once it is lost; when cancelled, the agent is stopping
            logger.warning("lost the system bus; reconnecting")
            self._owner = None

    async def _subscribe(self) -> Connection:
        bus = await Connection.open(NOTICE_WORDS, CALL_TIMEOUT)
        bus.add_message_handler(self._on_system_message)
        try:
            await bus.add_match(OWNER_MATCH, SWITCHED_MATCH, DNS_MATCH)
            changes = self._owner_changes
            try:
                (owner,) = await bus.call_bus("GetNameOwner", "s", [BUS_NAME])
            except NoticeCallFailed as exc:
                if exc.error_name != ERROR_NAME_HAS_NO_OWNER:
                    raise
                owner = None
            # A NameOwnerChanged that came while we waited is newer than the answer.
            if changes == self._owner_changes:
                self._owner = owner
        except BaseException:
            bus.close()
            raise
        return bus

    def _on_system_message(self, msg: Any) -> bool:
        if msg.message_type != MessageType.SIGNAL:
            return False
        if (
            msg.sender == "org.freedesktop.DBus"
            and msg.interface == "org.freedesktop.DBus"
            and msg.member == "NameOwnerChanged"
            and msg.signature == "sss"
            and msg.body[0] == BUS_NAME
        ):
            new_owner = msg.body[2] or None
            self._owner, self._owner_changes = new_owner, self._owner_changes + 1
            self._tray_due.set()
            logger.info("the daemon {}", "started" if new_owner else "stopped")
        elif msg.interface == INTERFACE and msg.member in _SIGNATURES and msg.path == OBJECT_PATH:
            # Signals sent to us directly bypass the bus's match rules: check the sender here as well.
            if msg.sender != self._owner:
                logger.warning(
                    "ignored a {} signal from {}, which does not own {}", msg.member, msg.sender, BUS_NAME
                )
            elif msg.signature != _SIGNATURES[msg.member]:
                logger.warning("ignored a {} signal with arguments ({})", msg.member, msg.signature)
            elif msg.member == "Switched":
                self._events.put_nowait(Switch.from_signal(msg.body))
                self._tray_due.set()
            else:
                self._events.put_nowait(DnsMove.from_signal(msg.body))
        return False

    async def _status(self) -> Snapshot:
        """The daemon's uplinks now; empty when it cannot say (the notice then says less)."""
        if self._system is None:
            return Snapshot()
        try:
            (text,) = await self._system.call(*_DAEMON, "Status")
        except NoticeError as exc:
            logger.warning("could not read the daemon's status: {}", exc)
            return Snapshot()
        return Snapshot.from_status(str(text))

    async def _act(self, action: Action) -> Notice:
        """Make the call a button stands for, with the person's own rights."""
        if self._system is None:
            return self.board.action_failed(action, "the system bus is not reachable")
        if action.method == "Prefer":
            signature, body = "sd", [action.uplink, 0.0]
        elif action.method == "ForceFailover":
            signature, body = "d", [action.seconds]
        else:
            signature, body = "", []
        try:
            await self._system.call(*_DAEMON, action.method, signature, body)
        except NoticeCallFailed as exc:
            logger.warning("{} refused: {}", action.method, exc)
            if exc.error_name == ERROR_ACCESS_DENIED:
                return self.board.action_failed(action, f"not allowed: {exc.text}")
            return self.board.action_failed(action, exc.text)
        except NoticeError as exc:
            return self.board.action_failed(action, str(exc))
        logger.info("{}({}) done for the person at the desktop", action.method, action.uplink)
        self._tray_due.set()
        return self.board.after_action(action, await self._status())

    async def _keep_tray(self) -> None:
        """The indicator follows the daemon: at once after a switch, a start or a stop, else every
        TRAY_REFRESH seconds (health changes without a switch)."""
        assert self._indicator is not None
        while True:
            self._tray_due.clear()
            self._indicator.update(tray_view(await self._status() if self._owner else None))
            try:
                async with asyncio.timeout(TRAY_REFRESH):
                    await self._tray_due.wait()
            except TimeoutError:
                pass

    # -- the session bus ----------------------------------------------------------------------------

    def _on_session_message(self, msg: Any) -> bool:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.interface == _NOTIFICATIONS[2]
            and msg.member == "ActionInvoked"
            and msg.signature == "us"
        ):
            self._events.put_nowait(Invoked(int(msg.body[0]), str(msg.body[1])))
        return False

    async def _next_notice(self, event: Event) -> Notice | None:
        if isinstance(event, Switch):
            return self.board.notice(event, await self._status())
        if isinstance(event, DnsMove):
            return self.board.dns_notice(event)
        if isinstance(event, Login):
            self._told_login = True
            return self.board.at_login(await self._status())
        if isinstance(event, Chosen):
            return await self._act(event.action)
        # Only the buttons of the notice on screen: an older one's were replaced with it.
        action = self._actions.get(event.key) if event.notification_id == self._last_id else None
        return None if action is None else await self._act(action)

    async def _show_notices(self) -> None:
        # One at a time: each Notify must name the id the previous one got.
        while True:
            notice = await self._next_notice(await self._events.get())
            if notice is None:
                continue
            try:
                self._last_id = await self._notify(notice)
                logger.info("notice {}: {}", self._last_id, notice.summary)
            except NoticeError as exc:
                logger.warning("could not show {!r}: {}", notice.summary, exc)

    async def _notify(self, notice: Notice) -> int:
        capabilities = await self._server_capabilities()
        # A server with body markup reads "&" and "<" in a profile name as markup; one without shows
        # entities as they are. So escape exactly when the server says it reads markup.
        body = html.escape(notice.body, quote=False) if "body-markup" in capabilities else notice.body
        actions = notice.actions if "actions" in capabilities else ()
        hints = {"urgency": Variant("y", notice.urgency), "category": Variant("s", "network")}
        assert self._session is not None
        (notification_id,) = await self._session.call(
            *_NOTIFICATIONS,
            "Notify",
            "susssasa{sv}i",
            [
                APP_NAME,
                self._last_id,
                notice.icon,
                notice.summary,
                body,
                [part for action in actions for part in (action.key, action.label)],
                hints,
                -1,
            ],
        )
        self._actions = {action.key: action for action in actions}
        return int(notification_id)

    async def _server_capabilities(self) -> frozenset[str]:
        if self._capabilities is None:
            assert self._session is not None
            try:
                (capabilities,) = await self._session.call(*_NOTIFICATIONS, "GetCapabilities")
            except NoticeError:
                return frozenset()  # no notification server yet: ask again next time
            self._capabilities = frozenset(str(c) for c in capabilities)
        return self._capabilities


def _log_unreachable(exc: NoticeError, attempt: int, delay: float) -> None:
    # Once at warning, then quietly: a system bus that stays away is logged by the system.
    (logger.warning if attempt == 1 else logger.debug)(
        "system bus: {}; trying again in {:g} s (attempt {})", exc, delay, attempt
    )


class NoticeWords(Words):
    def unreachable(self, bus_type: BusType, exc: BaseException) -> NoticeError:
        which = "session" if bus_type == BusType.SESSION else "system"
        return NoticeError(f"cannot connect to the {which} bus: {exc}")

    def no_answer(self, member: str, timeout: float) -> NoticeError:
        return NoticeError(f"{member}: no answer within {timeout:g} s")

    def lost(self, member: str, exc: BaseException | None) -> NoticeError:
        return NoticeError(f"{member}: bus connection lost" + ("" if exc is None else f": {exc}"))

    def refused(self, member: str, error_name: str, text: str) -> NoticeError:
        return NoticeCallFailed(error_name, text)


NOTICE_WORDS = NoticeWords()


async def run_agent(board: NoticeBoard, tray: bool = True) -> int:
    """`nmfailover notify`: 0 on SIGTERM/SIGINT or when another agent serves the session, 1 when the
    session bus is unreachable or lost."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = asyncio.ensure_future(NoticeAgent(board, tray).run())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({agent, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not agent.done():
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)
        logger.info("stopped")
        return EXIT_OK
    error = agent.exception()
    # The task group wraps what its tasks raise.
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    if isinstance(error, AgentRunning):
        logger.info("{}; nothing to do", error)
        return EXIT_OK
    if isinstance(error, NoticeError):
        logger.error("{}", error)
        return EXIT_FAILURE
    raise error if error is not None else AssertionError("the agent ended without an error")


def count_arg(text: str) -> int:
    """argparse type for --flap-count: a whole number of 1 or more."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more; got {text!r}")
    return int(text)
