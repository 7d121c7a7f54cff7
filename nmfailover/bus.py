"""The D-Bus library: dbus-fast where installed, else dbus-next (Debian's). Same API, same code."""

from __future__ import annotations

try:
    from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
    from dbus_fast.aio import MessageBus

    DBUS_LIBRARY = "dbus-fast"
except ImportError:  # pragma: no cover - exercised by the dbus-next CI run
    from dbus_next import BusType, Message, MessageFlag, MessageType, Variant  # type: ignore[no-redef,import-not-found,unused-ignore]
    from dbus_next.aio import MessageBus  # type: ignore[no-redef,import-not-found,unused-ignore]

    DBUS_LIBRARY = "dbus-next"

__all__ = ["DBUS_LIBRARY", "BusType", "Message", "MessageBus", "MessageFlag", "MessageType", "Variant"]
