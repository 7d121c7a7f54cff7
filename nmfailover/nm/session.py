"""One bus connection to NetworkManager: its signals as typed events, and its methods and properties called
with NetworkManager's failures as the package's exceptions (errors.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..bus import IFACE_PROPERTIES, BusType, Connection, Words, bus_connect_error
from ..errors import NMAccessDenied, NMError, NMLinkChanged, NMUnavailable
from .edits import unwrap
from .events import NMEvent, event_of
from .names import ERROR_DENIED, ERROR_LINK_CHANGED, ERROR_UNAVAILABLE, NM_BUS

CALL_TIMEOUT = 10.0


class _NMWords(Words):
    """NetworkManager's error replies as our exceptions, keeping the D-Bus error name."""

    def unreachable(self, bus_type: BusType, exc: BaseException) -> NMError:
        return NMUnavailable(bus_connect_error(exc))

    def no_answer(self, member: str, timeout: float) -> NMError:
        return NMUnavailable(f"{member} got no answer within {timeout:g} s")

    def not_connected(self, member: str) -> NMError:
        return NMUnavailable("not connected to the system bus")

    def lost(self, member: str, exc: BaseException | None) -> NMError:
        if exc is None:
            return NMUnavailable(f"bus connection lost during {member}")
        return NMUnavailable(f"bus connection lost during {member}: {exc}")

    def refused(self, member: str, error_name: str, text: str) -> NMError:
        message = f"{member} failed: {error_name}: {text}"
        if error_name in ERROR_UNAVAILABLE:
            return NMUnavailable(f"NetworkManager is not answering ({member}): {text}", error_name)
        if error_name in ERROR_DENIED:
            return NMAccessDenied(f"{member} was refused (permission denied): {text}", error_name)
        if error_name in ERROR_LINK_CHANGED:
            return NMLinkChanged(message, error_name)
        return NMError(message, error_name)


NM_WORDS = _NMWords()


class NMSession:
    """The connection, the subscription to NetworkManager's signals, and calls to NetworkManager.

    `on_event` is called (from the bus reader, so it must not block) with a typed event whenever something
    about devices, active connections, profiles or NetworkManager's presence changed.
    """

    def __init__(self, on_event: Callable[[NMEvent], None] = lambda _: None) -> None:
        self._on_event = on_event
        self._bus: Connection | None = None

    async def connect(self) -> None:
        bus = await Connection.open(NM_WORDS, CALL_TIMEOUT)
        self._bus = bus
        bus.add_message_handler(self._handle_message)
        name_owner = f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{NM_BUS}'"
        await bus.add_match(f"type='signal',sender='{NM_BUS}'", name_owner)

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    async def wait_for_disconnect(self) -> None:
        if self._bus is not None:
            await self._bus.wait_for_disconnect()

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    def _handle_message(self, msg: Any) -> None:
        event = event_of(msg)
        if event is not None:
            self._on_event(event)

    async def _nm(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> list[Any]:
        if self._bus is None:
            raise NM_WORDS.not_connected(member)
        return await self._bus.call(NM_BUS, path, interface, member, signature, body)

    async def _get_all(self, path: str, interface: str) -> dict[str, Any]:
        if not path or path == "/":
            return {}
        (props,) = await self._nm(path, IFACE_PROPERTIES, "GetAll", "s", [interface])
        return {key: unwrap(value) for key, value in props.items()}

    async def _get(self, path: str, interface: str, name: str) -> Any:
        (value,) = await self._nm(path, IFACE_PROPERTIES, "Get", "ss", [interface, name])
        return unwrap(value)
