"""NetworkManager's D-Bus names and shapes: its bus name, object paths and interfaces, its error names, and
the numbers it defines (NetworkManager's nm-dbus-interface.h) as IntEnum and IntFlag. The one module that
knows them; nothing here talks to a bus."""

from __future__ import annotations

from enum import IntEnum, IntFlag

from ..bus import (
    ERROR_ACCESS_DENIED,
    ERROR_DISCONNECTED,
    ERROR_NAME_HAS_NO_OWNER,
    ERROR_NO_REPLY,
    ERROR_SERVICE_UNKNOWN,
    ERROR_UNKNOWN_METHOD,
    ERROR_UNKNOWN_OBJECT,
)

NM_BUS = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
SETTINGS_PATH = "/org/freedesktop/NetworkManager/Settings"
IFACE_NM = NM_BUS
IFACE_DEVICE = f"{NM_BUS}.Device"
IFACE_SETTINGS = f"{NM_BUS}.Settings"
IFACE_CONNECTION = f"{NM_BUS}.Settings.Connection"
IFACE_WIRED = f"{NM_BUS}.Device.Wired"
IFACE_WIREGUARD = f"{NM_BUS}.Device.WireGuard"
IFACE_ACTIVE = f"{NM_BUS}.Connection.Active"
IFACE_IP4 = f"{NM_BUS}.IP4Config"
IFACE_IP6 = f"{NM_BUS}.IP6Config"

ERROR_NO_SUCH_PROFILE = f"{NM_BUS}.Settings.InvalidConnection"
ERROR_VERSION_MISMATCH = f"{NM_BUS}.Device.VersionIdMismatch"
ERROR_NOT_ACTIVE = f"{NM_BUS}.Device.NotActive"
# The error names that mean "NetworkManager (or the bus) is not there now", "polkit said no" and "the device
# changed under us": each is an exception of its own (errors.py).
ERROR_UNAVAILABLE = frozenset(
    {ERROR_SERVICE_UNKNOWN, ERROR_NO_REPLY, ERROR_DISCONNECTED, ERROR_NAME_HAS_NO_OWNER}
)
ERROR_DENIED = frozenset(
    {
        ERROR_ACCESS_DENIED,
        f"{NM_BUS}.PermissionDenied",
        f"{NM_BUS}.Settings.PermissionDenied",
        f"{NM_BUS}.Device.PermissionDenied",
    }
)
ERROR_LINK_CHANGED = frozenset(
    {
        ERROR_NOT_ACTIVE,
        ERROR_UNKNOWN_OBJECT,
        # GDBus's answer for a device object that is gone (NetworkManager restarted, the device removed).
        ERROR_UNKNOWN_METHOD,
    }
)
# GetAppliedConnection's flags argument: none are defined yet.
APPLIED_CONNECTION_FLAGS = 0


class _Unlisted(IntEnum):
    """An enum that takes a number a newer NetworkManager may send too, as a member of its own."""

    @classmethod
    def _missing_(cls, value: object) -> _Unlisted | None:
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNLISTED_{value}"
        member._value_ = value
        return member


class DeviceState(_Unlisted):
    """NMDeviceState. UNKNOWN also stands for "the profile is not active on any device"."""

    UNKNOWN = 0
    UNMANAGED = 10
    UNAVAILABLE = 20
    DISCONNECTED = 30
    PREPARE = 40
    CONFIG = 50
    NEED_AUTH = 60
    IP_CONFIG = 70
    IP_CHECK = 80
    SECONDARIES = 90
    ACTIVATED = 100
    DEACTIVATING = 110
    FAILED = 120

    @property
    def word(self) -> str:
        """As nmcli says it; the number for one this module does not know."""
        return _DEVICE_STATE_WORDS.get(self, str(int(self)))


_DEVICE_STATE_WORDS = {
    DeviceState.UNMANAGED: "unmanaged",
    DeviceState.UNAVAILABLE: "unavailable",
    DeviceState.DISCONNECTED: "disconnected",
    DeviceState.PREPARE: "preparing",
    DeviceState.CONFIG: "configuring",
    DeviceState.NEED_AUTH: "need-auth",
    DeviceState.IP_CONFIG: "ip-config",
    DeviceState.IP_CHECK: "ip-check",
    DeviceState.SECONDARIES: "secondaries",
    DeviceState.ACTIVATED: "activated",
    DeviceState.DEACTIVATING: "deactivating",
    DeviceState.FAILED: "failed",
}


class DeviceStateReason(_Unlisted):
    """NMDeviceStateReason: the third argument of a device's StateChanged signal."""

    NONE = 0
    UNKNOWN = 1
    NOW_MANAGED = 2
    NOW_UNMANAGED = 3
    CONFIG_FAILED = 4
    IP_CONFIG_UNAVAILABLE = 5
    IP_CONFIG_EXPIRED = 6
    NO_SECRETS = 7
    SUPPLICANT_DISCONNECT = 8
    SUPPLICANT_CONFIG_FAILED = 9
    SUPPLICANT_FAILED = 10
    SUPPLICANT_TIMEOUT = 11
    PPP_START_FAILED = 12
    PPP_DISCONNECT = 13
    PPP_FAILED = 14
    DHCP_START_FAILED = 15
    DHCP_ERROR = 16
    DHCP_FAILED = 17
    SHARED_START_FAILED = 18
    SHARED_FAILED = 19
    AUTOIP_START_FAILED = 20
    AUTOIP_ERROR = 21
    AUTOIP_FAILED = 22
    MODEM_BUSY = 23
    MODEM_NO_DIAL_TONE = 24
    MODEM_NO_CARRIER = 25
    MODEM_DIAL_TIMEOUT = 26
    MODEM_DIAL_FAILED = 27
    MODEM_INIT_FAILED = 28
    GSM_APN_FAILED = 29
    GSM_REGISTRATION_NOT_SEARCHING = 30
    GSM_REGISTRATION_DENIED = 31
    GSM_REGISTRATION_TIMEOUT = 32
    GSM_REGISTRATION_FAILED = 33
    GSM_PIN_CHECK_FAILED = 34
    FIRMWARE_MISSING = 35
    REMOVED = 36
    SLEEPING = 37
    CONNECTION_REMOVED = 38
    USER_REQUESTED = 39
    CARRIER = 40
    CONNECTION_ASSUMED = 41
    SUPPLICANT_AVAILABLE = 42
    MODEM_NOT_FOUND = 43
    BT_FAILED = 44
    GSM_SIM_NOT_INSERTED = 45
    GSM_SIM_PIN_REQUIRED = 46
    GSM_SIM_PUK_REQUIRED = 47
    GSM_SIM_WRONG = 48
    INFINIBAND_MODE = 49
    DEPENDENCY_FAILED = 50
    BR2684_FAILED = 51
    MODEM_MANAGER_UNAVAILABLE = 52
    SSID_NOT_FOUND = 53
    SECONDARY_CONNECTION_FAILED = 54
    DCB_FCOE_FAILED = 55
    TEAMD_CONTROL_FAILED = 56
    MODEM_FAILED = 57
    MODEM_AVAILABLE = 58
    SIM_PIN_INCORRECT = 59
    NEW_ACTIVATION = 60
    PARENT_CHANGED = 61
    PARENT_MANAGED_CHANGED = 62
    OVSDB_FAILED = 63
    IP_ADDRESS_DUPLICATE = 64
    IP_METHOD_UNSUPPORTED = 65
    SRIOV_CONFIGURATION_FAILED = 66
    PEER_NOT_FOUND = 67


class Metered(_Unlisted):
    """NMMetered: a device's and NetworkManager's own Metered property. A profile's connection.metered takes
    only UNKNOWN, YES and NO (NetworkManager refuses guesses there, also in Reapply)."""

    UNKNOWN = 0
    YES = 1
    NO = 2
    GUESS_YES = 3
    GUESS_NO = 4

    @property
    def word(self) -> str:
        """As NetworkManager and the status say it: unknown, yes, no, guess-yes, guess-no."""
        return _METERED_WORDS.get(self, str(int(self)))


_METERED_WORDS = {m: m.name.lower().replace("_", "-") for m in Metered}


class Connectivity(_Unlisted):
    """NMConnectivityState: NetworkManager's own Connectivity property."""

    UNKNOWN = 0
    NONE = 1
    PORTAL = 2
    LIMITED = 3
    FULL = 4


class ActiveConnectionState(_Unlisted):
    """NMActiveConnectionState: an active connection's State."""

    UNKNOWN = 0
    ACTIVATING = 1
    ACTIVATED = 2
    DEACTIVATING = 3
    DEACTIVATED = 4


class ActivationStateFlags(IntFlag):
    """NMActivationStateFlags: an active connection's StateFlags."""

    NONE = 0
    IS_CONTROLLER = 0x1
    IS_PORT = 0x2
    LAYER2_READY = 0x4
    IP4_READY = 0x8
    IP6_READY = 0x10
    CONTROLLER_HAS_PORTS = 0x20
    LIFETIME_BOUND_TO_PROFILE_VISIBILITY = 0x40
    EXTERNAL = 0x80


class DeviceType(_Unlisted):
    """NMDeviceType: a device's DeviceType."""

    UNKNOWN = 0
    ETHERNET = 1
    WIFI = 2
    UNUSED1 = 3
    UNUSED2 = 4
    BT = 5
    OLPC_MESH = 6
    WIMAX = 7
    MODEM = 8
    INFINIBAND = 9
    BOND = 10
    VLAN = 11
    ADSL = 12
    BRIDGE = 13
    GENERIC = 14
    TEAM = 15
    TUN = 16
    IP_TUNNEL = 17
    MACVLAN = 18
    VXLAN = 19
    VETH = 20
    MACSEC = 21
    DUMMY = 22
    PPP = 23
    OVS_INTERFACE = 24
    OVS_PORT = 25
    OVS_BRIDGE = 26
    WPAN = 27
    SIXLOWPAN = 28  # NM_DEVICE_TYPE_6LOWPAN
    WIREGUARD = 29
    WIFI_P2P = 30
    VRF = 31
    LOOPBACK = 32


class ReapplyFlags(IntFlag):
    """NMDeviceReapplyFlags: Reapply's flags argument."""

    NONE = 0
    PRESERVE_EXTERNAL_IP = 0x1


class Update2Flags(IntFlag):
    """NMSettingsUpdate2Flags: a connection profile's Update2 flags argument."""

    NONE = 0
    TO_DISK = 0x1
    IN_MEMORY = 0x2
    IN_MEMORY_DETACHED = 0x4
    IN_MEMORY_ONLY = 0x8
    VOLATILE = 0x10
    BLOCK_AUTOCONNECT = 0x20
    NO_REAPPLY = 0x40
