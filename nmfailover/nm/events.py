"""What the engine hears from NetworkManager: its signals as typed events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..bus import IFACE_PROPERTIES, MessageType
from .edits import unwrap
from .names import (
    IFACE_CONNECTION,
    IFACE_DEVICE,
    IFACE_IP4,
    IFACE_IP6,
    IFACE_NM,
    IFACE_SETTINGS,
    IFACE_WIRED,
    NM_PATH,
    DeviceState,
    Metered,
)


@dataclass(frozen=True)
class CarrierChanged:
    """A wired device's carrier: NetworkManager acts on a lost one seconds later, this comes at once."""

    device: str
    carrier: bool


@dataclass(frozen=True)
class DeviceStateChanged:
    device: str
    new_state: DeviceState
    old_state: DeviceState


@dataclass(frozen=True)
class DevicesChanged:
    """A device appeared or vanished."""

    device: str
    added: bool


@dataclass(frozen=True)
class ProfilesChanged:
    """A connection profile was added, changed or removed."""

    path: str


@dataclass(frozen=True)
class ActiveConnectionsChanged:
    pass


@dataclass(frozen=True)
class MeteredChanged:
    """A device's Metered property changed: the burst it arrives in re-reads the links, so status is fresh."""

    device: str
    metered: Metered


@dataclass(frozen=True)
class IpConfigChanged:
    """A device's addresses or gateway changed (DHCP, SLAAC, a new lease): `path` is its IP4Config or
    IP6Config object, so the burst it arrives in re-reads every link."""

    path: str


@dataclass(frozen=True)
class NMStarted:
    """NetworkManager (re)appeared on the bus, or our bus connection was re-established."""


@dataclass(frozen=True)
class NMStopped:
    pass


NMEvent = (
    CarrierChanged
    | DeviceStateChanged
    | DevicesChanged
    | ProfilesChanged
    | ActiveConnectionsChanged
    | MeteredChanged
    | IpConfigChanged
    | NMStarted
    | NMStopped
)


def event_of(msg: Any) -> NMEvent | None:
    """The typed event a NetworkManager signal stands for, or None for signals the engine has no use for."""
    if msg.message_type != MessageType.SIGNAL:
        return None
    interface, member, body = msg.interface, msg.member, msg.body
    if member == "NameOwnerChanged":
        return NMStarted() if body[2] else NMStopped()
    if interface == IFACE_DEVICE and member == "StateChanged":
        return DeviceStateChanged(msg.path, DeviceState(body[0]), DeviceState(body[1]))
    if interface == IFACE_NM and member in ("DeviceAdded", "DeviceRemoved"):
        return DevicesChanged(str(body[0]), member == "DeviceAdded")
    if (interface == IFACE_SETTINGS and member in ("ConnectionRemoved", "NewConnection")) or (
        interface == IFACE_CONNECTION and member in ("Updated", "Removed")
    ):
        return ProfilesChanged(str(body[0]) if interface == IFACE_SETTINGS else msg.path)
    if interface == IFACE_PROPERTIES and body and body[0] == IFACE_WIRED and "Carrier" in body[1]:
        return CarrierChanged(msg.path, bool(unwrap(body[1]["Carrier"])))
    if interface == IFACE_PROPERTIES and body and body[0] == IFACE_DEVICE and "Metered" in body[1]:
        return MeteredChanged(msg.path, Metered(unwrap(body[1]["Metered"])))
    if (
        interface == IFACE_PROPERTIES
        and body
        and body[0] in (IFACE_IP4, IFACE_IP6)
        and ("AddressData" in body[1] or "Gateway" in body[1])
    ):
        return IpConfigChanged(msg.path)
    if (
        interface == IFACE_PROPERTIES
        and msg.path == NM_PATH
        and body
        and body[0] == IFACE_NM
        and "ActiveConnections" in body[1]
    ):
        return ActiveConnectionsChanged()
    return None
