"""The engine's records: each uplink's runtime state, the operator's overrides, and the switch event that
listeners (signal, hooks, webhook) receive."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from ..detection import Watch
from ..nm import LinkState, Profile
from ..policy import UplinkHealth

ROLE_NAMES = ("primary", "backup", "fallback")


def role_name(index: int) -> str:
    return ROLE_NAMES[index] if index < len(ROLE_NAMES) else f"uplink{index + 1}"


@dataclass(eq=False)  # one object per uplink for as long as it is one: compared by identity
class Uplink:
    index: int
    profile: Profile
    link: LinkState
    watch: Watch = field(default_factory=Watch)  # what detection knows; replaced, never mutated
    missing: bool = False  # its profile was deleted from NetworkManager
    proof_due: bool = False  # something happened to it: its next round is a proof, never an echo
    in_flight: bool = False  # a round is running: a decision waiting for its answer need not ask again
    activation: str | None = None  # its last activation (active connection) seen
    jobs: tuple[str, ...] = ()  # the names its loops run under
    activated_at: float | None = None  # when (monotonic)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def health(self) -> UplinkHealth:
        return self.watch.health

    def recheck(self) -> None:
        """Probe it now, by HTTP: an event or a request says its path may have changed."""
        self.proof_due = True
        self.wake.set()

    @property
    def role(self) -> str:
        return role_name(self.index)

    @property
    def label(self) -> str:
        return f"{self.role} ({self.link.interface or self.profile.interface_name or self.profile.id})"

    def snapshot(self) -> UplinkView:
        return UplinkView(
            self.role,
            self.profile.id,
            self.link.interface or self.profile.interface_name or "",
            self.link.gateway4 or "",
            self.link.gateway6 or "",
            self.link.nameservers,
        )


@dataclass(frozen=True)
class UplinkView:
    """An uplink as it was at a switch: what hooks and the webhook need, without a reference to the engine."""

    role: str
    profile: str
    interface: str
    gateway4: str
    gateway6: str
    nameservers: tuple[str, ...]


@dataclass(frozen=True)
class SwitchEvent:
    """A change of the uplink carrying traffic, as hooks, signals and notifications describe it."""

    action: str  # failover, failback, pin, avoid, initial
    state: str  # the new uplink's role, upper case: PRIMARY, BACKUP, FALLBACK, UPLINK4...
    from_profile: str  # profile id ("" at start-up)
    to_profile: str
    from_device: str
    device: str  # the new uplink's interface
    gateway4: str
    gateway6: str
    reason: str
    at: float  # wall-clock time (seconds since the epoch)
    uplinks: tuple[UplinkView, ...] = ()  # every uplink, most preferred first

    def as_dict(self) -> dict[str, Any]:
        """The documented details of the Switched signal and the hooks (without the uplink table)."""
        details = asdict(self)
        del details["uplinks"]
        return details

    def uplink(self, profile: str) -> UplinkView | None:
        return next((u for u in self.uplinks if u.profile == profile), None)


@dataclass(frozen=True)
class DnsMoved:
    """Name resolution moved off an uplink whose resolvers are dead behind a live path (servers: where it
    goes now), or given back to them (servers empty); the traffic stays where it is."""

    profile: str
    role: str
    device: str
    servers: tuple[str, ...]
    reason: str
    at: float  # wall-clock time (seconds since the epoch)


@dataclass(frozen=True)
class Override:
    """An operator's pin or failover test on one uplink, until a monotonic time or for good (None)."""

    index: int
    until: float | None

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def remaining(self, now: float) -> float:
        return 0.0 if self.until is None else max(0.0, self.until - now)
