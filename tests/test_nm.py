"""The NetworkManager adapter against a real NetworkManager in the sandbox (no mocks)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nmfailover.errors import NMAccessDenied, NMError, NMUnavailable, ProfileError
from nmfailover.lab.sandbox import NMLab
from nmfailover.nm import (
    ERROR_NO_SUCH_PROFILE,
    CarrierChanged,
    DeviceStateChanged,
    NetworkManagerClient,
    NMEvent,
    NMStarted,
    NMStopped,
)


@pytest.fixture
async def client(nmlab: NMLab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NetworkManagerClient]:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nmlab.bus_address)
    events: list[NMEvent] = []
    nm = NetworkManagerClient(on_event=events.append)
    nm.events = events  # type: ignore[attr-defined]
    await nm.connect()
    yield nm
    await nm.close()


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_resolve_by_id_uuid_and_interface(nmlab: NMLab, client: NetworkManagerClient) -> None:
    uuid = nmlab.nmcli("-g", "connection.uuid", "connection", "show", "backup").strip()
    primary, backup = await client.resolve(["primary", uuid])
    assert (primary.id, primary.interface_name) == ("primary", "wana")
    assert (backup.id, backup.uuid) == ("backup", uuid)
    by_iface, _ = await client.resolve(["wana", "wanb"])
    assert by_iface.uuid == primary.uuid and by_iface.spec == "wana"
    assert primary.metric4 == -1 and primary.never_default is False


@pytest.mark.parametrize(
    ("specs", "problem"),
    [
        (["primary", "nosuch"], "no NetworkManager profile"),
        (["primary", "wana"], "same profile as 'primary'"),
    ],
    ids=["unknown", "same-profile-twice"],
)
async def test_resolve_rejects(client: NetworkManagerClient, specs: list[str], problem: str) -> None:
    with pytest.raises(ProfileError, match=problem):
        await client.resolve(specs)


async def test_resolve_rejects_never_default(nmlab: NMLab, client: NetworkManagerClient) -> None:
    nmlab.nmcli("connection", "modify", "backup", "ipv4.never-default", "yes")
    with pytest.raises(ProfileError, match="never-default"):
        await client.resolve(["primary", "backup"])


async def test_link_state_reports_device_dns_and_gateways(client: NetworkManagerClient) -> None:
    _, backup = await client.resolve(["primary", "backup"])
    link = await client.link_state(backup.uuid)
    assert link.activated and link.interface == "wanb"
    assert link.nameservers[0] == "203.0.113.54"
    assert (link.gateway4, link.gateway6) == ("192.0.2.65", "2001:db8:b::1")
    absent = await client.link_state("00000000-0000-0000-0000-000000000000")
    assert not absent.activated and absent.interface is None


async def test_metrics_switch_at_run_time_without_touching_disk_or_links(
    nmlab: NMLab, client: NetworkManagerClient
) -> None:
    primary, backup = await client.resolve(["primary", "backup"])
    assert nmlab.default_route(4) == "wana" and nmlab.default_route(6) == "wana"
    on_disk = nmlab.profiles_on_disk()
    link_b = await client.link_state(backup.uuid)
    link_a = await client.link_state(primary.uuid)
    assert link_a.device and link_b.device

    assert await client.set_route_metrics(link_b.device, 50, 60) is True
    await wait_until(lambda: nmlab.default_route(4) == "wanb" and nmlab.default_route(6) == "wanb")
    assert ("wanb", 50) in nmlab.default_routes(4) and ("wanb", 60) in nmlab.default_routes(6)
    applied = await client.applied_metrics(link_b.device)
    assert (applied.metric4, applied.metric6) == (50, 60)
    assert await client.set_route_metrics(link_b.device, 50, 60) is False  # already so: nothing sent

    # The saved profile keeps its own values; nothing was written to the keyfile directory.
    assert (await client.profile(backup.uuid)).metric4 == -1
    assert nmlab.nmcli("-g", "ipv4.route-metric", "connection", "show", "backup").strip() == "-1"
    assert nmlab.profiles_on_disk() == on_disk
    # No device left "activated" at any time (Reapply, not down/up), addresses and DNS survived.
    left = [e for e in client.events if isinstance(e, DeviceStateChanged) and e.old_state == 100]  # type: ignore[attr-defined]
    assert not left
    after = await client.link_state(backup.uuid)
    assert after.activated and after.nameservers == link_b.nameservers

    # Back to the profile's own values (-1 = NetworkManager's default).
    await client.set_route_metrics(link_b.device, -1, -1)
    await wait_until(lambda: nmlab.default_route(4) == "wana")


async def test_autoconnect_priority_in_memory_only(nmlab: NMLab, client: NetworkManagerClient) -> None:
    _, backup = await client.resolve(["primary", "backup"])
    on_disk = nmlab.profiles_on_disk()
    assert await client.set_autoconnect_priority(backup.uuid, 7) is True
    assert (await client.profile(backup.uuid)).autoconnect_priority == 7
    assert nmlab.nmcli("-g", "connection.autoconnect-priority", "connection", "show", "backup").strip() == "7"
    assert await client.set_autoconnect_priority(backup.uuid, 7) is False
    assert nmlab.profiles_on_disk() == on_disk
    link = await client.link_state(backup.uuid)
    assert link.activated  # Update2 with NO_REAPPLY leaves the running link alone


async def test_follows_link_events_and_networkmanager_restart(
    nmlab: NMLab, client: NetworkManagerClient
) -> None:
    events: list[NMEvent] = client.events  # type: ignore[attr-defined]
    primary, backup = await client.resolve(["primary", "backup"])
    device = (await client.link_state(backup.uuid)).device
    nmlab.upstreams[1].cut_cable()
    # The carrier first (at once), then NetworkManager's own verdict on the device.
    await wait_until(lambda: CarrierChanged(str(device), False) in events)
    await wait_until(
        lambda: any(
            isinstance(e, DeviceStateChanged) and e.device == device and e.old_state == 100 for e in events
        )
    )
    assert not (await client.link_state(backup.uuid)).activated
    nmlab.upstreams[1].restore_cable()

    await asyncio.to_thread(nmlab.restart_nm)
    await wait_until(lambda: NMStopped() in events and NMStarted() in events)
    # The same client keeps working against the new NetworkManager.
    link = await client.link_state(primary.uuid)
    assert link.activated and link.interface == "wana"
    assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == nmlab.bus_address


async def test_a_missing_profile_is_told_apart_from_other_errors(client: NetworkManagerClient) -> None:
    assert await client.has_profile("00000000-0000-4000-8000-000000000000") is False
    with pytest.raises(NMError) as raised:
        await client.profile("00000000-0000-4000-8000-000000000000")
    assert raised.value.dbus_error == ERROR_NO_SUCH_PROFILE
    assert not isinstance(raised.value, NMUnavailable | NMAccessDenied)


def test_a_refused_change_is_access_denied_not_a_deleted_profile(nmlab: NMLab) -> None:
    """As an unprivileged user (the sandbox's NetworkManager authorizes root only), a change is refused:
    reported as NMAccessDenied with NetworkManager's error name, while the profile still counts as present."""
    script = """
import asyncio, sys
from nmfailover.errors import NMAccessDenied
from nmfailover.nm import NetworkManagerClient

async def main() -> None:
    nm = NetworkManagerClient()
    await nm.connect()
    (backup,) = await nm.resolve(["backup"])
    print("exists", await nm.has_profile(backup.uuid))
    try:
        await nm.set_autoconnect_priority(backup.uuid, 9)
        print("changed")
    except NMAccessDenied as exc:
        print("denied", exc.dbus_error)
    await nm.close()

asyncio.run(main())
"""
    out = nmlab.host(
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-c",
        script,
        env=dict(nmlab.env, PYTHONPATH=str(Path(__file__).parents[1])),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "exists True", out.stdout
    assert lines[1].startswith("denied org.freedesktop"), out.stdout
