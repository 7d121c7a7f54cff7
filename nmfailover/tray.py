"""What the tray indicator shows for a status: icon, tooltip and menu. Pure: the daemon's Status() in (as a
nmfailover.notice.Snapshot, or None while the daemon is not running), a TrayView out. Icons are
freedesktop names, so the desktop's own theme draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .notice import Action, Snapshot, Uplink

TEST_SECONDS = 60.0
# StatusNotifierItem's Status values.
ACTIVE, NEEDS_ATTENTION = "Active", "NeedsAttention"


@dataclass(frozen=True)
class MenuItem:
    """One entry of the menu: a label, what choosing it calls (None: a heading), whether it is the
    current choice (a radio mark), and a separator before it."""

    label: str
    action: Action | None = None
    checked: bool | None = None  # None: no radio mark at all
    separator_before: bool = False


@dataclass(frozen=True)
class TrayView:
    icon: str
    status: str
    title: str  # the tooltip's first line, and the item's title
    details: str  # the tooltip's text
    menu: tuple[MenuItem, ...]


def _icon(uplink: Uplink) -> str:
    if uplink.health == "down":
        return "network-error"
    if uplink.health == "portal":
        return f"network-{uplink.kind}-no-route"
    if uplink.health == "up":
        return f"network-{uplink.kind}"
    return f"network-{uplink.kind}-acquiring"  # degraded, suspect or not judged yet


def _line(uplink: Uplink, pinned: bool) -> str:
    facts = [uplink.health]
    if uplink.latency_ms is not None and uplink.health != "down":
        facts.append(f"{uplink.latency_ms:g} ms")
    if uplink.metered:
        facts.append("metered")
    if pinned:
        facts.append("chosen")
    where = f"{uplink.profile} ({uplink.device})" if uplink.device else uplink.profile
    mark = "▸ " if uplink.carrying else "  "
    return f"{mark}{where}: {', '.join(facts)}"


def tray_view(snapshot: Snapshot | None) -> TrayView:
    if snapshot is None or not snapshot.uplinks:
        return TrayView(
            "network-offline",
            NEEDS_ATTENTION,
            "Uplink failover is not running",
            "nmfailover's daemon does not answer on the system bus.",
            (MenuItem("Uplink failover is not running"),),
        )
    carrying = snapshot.carrying
    pinned = next((u for u in snapshot.uplinks if u.role == snapshot.pinned), None)
    first = snapshot.uplinks[0]
    if carrying is None:
        icon, status, title = "network-error", NEEDS_ATTENTION, "No uplink carries traffic"
    else:
        icon = _icon(carrying)
        healthy = carrying.health == "up" and (carrying is first or pinned is carrying)
        status = ACTIVE if healthy else NEEDS_ATTENTION
        title = f"Internet through {carrying.profile}"
        if carrying is not first and pinned is not carrying:
            title += f": {first.profile} is {first.health}"
    details = "\n".join(_line(u, u is pinned) for u in snapshot.uplinks)
    menu = [MenuItem(title)]
    for number, uplink in enumerate(snapshot.uplinks):
        menu.append(
            MenuItem(
                f"Use {uplink.profile}",
                Action(f"prefer-{number}", f"Use {uplink.profile}", "Prefer", uplink.profile),
                uplink is pinned,
                separator_before=number == 0,
            )
        )
    menu.append(
        MenuItem(
            "Choose automatically",
            Action("automatic", "Choose automatically", "ClearPreference"),
            pinned is None,
        )
    )
    menu.append(
        MenuItem(
            f"Test failover ({TEST_SECONDS:g} s)",
            Action("test", "Test failover", "ForceFailover", seconds=TEST_SECONDS),
            separator_before=True,
        )
    )
    return TrayView(icon, status, title, details, tuple(menu))
