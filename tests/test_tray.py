"""The tray indicator: what it shows for a status (nmfailover.tray, by tables), and the item itself under a
real StatusNotifierItem host: waybar's tray in headless sway, with the real daemon in a lab."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from nmfailover.notice import Action, Snapshot, Uplink
from nmfailover.tray import ACTIVE, NEEDS_ATTENTION, MenuItem, tray_view
from tests.daemon import running_daemon
from tests.desktop import Panel, polkit_authority, require_desktop_tools
from tests.operate import POLICY, status
from tests.test_desktop import NOBODY_MAY_PREFER
from tests.test_notify import SESSION_CONFIG, Agent, BusDaemon


def uplinks(
    carrying: str = "primary",
    first: str = "up",
    second: str = "up",
    kinds: tuple[str, str] = ("wired", "cellular"),
) -> tuple[Uplink, ...]:
    return (
        Uplink("primary", "Fiber", "eth0", first, False, carrying == "primary", kinds[0], 12.5),
        Uplink("backup", "Hotspot", "wwan0", second, True, carrying == "backup", kinds[1], 48.0),
    )


@pytest.mark.parametrize(
    ("snapshot", "icon", "state", "title"),
    [
        (Snapshot(uplinks()), "network-wired", ACTIVE, "Internet through Fiber"),
        (
            Snapshot(uplinks(kinds=("wireless", "cellular"))),
            "network-wireless",
            ACTIVE,
            "Internet through Fiber",
        ),
        (
            Snapshot(uplinks("backup", first="down")),
            "network-cellular",
            NEEDS_ATTENTION,
            "Internet through Hotspot: Fiber is down",
        ),
        # Chosen by the person: nothing needs their attention.
        (
            Snapshot(uplinks("backup"), pinned="backup"),
            "network-cellular",
            ACTIVE,
            "Internet through Hotspot",
        ),
        (
            Snapshot(uplinks(first="portal")),
            "network-wired-no-route",
            NEEDS_ATTENTION,
            "Internet through Fiber",
        ),
        (
            Snapshot(uplinks(first="degraded")),
            "network-wired-acquiring",
            NEEDS_ATTENTION,
            "Internet through Fiber",
        ),
        (Snapshot(uplinks(first="down")), "network-error", NEEDS_ATTENTION, "Internet through Fiber"),
        (
            Snapshot(uplinks("none", "down", "down")),
            "network-error",
            NEEDS_ATTENTION,
            "No uplink carries traffic",
        ),
        (None, "network-offline", NEEDS_ATTENTION, "Uplink failover is not running"),
        (Snapshot(), "network-offline", NEEDS_ATTENTION, "Uplink failover is not running"),
    ],
)
def test_icon_and_title_for_a_status(snapshot: Snapshot | None, icon: str, state: str, title: str) -> None:
    view = tray_view(snapshot)
    assert (view.icon, view.status, view.title) == (icon, state, title)


def test_tooltip_and_menu() -> None:
    view = tray_view(Snapshot(uplinks("backup", first="down"), pinned="backup"))
    assert view.details == ("  Fiber (eth0): down\n▸ Hotspot (wwan0): up, 48 ms, metered, chosen")
    assert view.menu == (
        MenuItem("Internet through Hotspot"),
        MenuItem("Use Fiber", Action("prefer-0", "Use Fiber", "Prefer", "Fiber"), False, True),
        MenuItem("Use Hotspot", Action("prefer-1", "Use Hotspot", "Prefer", "Hotspot"), True),
        MenuItem(
            "Choose automatically", Action("automatic", "Choose automatically", "ClearPreference"), False
        ),
        MenuItem(
            "Test failover (60 s)",
            Action("test", "Test failover", "ForceFailover", seconds=60.0),
            separator_before=True,
        ),
    )
    unpinned = tray_view(Snapshot(uplinks()))
    assert [(item.label, item.checked) for item in unpinned.menu if item.checked is not None] == [
        ("Use Fiber", False),
        ("Use Hotspot", False),
        ("Choose automatically", True),
    ]


# -- under a real host ------------------------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nmfailover-tray-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Session:
    """busctl on the private session bus, as root (the bus lets anyone in)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def busctl(self, *args: str) -> Any:
        result = subprocess.run(
            ["busctl", f"--address={self.address}", "--json=short", "--", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["data"] if result.stdout.strip() else None

    def items(self) -> list[str]:
        return list(
            self.busctl(
                "get-property",
                "org.kde.StatusNotifierWatcher",
                "/StatusNotifierWatcher",
                "org.kde.StatusNotifierWatcher",
                "RegisteredStatusNotifierItems",
            )
        )

    def item(self, name: str, prop: str) -> Any:
        return self.busctl("get-property", name, "/StatusNotifierItem", "org.kde.StatusNotifierItem", prop)

    def readers(self, monitor_log: Path) -> set[str]:
        """The programs that read an item's properties, from dbus-monitor's log."""
        log = monitor_log.read_text()
        senders = set(re.findall(r"sender=(:\S+) .* path=/StatusNotifierItem; .*member=GetAll", log))
        programs = set()
        for sender in senders:
            (pid,) = self.busctl(
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetConnectionUnixProcessID",
                "s",
                sender,
            )
            programs.add(Path(f"/proc/{pid}/comm").read_text().strip())
        return programs

    def menu(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        revision, (_, _, children) = self.busctl(
            "call", name, "/MenuBar", "com.canonical.dbusmenu", "GetLayout", "iias", "0", "-1", "0"
        )
        return [(child["data"][0], {k: v["data"] for k, v in child["data"][1].items()}) for child in children]


def _monitor(address: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["dbus-monitor", "--address", address, "type='method_call',path='/StatusNotifierItem'"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_the_indicator_in_waybars_tray(workdir: Path, lab_machine: None) -> None:
    require_desktop_tools("sway", "waybar", "dbus-daemon", "/usr/lib/polkit-1/polkitd")
    with ExitStack() as stack:
        lab = stack.enter_context(NMLab(2, bus_policy=POLICY))
        for old, new in zip(list(lab.profiles), ("Fiber", "Hotspot"), strict=True):
            lab.nmcli("connection", "modify", old, "connection.id", new)
        lab.profiles[:] = ["Fiber", "Hotspot"]
        bus = BusDaemon(SESSION_CONFIG, workdir, "session")
        stack.callback(bus.stop)
        session = Session(bus.address)
        monitor = _monitor(bus.address, workdir / "monitor.log")
        stack.callback(monitor.kill)
        panel = Panel(stack, workdir, bus.address)
        wait_for(lambda: subprocess.run(
            ["busctl", f"--address={bus.address}", "status", "org.kde.StatusNotifierWatcher"],
            capture_output=True, check=False,
        ).returncode == 0, 20, "waybar's StatusNotifierWatcher")  # fmt: skip
        stack.enter_context(polkit_authority(lab.bus_address, workdir, NOBODY_MAY_PREFER))
        daemon = stack.enter_context(running_daemon(lab, workdir / "daemon.log", failback_hold_down="1"))
        daemon.wait_log(r"ready: traffic on primary")

        agent = Agent(bus.address, lab.bus_address, workdir / "agent.log")
        stack.callback(agent.kill)
        agent.wait_log(r"tray indicator registered as (\S+)")
        (name,) = [
            line.split()[-1] for line in agent.text().splitlines() if "tray indicator registered" in line
        ]
        wait_for(
            lambda: any(item.startswith(name) for item in session.items()), 10, "the item in the watcher"
        )
        # The host read the item: waybar's own calls on its path, seen on the bus.
        wait_for(lambda: "waybar" in session.readers(workdir / "monitor.log"), 10, "waybar reading the item")
        wait_for(
            lambda: session.item(name, "ToolTip")[2] == "Internet through Fiber", 15, "the daemon's status"
        )
        assert (session.item(name, "IconName"), session.item(name, "Status")) == ("network-wired", "Active")
        tooltip = session.item(name, "ToolTip")[3]
        assert re.fullmatch(
            r"▸ Fiber \(wana\): up(, [\d.]+ ms)?\n  Hotspot \(wanb\): up(, [\d.]+ ms)?", tooltip
        ), tooltip
        menu = session.menu(name)
        labels = [props.get("label", "-") for _, props in menu]
        assert labels == [
            "Internet through Fiber",
            "-",
            "Use Fiber",
            "Use Hotspot",
            "Choose automatically",
            "-",
            "Test failover (60 s)",
        ]
        panel.screenshot("tray-on-fiber")

        # Choosing "Use Hotspot", as the host does when it is clicked: Prefer, as nobody, through polkit.
        (use_hotspot,) = [number for number, props in menu if props.get("label") == "Use Hotspot"]
        session.busctl(
            "call",
            name,
            "/MenuBar",
            "com.canonical.dbusmenu",
            "Event",
            "isvu",
            str(use_hotspot),
            "clicked",
            "s",
            "",
            "0",
        )
        daemon.wait_route("wanb", timeout=10)
        assert status(lab)["pinned"] == "backup"
        wait_for(
            lambda: session.item(name, "ToolTip")[2] == "Internet through Hotspot", 15, "the tray following"
        )
        checked = {
            props["label"]: props.get("toggle-state")
            for _, props in session.menu(name)
            if "toggle-type" in props
        }
        assert checked == {"Use Fiber": 0, "Use Hotspot": 1, "Choose automatically": 0}
        panel.screenshot("tray-on-hotspot")
        assert agent.stop() == 0
