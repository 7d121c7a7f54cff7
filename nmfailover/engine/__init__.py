"""The daemon's engine: probe scheduling (probing), event intake (intake), actuation (actuator), the
operator's API (operator), all run by core.Engine under one supervisor (supervisor)."""

from .core import DnsListener, Engine, EngineParams, FailbackGuard, SwitchListener, find_uplinks
from .operator import Operator
from .state import DnsMoved, SwitchEvent, Uplink, UplinkView, role_name
from .supervisor import Supervisor

__all__ = [
    "DnsListener",
    "DnsMoved",
    "Engine",
    "EngineParams",
    "FailbackGuard",
    "Operator",
    "Supervisor",
    "SwitchEvent",
    "SwitchListener",
    "Uplink",
    "UplinkView",
    "find_uplinks",
    "role_name",
]
