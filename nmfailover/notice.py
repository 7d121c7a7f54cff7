"""What the desktop notice says: events in (a switch, a move of name resolution, the state found at login,
an action the person took), the notice out (summary, body, icon, urgency, actions). Pure: no bus, the
clock passed in. Words are the person's own profile names ("Hotspot"), never roles or devices.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .budget import format_size
from .status import BudgetStatus, Status

FLAP_COUNT = 3
FLAP_WINDOW = 60.0
# Urgency hint values of the notification spec.
LOW, NORMAL, CRITICAL = 0, 1, 2
# Only the daemon's own choices count as flapping: a failover test, a pin or the start-up is a person's
# doing or no move at all.
AUTOMATIC = frozenset({"failover", "failback"})
_METERED = frozenset({"yes", "guess-yes"})


@dataclass(frozen=True)
class Uplink:
    """One uplink as Status() describes it, as much as a notice needs."""

    role: str
    profile: str
    device: str
    health: str
    metered: bool
    carrying: bool
    kind: str = "wired"  # wired, wireless or cellular
    latency_ms: float | None = None


@dataclass(frozen=True)
class Budget:
    """The metered uplinks' data this month (Status()'s metered_budget), and the last outage's."""

    month_bytes: int = 0
    budget_bytes: int | None = None
    outage_uplink: str = ""
    outage_bytes: int = 0

    def month(self) -> str:
        if self.budget_bytes:
            used, of = format_size(self.month_bytes), format_size(self.budget_bytes)
            return f"This month: {used} of {of} ({round(self.month_bytes * 100 / self.budget_bytes)} %)."
        return f"This month: {format_size(self.month_bytes)}." if self.month_bytes else ""


@dataclass(frozen=True)
class Snapshot:
    """The daemon's Status(): its uplinks, most preferred first, the pinned one's role, the data budget."""

    uplinks: tuple[Uplink, ...] = ()
    pinned: str | None = None
    budget: Budget = Budget()

    @classmethod
    def from_status(cls, text: str) -> Snapshot:
        """From Status() JSON; a document that is none (a daemon of another version) is simply unknown."""
        try:
            status = Status.model_validate_json(text)
        except ValidationError:
            return cls()
        uplinks = tuple(
            Uplink(
                u.role,
                u.profile,
                u.device or "",
                u.health,
                u.metered in _METERED or u.metered_marked,
                u.carrying_traffic,
                u.kind,
                u.latency_ms,
            )
            for u in status.uplinks
        )
        return cls(uplinks, status.pinned, _budget(status.metered_budget))

    def profile(self, profile: str) -> Uplink | None:
        return next((u for u in self.uplinks if u.profile == profile), None)

    @property
    def carrying(self) -> Uplink | None:
        return next((u for u in self.uplinks if u.carrying), None)

    def plain(self, text: str) -> str:
        """The daemon's reason with each "role (device)" said as the profile's name."""
        for u in self.uplinks:
            if u.device:
                text = text.replace(f"{u.role} ({u.device})", u.profile)
        return text


@dataclass(frozen=True)
class Switch:
    """One Switched signal, as much as a notice needs of it."""

    from_profile: str
    to_profile: str
    reason: str
    action: str
    role: str  # of the uplink now carrying traffic: primary, backup, ...
    device: str
    from_device: str = ""

    @classmethod
    def from_signal(cls, body: Sequence[Any]) -> Switch:
        from_profile, to_profile, reason, details_json = (str(part) for part in body)
        try:
            details = json.loads(details_json)
        except ValueError:
            details = None
        if not isinstance(details, dict):
            details = {}  # a daemon of another version: the profile ids still tell enough
        return cls(
            from_profile,
            to_profile,
            reason,
            str(details.get("action", "")),
            str(details.get("state", "")).lower(),
            str(details.get("device", "")),
            str(details.get("from_device", "")),
        )

    def plain(self, snapshot: Snapshot) -> str:
        """Its reason in profile names: from the status, else from what the signal itself says."""
        text = snapshot.plain(self.reason)
        if self.role and self.device:
            text = text.replace(f"{self.role} ({self.device})", self.to_profile)
        return text


@dataclass(frozen=True)
class DnsMove:
    """One DnsMoved signal: an uplink's lookups moved to `servers` (its resolvers are dead, its line is
    not), or given back to its own (no servers)."""

    profile: str
    servers: tuple[str, ...]
    reason: str

    @classmethod
    def from_signal(cls, body: Sequence[Any]) -> DnsMove:
        profile, servers, reason = body
        return cls(str(profile), tuple(str(s) for s in servers), str(reason))


@dataclass(frozen=True)
class Action:
    """A button on the notice or an entry of the tray's menu, and the control interface call it makes:
    Prefer(uplink, 0), ClearPreference() or ForceFailover(seconds)."""

    key: str
    label: str
    method: str
    uplink: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Notice:
    summary: str
    body: str
    icon: str
    urgency: int = NORMAL
    actions: tuple[Action, ...] = ()


def stay_on(profile: str) -> Action:
    return Action("stay", f"Stay on {profile}", "Prefer", profile)


def prefer_automatic(snapshot: Snapshot) -> Action:
    first = snapshot.uplinks[0].profile if snapshot.uplinks else ""
    return Action("automatic", f"Prefer {first}" if first else "Choose automatically", "ClearPreference")


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _budget(status: BudgetStatus | None) -> Budget:
    if status is None:
        return Budget()
    return Budget(
        status.month_bytes,
        status.budget_bytes if status.budget_bytes else None,
        status.outage.uplink if status.outage else "",
        status.outage.bytes if status.outage else 0,
    )


def _metered(profile: str, snapshot: Snapshot) -> str:
    uplink = snapshot.profile(profile)
    if uplink is None or not uplink.metered:
        return ""
    return _join(f"{profile} is metered: large downloads and updates may cost you.", snapshot.budget.month())


def _carried(switch: Switch, snapshot: Snapshot) -> str:
    """After an outage on a metered uplink: what it carried, and the month so far."""
    budget, left = snapshot.budget, snapshot.profile(switch.from_profile)
    if left is None or not left.metered or not budget.outage_bytes:
        return ""
    return _join(
        f"{switch.from_profile} carried {format_size(budget.outage_bytes)} meanwhile.", budget.month()
    )


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


class NoticeBoard:
    """What to show for each event: pure, with the clock passed in."""

    def __init__(
        self,
        flap_count: int = FLAP_COUNT,
        flap_window: float = FLAP_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flap_count = flap_count
        self.flap_window = flap_window
        self._clock = clock
        self._recent: deque[float] = deque()
        # The uplink the login notice said carries traffic: the switch that put it there may still be on
        # its way as a signal, and is told already.
        self._told_at_login: str | None = None

    def notice(self, switch: Switch, snapshot: Snapshot = Snapshot()) -> Notice | None:
        """The notice for `switch`, or None for a start on the most preferred uplink (nothing moved) and
        for the switch the login notice has told already."""
        told, self._told_at_login = self._told_at_login, None
        first = snapshot.uplinks[0].profile if snapshot.uplinks else None
        to = switch.to_profile
        if to == told:
            return None
        on_first = to == first if first is not None else switch.role == "primary"
        if switch.action == "initial" and on_first:
            return None
        why = _sentence(switch.plain(snapshot))
        metered = _metered(to, snapshot)
        pinned = snapshot.pinned is not None
        stay = () if pinned or on_first else (stay_on(to),)
        if switch.action in AUTOMATIC and self._flapping():
            return Notice(
                f"Connection unstable: now on {to}",
                _join(
                    f"Traffic moved {len(self._recent)} times in the last {self._window()}.",
                    f"Last: {why}",
                    metered,
                ),
                "network-error",
                CRITICAL,
                stay,
            )
        if switch.action == "failover":
            lost = switch.from_profile or "The connection"
            return Notice(f"{lost} failed: now on {to}", _join(why, metered), "network-error", NORMAL, stay)
        if switch.action == "failback":
            return Notice(
                f"Back on {to}", _join(why, _carried(switch, snapshot)), "network-transmit-receive", LOW
            )
        if switch.action == "pin":
            return Notice(
                f"Now on {to}, as chosen",
                _join(why, metered),
                "network-transmit-receive",
                NORMAL,
                (prefer_automatic(snapshot),) if not on_first else (),
            )
        if switch.action == "avoid":
            return Notice(f"Failover test: now on {to}", _join(why, metered), "network-transmit-receive")
        if switch.action == "initial":
            return Notice(f"Starting on {to}", _join(why, metered), "network-error", NORMAL, stay)
        return Notice(f"Now on {to}", _join(why, metered), "network-transmit-receive", NORMAL, stay)

    def at_login(self, snapshot: Snapshot) -> Notice | None:
        """What the person should know when the agent starts: nothing while traffic is on the most
        preferred uplink, else where it is and why."""
        now = snapshot.carrying
        if now is None or not snapshot.uplinks or now is snapshot.uplinks[0]:
            return None
        first = snapshot.uplinks[0]
        metered = _metered(now.profile, snapshot)
        self._told_at_login = now.profile
        if snapshot.pinned is not None:
            return Notice(
                f"On {now.profile}, as chosen",
                _join(f"{first.profile} is not used while {now.profile} is chosen.", metered),
                "network-transmit-receive",
                NORMAL,
                (prefer_automatic(snapshot),),
            )
        return Notice(
            f"On {now.profile}: {first.profile} is {first.health}",
            _join(f"Traffic goes through {now.profile} until {first.profile} works again.", metered),
            "network-error",
            NORMAL,
            (stay_on(now.profile),),
        )

    @staticmethod
    def after_action(action: Action, snapshot: Snapshot) -> Notice:
        """What an action the person took did (it moves nothing when traffic is already there)."""
        if action.method == "ForceFailover":
            return Notice(
                f"Testing failover for {action.seconds:g} s",
                "Traffic leaves the uplink carrying it for a while; nmfailover brings it back by itself.",
                "network-transmit-receive",
            )
        if action.method == "Prefer":
            first = snapshot.uplinks[0].profile if snapshot.uplinks else "the first uplink"
            unless = "" if action.uplink == first else f", even when {first} is back"
            return Notice(
                f"Staying on {action.uplink}",
                _join(
                    f"Traffic stays on {action.uplink} while it works{unless}.",
                    _metered(action.uplink, snapshot),
                ),
                "network-transmit-receive",
                NORMAL,
                (prefer_automatic(snapshot),),
            )
        return Notice(
            "Automatic choice again",
            "Traffic goes through the first uplink that works, in the configured order.",
            "network-transmit-receive",
            LOW,
        )

    @staticmethod
    def action_failed(action: Action, why: str) -> Notice:
        return Notice(
            f"Could not {action.label[0].lower()}{action.label[1:]}", _sentence(why), "dialog-error"
        )

    @staticmethod
    def dns_notice(move: DnsMove) -> Notice:
        """What a move of name resolution looks like: it never counts toward flapping (no traffic moved)."""
        if move.servers:
            return Notice(
                f"Lookups moved off {move.profile}",
                f"{move.profile}'s name servers do not answer, its line does: names are looked up through "
                f"{', '.join(move.servers)} while traffic stays on {move.profile}.",
                "network-transmit-receive",
            )
        return Notice(
            f"{move.profile}'s name servers answer again",
            f"Names are looked up through {move.profile}'s own name servers again.",
            "network-transmit-receive",
            LOW,
        )

    def _flapping(self) -> bool:
        now = self._clock()
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.flap_window:
            self._recent.popleft()
        return len(self._recent) > self.flap_count

    def _window(self) -> str:
        return "minute" if self.flap_window == 60 else f"{self.flap_window:g} s"
