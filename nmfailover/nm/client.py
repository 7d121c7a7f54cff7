"""The NetworkManager client the daemon runs on: one bus connection (session.py) that reads (reading.py) and
changes (writing.py) NetworkManager's state."""

from __future__ import annotations

from .writing import StateWriter


class NetworkManagerClient(StateWriter):
    """One bus connection to NetworkManager: subscribe to its signals, then read and change state on demand.

    It speaks plain D-Bus messages (no introspection proxies), which keeps the same code working on
    dbus-fast and on dbus-next (see bus.py)."""
