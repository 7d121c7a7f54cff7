"""Which D-Bus library the adapter runs on: CI runs the real-NetworkManager tests under both."""

import os

from nmfailover.bus import DBUS_LIBRARY


def test_adapter_uses_the_installed_library() -> None:
    expected = os.environ.get("EXPECT_DBUS_LIBRARY", "dbus-fast")
    assert DBUS_LIBRARY == expected
