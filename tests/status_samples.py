"""Status documents for the readers' tests, built from the model (nmfailover.status), so that a test never
holds a document the daemon cannot send."""

from __future__ import annotations

from typing import Any

from nmfailover.status import Status, UplinkStatus


def uplink(role: str, profile: str = "", **fields: Any) -> UplinkStatus:
    """An uplink that is up and not carrying traffic, with `fields` changed."""
    profile = profile or role.title()
    base: dict[str, Any] = {
        "role": role,
        "profile": profile,
        "uuid": f"uuid-{profile}",
        "device": f"wan-{role}",
        "link": "activated",
        "health": "up",
        "consecutive_failures": 0,
        "consecutive_successes": 3,
        "latency_ms": 12.0,
        "reason": "1/1 targets ok",
        "carrying_traffic": False,
    }
    return UplinkStatus.model_validate(base | fields)


def status(*uplinks: UplinkStatus, **fields: Any) -> Status:
    """A status with `uplinks` (most preferred first), nothing pinned, no switch yet, `fields` changed."""
    carrier = next((u.role for u in uplinks if u.carrying_traffic), None)
    base: dict[str, Any] = {
        "preferred": carrier,
        "last_switch_at": None,
        "switches": 0,
        "hold_down_remaining": 0.0,
        "forced_failover_remaining": 0.0,
        "pinned": None,
        "task_restarts": {},
        "uplinks": uplinks,
    }
    return Status.model_validate(base | fields)
