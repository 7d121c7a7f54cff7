"""A laptop's day against the real daemon and a real NetworkManager: suspend and resume (NetworkManager's
own Sleep, as systemd-logind makes it sleep), networking off and on, a reconnect with a new address, and
NetworkManager restarted; with the uplinks named and found. No switch storm, no error, and traffic back on
the best healthy uplink within seconds of NetworkManager bringing the links back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nmfailover.lab.demo import DaemonProcess, wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

# Ours: the primary at the metric base, the backup one step above.
OURS = [("wana", 100), ("wanb", 200)]


def sleep(lab: NMLab, asleep: bool) -> None:
    """What systemd-logind's suspend and resume ask of NetworkManager."""
    lab.host(
        "dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.NetworkManager",
        "/org/freedesktop/NetworkManager", "org.freedesktop.NetworkManager.Sleep",
            f"boolean:{str(asleep).lower()}",
    )  # fmt: skip


def suspend_and_resume(lab: NMLab) -> None:
    # NetworkManager leaves software devices (the lab's veths) up while asleep, where a laptop's own
    # hardware goes down: their cables are pulled for the time of the sleep.
    sleep(lab, True)
    for upstream in lab.upstreams:
        upstream.cut_cable()
    wait_for(lambda: not lab.default_routes(4), 15, "no default route while asleep")
    sleep(lab, False)
    for upstream in lab.upstreams:  # as a laptop's links come back: once it is awake
        upstream.restore_cable()


def networking_off_and_on(lab: NMLab) -> None:
    lab.nmcli("networking", "off")
    wait_for(lambda: not lab.default_routes(4), 10, "no default route with networking off")
    lab.nmcli("networking", "on")


def reconnect_with_a_new_address(lab: NMLab) -> None:
    # As a Wi-Fi network gives another lease: the backup comes back with the next address of its subnet.
    backup = lab.upstreams[1]
    address = backup.address4.rsplit(".", 1)
    new = f"{address[0]}.{int(address[1]) + 1}"
    lab.nmcli("connection", "modify", "backup", "ipv4.addresses", f"{new}/26")
    lab.nmcli("connection", "up", "backup")


def restart_networkmanager(lab: NMLab) -> None:
    lab.restart_nm()


MOMENTS: list[tuple[str, Callable[[NMLab], None]]] = [
    ("suspend-resume", suspend_and_resume),
    ("networking-off-on", networking_off_and_on),
    ("new-address", reconnect_with_a_new_address),
    ("nm-restart", restart_networkmanager),
]


def back_on_primary(lab: NMLab, daemon: DaemonProcess, started: float) -> float:
    wait_for(lambda: lab.default_routes(4) == OURS, 20, f"default routes {OURS}", step=0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("uplinks", ["named", "auto"])
@pytest.mark.parametrize("moment", [m[1] for m in MOMENTS], ids=[m[0] for m in MOMENTS])
def test_a_laptops_day(nmlab: NMLab, tmp_path: Path, moment: Callable[[NMLab], None], uplinks: str) -> None:
    env = {"NMFAILOVER_UPLINKS": "auto"} if uplinks == "auto" else {}
    if uplinks == "auto":
        for profile, metric in (("primary", 100), ("backup", 200)):
            nmlab.nmcli("connection", "modify", profile, "ipv4.route-metric", str(metric))
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=env) as daemon:
        daemon.wait_log(r"ready: traffic on primary \(wana\)")
        back_on_primary(nmlab, daemon, time.monotonic())
        before = daemon.text().count("switching to")
        for _ in range(2):
            moment(nmlab)
            started = time.monotonic()
            seconds = back_on_primary(nmlab, daemon, started)
            print(f"{moment.__name__} ({uplinks}): ours again {seconds:.2f} s after NetworkManager was asked")
        time.sleep(1.0)  # anything still to come would come now
        text = daemon.text()
        assert " ERROR " not in text and "CRITICAL" not in text and "Traceback" not in text
        # At most away and back each time: the links go and come one after the other, the primary first.
        assert text.count("switching to") - before <= 4, "a switch storm"
        assert daemon.stop() == 0
