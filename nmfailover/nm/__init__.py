"""NetworkManager over D-Bus, in parts by job:

- names: NetworkManager's D-Bus names, error names, and its numbers as IntEnum/IntFlag (no I/O)
- values: the typed values the rest of the package gets (profiles, candidates, links)
- edits: settings dicts as D-Bus hands them over, and the pure edits a Reapply sends back
- events: NetworkManager's signals as typed events
- session: the bus connection, the signal subscription, calls with NetworkManager's errors
- reading, writing: reading and changing NetworkManager's state; client: both, as one client

What the rest of the package uses is importable from here.
"""

from __future__ import annotations

from .client import NetworkManagerClient
from .edits import (
    MAIN_TABLE,
    RESOLVER_ROUTE_METRIC,
    SOURCE_ROUTE_METRIC,
    ResolverRoutes,
    Restore,
    Settings,
    SourceRouting,
    resolver_version,
)
from .events import (
    ActiveConnectionsChanged,
    CarrierChanged,
    DevicesChanged,
    DeviceStateChanged,
    IpConfigChanged,
    MeteredChanged,
    NMEvent,
    NMStarted,
    NMStopped,
    ProfilesChanged,
)
from .names import (
    ERROR_NO_SUCH_PROFILE,
    ActivationStateFlags,
    ActiveConnectionState,
    Connectivity,
    DeviceState,
    DeviceStateReason,
    DeviceType,
    Metered,
    ReapplyFlags,
    Update2Flags,
)
from .values import (
    USB_TETHERING_DRIVERS,
    Candidate,
    Dns,
    LinkState,
    Metrics,
    Profile,
    Tethering,
    WireGuardDevice,
    phone_or_modem,
)

__all__ = [
    "ERROR_NO_SUCH_PROFILE",
    "MAIN_TABLE",
    "RESOLVER_ROUTE_METRIC",
    "SOURCE_ROUTE_METRIC",
    "USB_TETHERING_DRIVERS",
    "ActivationStateFlags",
    "ActiveConnectionState",
    "ActiveConnectionsChanged",
    "Candidate",
    "CarrierChanged",
    "Connectivity",
    "DeviceState",
    "DeviceStateChanged",
    "DeviceStateReason",
    "DeviceType",
    "DevicesChanged",
    "Dns",
    "IpConfigChanged",
    "LinkState",
    "Metered",
    "MeteredChanged",
    "Metrics",
    "NMEvent",
    "NMStarted",
    "NMStopped",
    "NetworkManagerClient",
    "Profile",
    "ProfilesChanged",
    "ReapplyFlags",
    "ResolverRoutes",
    "Restore",
    "Settings",
    "SourceRouting",
    "Tethering",
    "Update2Flags",
    "WireGuardDevice",
    "phone_or_modem",
    "resolver_version",
]
