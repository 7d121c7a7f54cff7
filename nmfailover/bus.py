"""The one way onto a D-Bus bus: the library (dbus-fast where installed, else dbus-next, Debian's: same API,
same code), connecting, calling with a timeout, every failure as an exception of the package's root, and
staying connected with back-off.

Each client (NetworkManager's, the control interface's, the desktop agent's) says how its failures read
to a person through a `Words` of its own; what can fail, and when, is decided here once.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

from loguru import logger

from .backoff import BACKOFF, backoff_delays
from .errors import NmfailoverError

try:
    from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
    from dbus_fast.aio import MessageBus

    DBUS_LIBRARY = "dbus-fast"
except ImportError:  # pragma: no cover - exercised by the dbus-next CI run
    from dbus_next import BusType, Message, MessageFlag, MessageType, Variant  # type: ignore[no-redef,import-not-found,unused-ignore]
    from dbus_next.aio import MessageBus  # type: ignore[no-redef,import-not-found,unused-ignore]

    DBUS_LIBRARY = "dbus-next"

__all__ = [
    "DBUS_LIBRARY",
    "BusType",
    "Connection",
    "Message",
    "MessageBus",
    "MessageFlag",
    "MessageType",
    "Variant",
    "Words",
]

DEFAULT_SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
# The bus itself, to add match rules, own names and ask who is who.
DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
IFACE_PROPERTIES = "org.freedesktop.DBus.Properties"
IFACE_INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
IFACE_PEER = "org.freedesktop.DBus.Peer"
# The bus's own error names that mean "nobody there (now)", "not allowed", "no such object or method".
ERROR_SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"
ERROR_NAME_HAS_NO_OWNER = "org.freedesktop.DBus.Error.NameHasNoOwner"
ERROR_NO_REPLY = "org.freedesktop.DBus.Error.NoReply"
ERROR_DISCONNECTED = "org.freedesktop.DBus.Error.Disconnected"
ERROR_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
ERROR_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
ERROR_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
ERROR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
# RequestName's flag and answers.
REQUEST_NAME_DO_NOT_QUEUE = 0x4
REQUEST_NAME_PRIMARY_OWNER, REQUEST_NAME_ALREADY_OWNER = 1, 4

IDLE_BEAT = 5.0  # a task waiting for its connection to end still proves it is alive this often

T = TypeVar("T")
E = TypeVar("E", bound=NmfailoverError)


def system_bus_location(environ: Mapping[str, str] | None = None) -> str:
    """Where clients look for the system bus: the socket path, and where that came from."""
    address = (os.environ if environ is None else environ).get("DBUS_SYSTEM_BUS_ADDRESS", "")
    if not address:
        return DEFAULT_SYSTEM_BUS_SOCKET
    for part in address.split(";"):
        transport, _, params = part.partition(":")
        values = dict(item.partition("=")[::2] for item in params.split(","))
        if transport == "unix" and values.get("path"):
            return f"{unquote(values['path'])} (DBUS_SYSTEM_BUS_ADDRESS)"
    return f"{address!r} (DBUS_SYSTEM_BUS_ADDRESS)"


def bus_connect_error(exc: BaseException) -> str:
    """The one-line reason a system bus connection failed, with where it was looked for and what to check."""
    detail = str(exc) or type(exc).__name__
    return (
        f"cannot connect to the system bus at {system_bus_location()}: {detail}; "
        "is dbus running? check `systemctl status dbus`"
    )


class Words(ABC):
    """How one client's bus failures read: each method returns the exception (of the package's root) that
    the failure raises. `member` is the method that was called."""

    @abstractmethod
    def unreachable(self, bus_type: BusType, exc: BaseException) -> NmfailoverError:
        """Connecting failed."""

    @abstractmethod
    def no_answer(self, member: str, timeout: float) -> NmfailoverError: ...

    def not_connected(self, member: str) -> NmfailoverError:
        """A call on a connection that has already ended."""
        return self.lost(member, None)

    @abstractmethod
    def lost(self, member: str, exc: BaseException | None) -> NmfailoverError:
        """The connection ended before the answer came (`exc`: how the library said so, if it raised)."""

    @abstractmethod
    def refused(self, member: str, error_name: str, text: str) -> NmfailoverError:
        """An error reply: its D-Bus error name and its message ("" when it sent none)."""


class Connection:
    """One connection to a bus and the client's `Words` for its failures."""

    def __init__(self, bus: MessageBus, words: Words, timeout: float) -> None:
        # Any: the two libraries' annotations differ (dbus-fast's wait_for_disconnect has none).
        self._bus: Any = bus
        self.words = words
        self.timeout = timeout

    @classmethod
    async def open(cls, words: Words, timeout: float, bus_type: BusType = BusType.SYSTEM) -> Connection:
        try:
            async with asyncio.timeout(timeout):
                bus = await MessageBus(bus_type=bus_type).connect()
        except Exception as exc:  # noqa: BLE001 - the libraries raise many kinds here; all mean the same
            raise words.unreachable(bus_type, exc) from exc
        return cls(bus, words, timeout)

    @property
    def connected(self) -> bool:
        return bool(self._bus.connected)

    @property
    def unique_name(self) -> str:
        return str(self._bus.unique_name)

    def add_message_handler(self, handler: Callable[[Any], Any]) -> None:
        """`handler(message)` for each message that arrives; True from it means "answered, leave it"."""
        self._bus.add_message_handler(handler)

    async def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        timeout: float | None = None,
    ) -> list[Any]:
        """The reply's body; every failure as the client's exception."""
        timeout = self.timeout if timeout is None else timeout
        if not self._bus.connected:
            raise self.words.not_connected(member)
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        try:
            async with asyncio.timeout(timeout):
                reply = await self._bus.call(msg)
        except TimeoutError:
            raise self.words.no_answer(member, timeout) from None
        except (OSError, EOFError, ConnectionError) as exc:
            raise self.words.lost(member, exc) from exc
        if reply is None:
            raise self.words.lost(member, None)
        if reply.message_type == MessageType.ERROR:
            raise self.words.refused(member, reply.error_name or "", str(reply.body[0]) if reply.body else "")
        return list(reply.body)

    async def call_bus(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> list[Any]:
        """A method of the bus itself (org.freedesktop.DBus)."""
        return await self.call(*DBUS, member, signature, body)

    async def add_match(self, *rules: str) -> None:
        for rule in rules:
            await self.call_bus("AddMatch", "s", [rule])

    async def emit(self, message: Message) -> None:
        """Send a signal and wait until it is written."""
        await self._bus.send(message)

    def send(self, message: Message) -> None:
        """Send without waiting: a peer that went away meanwhile must not leave an exception behind."""
        future = self._bus.send(message)
        if isinstance(future, asyncio.Future):
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def wait_for_disconnect(self) -> None:
        """Until the connection ends, however it ends."""
        try:
            await self._bus.wait_for_disconnect()
        except Exception as exc:  # noqa: BLE001 - the library reports a broken socket by raising here
            logger.debug("bus connection ended: {!r}", exc)

    async def until_lost(self, beat: Callable[[], None], every: float = IDLE_BEAT) -> None:
        """Until the connection ends, calling `beat` at least every `every` seconds meanwhile."""
        await until_lost(self.wait_for_disconnect, beat, every)

    def close(self) -> None:
        """A no-op once the connection is lost."""
        self._bus.disconnect()


async def until_lost(
    wait_for_disconnect: Callable[[], Awaitable[None]], beat: Callable[[], None], every: float = IDLE_BEAT
) -> None:
    """Until `wait_for_disconnect()` returns, calling `beat` at least every `every` seconds meanwhile."""
    # Waited on from a task of its own: a timeout must not cancel the library's own future.
    lost = asyncio.ensure_future(wait_for_disconnect())
    try:
        while not lost.done():
            beat()
            await asyncio.wait({lost}, timeout=every)
    finally:
        lost.cancel()


def _nothing() -> None:
    pass


async def connect_with_backoff(
    connect: Callable[[], Awaitable[T]],
    retry_on: type[E],
    failed: Callable[[E, int, float], None],
    *,
    beat: Callable[[], None] = _nothing,
    after_loss: bool = False,
    steps: tuple[float, ...] = BACKOFF,
) -> T:
    """`connect()` until it works, waiting BACKOFF (backoff.py) between attempts that raise `retry_on`;
    `failed(exc, attempt, delay)` hears of each failure and the wait after it. `after_loss`: wait once
    before the first attempt too (a bus that just went away is not back at once)."""
    delays = backoff_delays(steps)
    if after_loss:
        beat()
        await asyncio.sleep(next(delays))
    attempt = 0
    while True:
        attempt += 1
        try:
            return await connect()
        except retry_on as exc:
            delay = next(delays)
            failed(exc, attempt, delay)
            beat()
            await asyncio.sleep(delay)
