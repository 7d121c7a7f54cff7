"""NMFAILOVER_METERED: the backup marked metered at run time, against a real NetworkManager (no mocks), and
the pure parts (which names are uplinks, what looks like a mobile modem or hotspot, how status shows it).

NetworkManager's own Metered property (org.freedesktop.NetworkManager, NMMetered: 0 unknown, 1 yes, 2 no,
3 guess-yes, 4 guess-no) is what desktops read; it follows the device of the primary connection, the one
holding the default route. The lab reads it with dbus-send, so the proof does not lean on nm.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from loguru import logger

from nmfailover.cli import print_status
from nmfailover.config import load_settings
from nmfailover.engine import Uplink
from nmfailover.engine.actuator import Actuator, ActuatorParams, metered_uplinks, metered_warning
from nmfailover.errors import ConfigError, NMError
from nmfailover.lab.demo import daemon_env, wait_for
from nmfailover.lab.sandbox import NMLab
from nmfailover.nm import (
    DeviceState,
    DeviceType,
    Dns,
    LinkState,
    Metered,
    MeteredChanged,
    Metrics,
    NetworkManagerClient,
    NMEvent,
    Profile,
    ResolverRoutes,
    Restore,
)
from nmfailover.status import Status
from tests.daemon import running_daemon
from tests.operate import cli, status

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
YES, GUESS_YES, GUESS_NO = Metered.YES, Metered.GUESS_YES, Metered.GUESS_NO
VETH = DeviceType.VETH  # the lab's devices


# -- NetworkManager's view, read without nmfailover's code ------------------------------------------------


def _dbus(lab: NMLab, path: str, member: str, *args: str) -> str:
    out = lab.host(
        "dbus-send", "--system", "--print-reply", "--reply-timeout=5000", f"--dest={NM}", path, member, *args
    ).stdout
    return out.split()[-1].strip('"')


def device_path(lab: NMLab, iface: str) -> str:
    return _dbus(lab, NM_PATH, f"{NM}.GetDeviceByIpIface", f"string:{iface}")


def global_metered(lab: NMLab) -> int:
    return int(_dbus(lab, NM_PATH, "org.freedesktop.DBus.Properties.Get", f"string:{NM}", "string:Metered"))


def device_metered(lab: NMLab, iface: str) -> int:
    path = device_path(lab, iface)
    return int(
        _dbus(lab, path, "org.freedesktop.DBus.Properties.Get", f"string:{NM}.Device", "string:Metered")
    )


def saved_metered(lab: NMLab, profile: str) -> str:
    return lab.nmcli("-g", "connection.metered", "connection", "show", profile).strip()


def settle(what: str, predicate: Callable[[], bool]) -> None:
    # NetworkManager recomputes its own Metered when it re-picks the primary connection, a moment after the
    # route moved.
    wait_for(predicate, 10, what, step=0.1)


# -- the adapter ----------------------------------------------------------------------------------------------


@pytest.fixture
async def client(nmlab: NMLab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NetworkManagerClient]:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nmlab.bus_address)
    events: list[NMEvent] = []
    nm = NetworkManagerClient(on_event=events.append)
    nm.events = events  # type: ignore[attr-defined]
    await nm.connect()
    yield nm
    await nm.close()


async def test_reapply_marks_metered_at_run_time_and_metrics_keep_it(
    nmlab: NMLab, client: NetworkManagerClient
) -> None:
    events: list[NMEvent] = client.events  # type: ignore[attr-defined]
    on_disk = nmlab.profiles_on_disk()
    primary, backup = await client.resolve(["primary", "backup"])
    link = await client.link_state(backup.uuid)
    assert link.device is not None
    assert (link.device_type, link.driver, link.metered) == (VETH, "veth", GUESS_NO)
    assert backup.metered == 0 and link.looks_mobile is None
    assert global_metered(nmlab) == GUESS_NO

    assert await client.set_metered(link.device, YES) is True
    assert await client.set_metered(link.device, YES) is False  # already so: no second Reapply
    assert device_metered(nmlab, "wanb") == YES
    assert (await client.applied_metrics(link.device)).metered == YES
    assert global_metered(nmlab) == GUESS_NO  # the default route is still on the primary
    await asyncio.to_thread(
        wait_for, lambda: MeteredChanged(link.device or "", YES) in events, 5, "the MeteredChanged event"
    )
    assert (await client.link_state(backup.uuid)).metered == YES

    # Moving the default route: a Reapply of the metrics sends the applied connection back with the mark.
    assert await client.set_route_metrics(link.device, 50, 50) is True
    await asyncio.to_thread(
        settle, "NetworkManager metered on the backup", lambda: global_metered(nmlab) == YES
    )
    assert (await client.applied_metrics(link.device)).metered == YES
    await client.set_route_metrics(link.device, -1, -1)
    await asyncio.to_thread(settle, "back to the primary", lambda: global_metered(nmlab) == GUESS_NO)

    assert await client.set_metered(link.device, Metered.UNKNOWN) is True
    assert device_metered(nmlab, "wanb") == GUESS_NO  # unknown again: NetworkManager guesses
    # Nothing of it reached the saved profile or the disk, and the link was never taken down.
    assert saved_metered(nmlab, "backup") == "unknown" and nmlab.profiles_on_disk() == on_disk
    assert (await client.link_state(backup.uuid)).activated


async def test_guesses_are_refused_and_the_saved_value_is_read(
    nmlab: NMLab, client: NetworkManagerClient
) -> None:
    _, backup = await client.resolve(["primary", "backup"])
    device = (await client.link_state(backup.uuid)).device
    assert device is not None
    with pytest.raises(NMError, match="metered"):
        await client.set_metered(device, GUESS_YES)  # a profile may say only unknown, yes or no
    nmlab.nmcli("connection", "modify", "backup", "connection.metered", "yes")
    assert (await client.profile(backup.uuid)).metered == YES


# -- the daemon -----------------------------------------------------------------------------------------------


def test_daemon_marks_the_backup_so_networkmanager_is_metered_only_while_on_it(
    nmlab: NMLab, tmp_path: Path
) -> None:
    on_disk = nmlab.profiles_on_disk()
    assert global_metered(nmlab) == GUESS_NO and device_metered(nmlab, "wanb") == GUESS_NO
    primary = nmlab.upstreams[0]
    with running_daemon(nmlab, tmp_path / "daemon.log", metered="backup", failback_hold_down="2") as daemon:
        daemon.wait_log(r"ready: traffic on primary \(wana\)")
        assert "backup (wanb): marked metered" in daemon.text()
        assert device_metered(nmlab, "wanb") == YES
        assert global_metered(nmlab) == GUESS_NO, "metered while traffic is on the unmetered primary"
        uplinks = status(nmlab)["uplinks"]
        assert [(u["metered"], u["metered_marked"], u["metered_warning"]) for u in uplinks] == [
            ("guess-no", False, None),
            ("yes", True, None),
        ]
        text = cli(nmlab, "status").stdout
        assert "METERED" in text and "yes (nmfailover)" in text and "warning" not in text

        primary.blackhole()
        daemon.wait_route("wanb", timeout=15)
        settle("NetworkManager metered on the backup", lambda: global_metered(nmlab) == YES)
        # The failover re-applied the backup's metrics: the mark survived that Reapply.
        assert device_metered(nmlab, "wanb") == YES

        primary.heal()
        daemon.wait_route("wana", timeout=20)
        settle("NetworkManager unmetered on the primary", lambda: global_metered(nmlab) == GUESS_NO)
        assert daemon.stop(signal.SIGTERM) == 0
    assert "backup (wanb): metered back to its profile's own (unknown)" in daemon.text()
    assert device_metered(nmlab, "wanb") == GUESS_NO
    assert saved_metered(nmlab, "backup") == "unknown" and nmlab.profiles_on_disk() == on_disk


def test_check_reports_metered_and_changes_nothing(nmlab: NMLab) -> None:
    env = daemon_env(nmlab, metered="wanb")  # by interface: as NMFAILOVER_UPLINKS could name it
    done = nmlab.host(sys.executable, "-m", "nmfailover", "check", "--json", env=env, check=False)
    assert done.returncode == 0, done.stderr
    verdicts = json.loads(done.stdout)["uplinks"]
    assert [(v["metered"], v["metered_marked"], v["metered_warning"]) for v in verdicts] == [
        ("guess-no", False, None),
        ("guess-no", True, None),
    ]
    assert device_metered(nmlab, "wanb") == GUESS_NO


# -- pure: names, warnings, the status table ------------------------------------------------------------------


def _profile(spec: str, id: str, iface: str) -> Profile:
    return Profile(spec, f"uuid-{id}", id, iface, -1, -1, 0, False)


@pytest.mark.parametrize(
    ("metered", "chosen"),
    [
        ("", set()),
        ("Hotspot", {1}),
        ("backup", {1}),
        ("wwan0", {1}),
        ("uuid-Hotspot", {1}),
        (" primary , Hotspot ", {0, 1}),
    ],
)
def test_names_of_uplinks(metered: str, chosen: set[int]) -> None:
    settings = load_settings(
        {"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "Fiber,Hotspot", "NMFAILOVER_METERED": metered}
    )
    profiles = [_profile("Fiber", "Fiber", "eth0"), _profile("Hotspot", "Hotspot", "wwan0")]
    assert metered_uplinks(ActuatorParams.from_settings(settings), profiles) == chosen


def test_a_name_is_first_what_nmfailover_uplinks_says_then_a_role() -> None:
    # A profile called "backup" listed first is the primary; "primary" is then the second one's role.
    settings = load_settings(
        {"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "backup,eth1", "NMFAILOVER_METERED": "backup"}
    )
    profiles = [_profile("backup", "backup", "eth0"), _profile("eth1", "Other", "eth1")]
    assert metered_uplinks(ActuatorParams.from_settings(settings), profiles) == {0}


@pytest.mark.parametrize(
    ("metered", "problem"),
    [
        ("nosuch", "'nosuch' is not one of the uplinks"),
        ("fallback", "'fallback' is not one of the uplinks"),  # only two uplinks
        ("primary,backup,primary", "'primary' is listed twice"),
        ("primary,,backup", "has an empty item"),
    ],
)
def test_names_that_are_no_uplink_are_refused_naming_the_variable(metered: str, problem: str) -> None:
    profiles = [_profile("Fiber", "Fiber", "eth0"), _profile("Hotspot", "Hotspot", "wwan0")]
    with pytest.raises(ConfigError) as raised:
        settings = load_settings(
            {"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "Fiber,Hotspot", "NMFAILOVER_METERED": metered}
        )
        metered_uplinks(ActuatorParams.from_settings(settings), profiles)
    assert raised.value.variable == "NMFAILOVER_METERED" and problem in raised.value.problem


def _link(
    device_type: DeviceType = DeviceType.ETHERNET, driver: str = "r8169", metered: Metered = GUESS_NO
) -> LinkState:
    return LinkState(
        "uuid",
        "/dev/1",
        "usb0",
        DeviceState.ACTIVATED,
        device_type=device_type,
        driver=driver,
        metered=metered,
    )


@pytest.mark.parametrize(
    ("index", "link", "marked", "warned"),
    [
        (1, _link(device_type=DeviceType.MODEM, driver="qmi_wwan"), False, "a mobile broadband modem"),
        (1, _link(device_type=DeviceType.BT, driver="btusb"), False, "Bluetooth"),
        *(
            (1, _link(driver=d), False, f"driver {d}")
            for d in ("rndis_host", "cdc_ether", "cdc_ncm", "ipheth")
        ),
        (1, _link(metered=GUESS_YES), False, "NetworkManager's own guess"),
        (1, _link(), False, None),  # plain ethernet
        (1, _link(driver="cdc_ether"), True, None),  # NMFAILOVER_METERED names it
        (1, _link(driver="cdc_ether", metered=YES), False, None),  # its profile says metered yes
        (0, _link(driver="cdc_ether"), False, None),  # the primary: the user's choice
        (1, LinkState("uuid", driver="cdc_ether"), False, None),  # not active: nothing to judge by
    ],
)
def test_warning_for_a_backup_that_looks_mobile_and_is_not_marked(
    index: int, link: LinkState, marked: bool, warned: str | None
) -> None:
    warning = metered_warning(index, link, marked)
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warned in warning and "NMFAILOVER_METERED" in warning


def test_status_text_shows_metered_and_the_warning(capsys: pytest.CaptureFixture[str]) -> None:
    common = {
        "link": "activated",
        "health": "up",
        "latency_ms": 12.0,
        "consecutive_failures": 0,
        "consecutive_successes": 3,
        "reason": "1/1 ok",
    }
    warning = metered_warning(1, _link(driver="cdc_ether"), False)
    print_status(
        Status.model_validate({
            "preferred": "primary",
            "last_switch_at": None,
            "switches": 0,
            "hold_down_remaining": 0,
            "forced_failover_remaining": 0,
            "pinned": None,
            "task_restarts": {},
            "uplinks": [
                {"role": "primary", "profile": "Fiber", "uuid": "u1", "device": "eth0", "carrying_traffic": True,
                 "metered": "guess-no", "metered_marked": False, "metered_warning": None, **common},
                {"role": "backup", "profile": "Phone", "uuid": "u2", "device": "usb0", "carrying_traffic": False,
                 "metered": "guess-no", "metered_marked": False, "metered_warning": warning, **common},
                {"role": "fallback", "profile": "LTE", "uuid": "u3", "device": None, "carrying_traffic": False,
                 "metered": None, "metered_marked": True, "metered_warning": None, **common},
            ],
        })
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("  UPLINK") or "METERED" in line)
    assert "METERED" in header
    assert [line for line in lines if line.startswith("warning: ")] == [f"warning: {warning}"]


# -- pure: the actuator's bookkeeping (the lab tests above prove NetworkManager's side) -----------------------


class AppliedConnections:
    """The applied connections of two devices, as far as the actuator reads and writes them."""

    def __init__(self, keeps_mark: bool = True) -> None:
        self.keeps_mark = keeps_mark  # False: a NetworkManager that quietly dropped connection.metered
        self.applied = {"/dev/a": [-1, -1, 0], "/dev/b": [-1, -1, 0]}

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def wait_for_disconnect(self) -> None:
        pass

    async def link_state(self, uuid: str) -> LinkState:
        raise AssertionError("not used by apply")

    async def set_route_metrics(
        self, device: str, metric4: int, metric6: int, mptcp_flags: int | None = None
    ) -> bool:
        self.applied[device][:2] = [metric4, metric6]
        return True

    async def set_ipv6_default(self, device: str, allowed: bool, gateway: str | None = None) -> str | None:
        raise AssertionError("no uplink here loses its IPv6")  # tests/test_ipv6.py covers it

    async def restore_applied(self, device: str, back: Restore) -> bool:
        await self.set_route_metrics(device, back.metric4, back.metric6)
        if back.metered is not None:
            await self.set_metered(device, back.metered)
        return True

    async def set_dns(self, device: str, dns: Dns) -> bool:
        raise AssertionError("no DNS is moved here")  # tests/test_dns_override.py covers it

    async def set_resolver_routes(self, device: str, wanted: ResolverRoutes) -> bool:
        raise AssertionError("no DNS is moved here")

    async def set_metered(self, device: str, metered: int) -> bool:
        changed = self.applied[device][2] != metered
        if self.keeps_mark:
            self.applied[device][2] = metered
        return changed

    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool:
        return True

    async def profile(self, uuid: str) -> Profile:
        raise AssertionError("not used by apply")

    async def applied_metrics(self, device: str) -> Metrics:
        metric4, metric6, metered = self.applied[device]
        return Metrics(metric4, metric6, Metered(metered))

    async def has_profile(self, uuid: str) -> bool:
        return True


def _uplinks(backup_driver: str) -> list[Uplink]:
    return [
        Uplink(
            0,
            _profile("Fiber", "Fiber", "eth0"),
            LinkState("a", "/dev/a", "eth0", DeviceState.ACTIVATED, driver="r8169"),
        ),
        Uplink(
            1,
            _profile("Phone", "Phone", "usb0"),
            LinkState("b", "/dev/b", "usb0", DeviceState.ACTIVATED, driver=backup_driver),
        ),
        Uplink(2, _profile("LTE", "LTE", "wwan0"), LinkState("c")),  # not active
    ]


def _actuator(nm: AppliedConnections, metered: str, backup_driver: str = "r8169") -> Actuator:
    settings = load_settings(
        {
            "NMFAILOVER_ENV_FILE": "",
            "NMFAILOVER_UPLINKS": "Fiber,Phone,LTE",
            "NMFAILOVER_METERED": metered,
            "NMFAILOVER_MANAGE_AUTOCONNECT_PRIORITY": "0",
        }
    )
    return Actuator(ActuatorParams.from_settings(settings), nm, _uplinks(backup_driver))


async def test_apply_marks_only_the_named_active_uplinks_and_verifies_the_mark() -> None:
    nm = AppliedConnections()
    actuator = _actuator(nm, "backup,LTE")
    await actuator.apply(1)
    assert actuator.applied_for == 1
    assert nm.applied == {"/dev/a": [200, 200, 0], "/dev/b": [100, 100, 1]}

    dropped = AppliedConnections(keeps_mark=False)
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR", format="{message}")
    try:
        actuator = _actuator(dropped, "backup")
        await actuator.apply(1)
    finally:
        logger.remove(sink)
    assert actuator.applied_for is None, "a preference without the mark counted as applied"
    assert any("connection.metered unknown, expected yes" in e for e in errors), errors


async def test_an_unmarked_tethered_backup_is_warned_about_once_in_the_log() -> None:
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING", format="{message}")
    try:
        actuator = _actuator(AppliedConnections(), "", backup_driver="rndis_host")
        for preferred in (0, 1, 0):
            actuator.forget_applied()
            await actuator.apply(preferred)
        marked = _actuator(AppliedConnections(), "Phone", backup_driver="rndis_host")
        await marked.apply(0)
    finally:
        logger.remove(sink)
    assert len(warnings) == 1 and "driver rndis_host" in warnings[0], warnings


def test_a_name_that_is_no_uplink_stops_the_actuator_before_anything_changes() -> None:
    nm = AppliedConnections()
    with pytest.raises(ConfigError, match="NMFAILOVER_METERED: 'Fibre' is not one of the uplinks"):
        _actuator(nm, "Fibre")
    assert nm.applied == AppliedConnections().applied
