"""What the desktop notice says, by tables: nmfailover.notice alone (no bus, the clock passed in)."""

from __future__ import annotations

import json

import pytest

from nmfailover.notice import (
    CRITICAL,
    LOW,
    NORMAL,
    Action,
    Budget,
    DnsMove,
    NoticeBoard,
    Snapshot,
    Switch,
    Uplink,
)
from tests import status_samples

METERED = "Hotspot is metered: large downloads and updates may cost you."
STAY = Action("stay", "Stay on Hotspot", "Prefer", "Hotspot")
AUTOMATIC = Action("automatic", "Prefer Fiber", "ClearPreference")


def snapshot(
    carrying: str = "backup", pinned: str | None = None, metered: bool = True, budget: Budget | None = None
) -> Snapshot:
    return Snapshot(
        (
            Uplink("primary", "Fiber", "eth0", "down", False, carrying == "primary"),
            Uplink("backup", "Hotspot", "wwan0", "up", metered, carrying == "backup"),
        ),
        pinned,
        budget or Budget(),
    )


SPENT = Budget(
    month_bytes=3 * 2**30, budget_bytes=5 * 2**30, outage_uplink="Hotspot", outage_bytes=350 * 2**20
)


def switch(action: str, to: str = "backup", reason: str = "") -> Switch:
    profile, device, other, other_device = (
        ("Hotspot", "wwan0", "Fiber", "eth0") if to == "backup" else ("Fiber", "eth0", "Hotspot", "wwan0")
    )
    return Switch("" if action == "initial" else other, profile, reason, action, to, device, other_device)


@pytest.mark.parametrize(
    ("event", "status", "summary", "body", "icon", "urgency", "actions"),
    [
        (
            switch("failover", reason="primary (eth0) is down; moving to backup (wwan0)"),
            snapshot(),
            "Fiber failed: now on Hotspot",
            f"Fiber is down; moving to Hotspot. {METERED}",
            "network-error",
            NORMAL,
            (STAY,),
        ),
        (  # not metered: not said
            switch("failover", reason="primary (eth0) is down; moving to backup (wwan0)"),
            snapshot(metered=False),
            "Fiber failed: now on Hotspot",
            "Fiber is down; moving to Hotspot.",
            "network-error",
            NORMAL,
            (STAY,),
        ),
        (  # no status from the daemon: the signal's own names still say where
            switch("failover", reason="primary (eth0) is down; moving to backup (wwan0)"),
            Snapshot(),
            "Fiber failed: now on Hotspot",
            "Primary (eth0) is down; moving to Hotspot.",
            "network-error",
            NORMAL,
            (STAY,),
        ),
        (  # already pinned there: no button to pin it
            switch("failover", reason="x"),
            snapshot(pinned="backup"),
            "Fiber failed: now on Hotspot",
            f"X. {METERED}",
            "network-error",
            NORMAL,
            (),
        ),
        (
            switch("failback", "primary", "primary (eth0) healthy for 30s; moving back"),
            snapshot("primary"),
            "Back on Fiber",
            "Fiber healthy for 30s; moving back.",
            "network-transmit-receive",
            LOW,
            (),
        ),
        (  # the data budget: what the metered one carries this month, and what it carried in the outage
            switch("failover", reason="primary (eth0) is down; moving to backup (wwan0)"),
            snapshot(budget=SPENT),
            "Fiber failed: now on Hotspot",
            f"Fiber is down; moving to Hotspot. {METERED} This month: 3.0 GiB of 5.0 GiB (60 %).",
            "network-error",
            NORMAL,
            (STAY,),
        ),
        (
            switch("failback", "primary", "primary (eth0) healthy for 30s; moving back"),
            snapshot("primary", budget=SPENT),
            "Back on Fiber",
            "Fiber healthy for 30s; moving back. Hotspot carried 350.0 MiB meanwhile. This month: 3.0 GiB of "
            "5.0 GiB (60 %).",
            "network-transmit-receive",
            LOW,
            (),
        ),
        (
            switch("pin", reason="backup (wwan0) is pinned and healthy"),
            snapshot(pinned="backup"),
            "Now on Hotspot, as chosen",
            f"Hotspot is pinned and healthy. {METERED}",
            "network-transmit-receive",
            NORMAL,
            (AUTOMATIC,),
        ),
        (
            switch("avoid", reason="avoiding primary (eth0); moving to backup (wwan0)"),
            snapshot(),
            "Failover test: now on Hotspot",
            f"Avoiding Fiber; moving to Hotspot. {METERED}",
            "network-transmit-receive",
            NORMAL,
            (),
        ),
        (
            switch("initial", reason="starting on backup (wwan0)"),
            snapshot(),
            "Starting on Hotspot",
            f"Starting on Hotspot. {METERED}",
            "network-error",
            NORMAL,
            (STAY,),
        ),
    ],
)
def test_each_switch_in_the_persons_words(
    event: Switch,
    status: Snapshot,
    summary: str,
    body: str,
    icon: str,
    urgency: int,
    actions: tuple[Action, ...],
) -> None:
    notice = NoticeBoard().notice(event, status)
    assert notice is not None
    assert (notice.summary, notice.body, notice.icon, notice.urgency, notice.actions) == (
        summary,
        body,
        icon,
        urgency,
        actions,
    )


@pytest.mark.parametrize("status", [snapshot("primary"), Snapshot()])
def test_a_start_on_the_first_uplink_says_nothing(status: Snapshot) -> None:
    assert NoticeBoard().notice(switch("initial", "primary", "starting on primary (eth0)"), status) is None


@pytest.mark.parametrize(
    ("moves", "summaries"),
    [
        # The field report: a start-up, a pin and two failover tests within 26 s were called flapping.
        (
            [
                (0, "initial", "backup"),
                (5, "pin", "primary"),
                (10, "avoid", "backup"),
                (26, "avoid", "backup"),
            ],
            [
                "Starting on Hotspot",
                "Now on Fiber, as chosen",
                "Failover test: now on Hotspot",
                "Failover test: now on Hotspot",
            ],
        ),
        # Four automatic moves within the minute: the fourth is flapping; the person's own don't add up.
        (
            [
                (0, "failover", "backup"),
                (10, "failback", "primary"),
                (15, "pin", "backup"),
                (20, "failover", "backup"),
                (30, "failback", "primary"),
            ],
            [
                "Fiber failed: now on Hotspot",
                "Back on Fiber",
                "Now on Hotspot, as chosen",
                "Fiber failed: now on Hotspot",
                "Connection unstable: now on Fiber",
            ],
        ),
        # It ends when the window has passed: at 80 s only 20, 30 and 80 are within it, at 86 s four again.
        (
            [
                (0, "failover", "backup"),
                (10, "failback", "primary"),
                (20, "failover", "backup"),
                (30, "failback", "primary"),
                (80, "failover", "backup"),
                (85, "failback", "primary"),
                (86, "failover", "backup"),
            ],
            [
                "Fiber failed: now on Hotspot",
                "Back on Fiber",
                "Fiber failed: now on Hotspot",
                "Connection unstable: now on Fiber",
                "Fiber failed: now on Hotspot",
                "Back on Fiber",
                "Connection unstable: now on Hotspot",
            ],
        ),
    ],
)
def test_only_the_daemons_own_moves_count_as_flapping(
    moves: list[tuple[float, str, str]], summaries: list[str]
) -> None:
    now = [0.0]
    board = NoticeBoard(flap_count=3, flap_window=60, clock=lambda: now[0])
    shown = []
    for at, action, to in moves:
        now[0] = at
        notice = board.notice(switch(action, to, "why"), snapshot(to))
        assert notice is not None
        shown.append(notice.summary)
    assert shown == summaries


def test_flapping_is_told_with_its_count_and_window() -> None:
    board = NoticeBoard(flap_count=1, flap_window=90, clock=lambda: 0.0)
    board.notice(switch("failover", reason="primary (eth0) is down"), snapshot())
    notice = board.notice(switch("failback", "primary", "primary (eth0) healthy for 1s"), snapshot("primary"))
    assert notice is not None
    assert (notice.summary, notice.body, notice.urgency) == (
        "Connection unstable: now on Fiber",
        "Traffic moved 2 times in the last 90 s. Last: Fiber healthy for 1s.",
        CRITICAL,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (snapshot("primary"), None),
        (Snapshot(), None),
        (
            snapshot(),
            (
                "On Hotspot: Fiber is down",
                f"Traffic goes through Hotspot until Fiber works again. {METERED}",
                (STAY,),
            ),
        ),
        (
            snapshot(pinned="backup", metered=False),
            ("On Hotspot, as chosen", "Fiber is not used while Hotspot is chosen.", (AUTOMATIC,)),
        ),
    ],
)
def test_at_login_what_traffic_does_now(
    status: Snapshot, expected: tuple[str, str, tuple[Action, ...]] | None
) -> None:
    notice = NoticeBoard().at_login(status)
    assert (None if notice is None else (notice.summary, notice.body, notice.actions)) == expected


def test_the_switch_told_at_login_is_not_told_again() -> None:
    # The agent started just after a failover: the login notice tells it, and the Switched signal of that
    # same failover, arriving after, adds nothing. A later switch is told as always.
    board = NoticeBoard()
    assert board.at_login(snapshot()) is not None
    failover = switch("failover", reason="primary (eth0) is down; moving to backup (wwan0)")
    assert board.notice(failover, snapshot()) is None
    assert board.notice(failover, snapshot()) is not None
    board.at_login(snapshot())
    assert board.notice(switch("failback", to="primary"), snapshot("primary")) is not None


def test_what_a_button_did_and_why_it_failed() -> None:
    stayed = NoticeBoard.after_action(STAY, snapshot(pinned="backup"))
    assert (stayed.summary, stayed.body, stayed.actions) == (
        "Staying on Hotspot",
        f"Traffic stays on Hotspot while it works, even when Fiber is back. {METERED}",
        (AUTOMATIC,),
    )
    automatic = NoticeBoard.after_action(AUTOMATIC, snapshot())
    assert (automatic.summary, automatic.actions) == ("Automatic choice again", ())
    failed = NoticeBoard.action_failed(STAY, "not allowed: uid 1000 needs authentication")
    assert (failed.summary, failed.body, failed.icon) == (
        "Could not stay on Hotspot",
        "Not allowed: uid 1000 needs authentication.",
        "dialog-error",
    )


def test_moves_of_name_resolution() -> None:
    moved = NoticeBoard.dns_notice(DnsMove("Fiber", ("198.51.100.53",), "dead"))
    back = NoticeBoard.dns_notice(DnsMove("Fiber", (), "back"))
    assert (moved.summary, back.summary, back.urgency) == (
        "Lookups moved off Fiber",
        "Fiber's name servers answer again",
        LOW,
    )


OLDER = status_samples.status(
    status_samples.uplink("primary", "Fiber", device="eth0", health="down", kind="wireless"),
    status_samples.uplink("backup", "Hotspot", device=None, metered="guess-yes", carrying_traffic=True),
    status_samples.uplink("uplink3", "Tether", metered="no", metered_marked=True, latency_ms=None),
    pinned="backup",
).model_dump(mode="json")
for _uplink in OLDER["uplinks"]:
    del _uplink["kind"]  # a daemon from before the tray: every uplink is drawn as wired


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            json.dumps(OLDER),
            Snapshot(
                (
                    Uplink("primary", "Fiber", "eth0", "down", False, False, "wired", 12.0),
                    Uplink("backup", "Hotspot", "", "up", True, True, "wired", 12.0),
                    Uplink("uplink3", "Tether", "wan-uplink3", "up", True, False),
                ),
                "backup",
            ),
        ),
        ("not json", Snapshot()),
        ("[1]", Snapshot()),
        ('{"uplinks": [1, {"profile": "Fiber"}], "pinned": 3}', Snapshot()),  # no Status() of any version
    ],
)
def test_status_of_any_version_reads(text: str, expected: Snapshot) -> None:
    assert Snapshot.from_status(text) == expected


@pytest.mark.parametrize(
    ("details", "action", "role"),
    [
        ('{"action": "failover", "state": "BACKUP", "device": "wwan0"}', "failover", "backup"),
        ("not json", "", ""),
        ("[1, 2]", "", ""),
    ],
)
def test_signal_details_from_another_version_still_make_a_notice(
    details: str, action: str, role: str
) -> None:
    event = Switch.from_signal(["Fiber", "Hotspot", "why", details])
    assert (event.action, event.role, event.to_profile) == (action, role, "Hotspot")
    notice = NoticeBoard().notice(event, Snapshot())
    expected = "Fiber failed: now on Hotspot" if action == "failover" else "Now on Hotspot"
    assert notice is not None and notice.summary == expected
