"""The daemon's engine: probe scheduling (probing), event intake (intake), actuation (actuator), the
operator's API (operator), all run by core.Engine under one supervisor (supervisor)."""

from .core import Engine, FailbackGuard, SwitchListener
from .operator import Operator
from .state import SwitchEvent, Uplink, UplinkView, role_name
from .supervisor import Supervisor

__all__ = [
    "Engine",
    "FailbackGuard",
    "Operator",
    "Supervisor",
    "SwitchEvent",
    "SwitchListener",
    "Uplink",
    "UplinkView",
    "role_name",
]
