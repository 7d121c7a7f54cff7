"""NetworkManager's numbers as enums (nmfailover.nm.names), by tables: the words the status and the log use,
and numbers a newer NetworkManager may send that this version does not list."""

from __future__ import annotations

import json

import pytest

from nmfailover.nm import DeviceState, DeviceType, LinkState, Metered, Tethering, phone_or_modem


@pytest.mark.parametrize(
    ("state", "word"),
    [
        (DeviceState.ACTIVATED, "activated"),
        (DeviceState.NEED_AUTH, "need-auth"),
        (DeviceState.PREPARE, "preparing"),
    ],
)
def test_device_states_read_as_nmcli_says_them(state: DeviceState, word: str) -> None:
    assert state.word == word


@pytest.mark.parametrize(
    ("metered", "word"),
    [
        (Metered.UNKNOWN, "unknown"),
        (Metered.YES, "yes"),
        (Metered.NO, "no"),
        (Metered.GUESS_YES, "guess-yes"),
        (Metered.GUESS_NO, "guess-no"),
    ],
)
def test_metered_reads_as_networkmanager_says_it(metered: Metered, word: str) -> None:
    assert metered.word == word


def test_a_number_this_version_does_not_list_is_kept() -> None:
    state, metered, device_type = DeviceState(130), Metered(7), DeviceType(99)
    assert (int(state), state.word, int(metered), metered.word, int(device_type)) == (130, "130", 7, "7", 99)
    # Written out as the number, as before the enums: the status JSON and the log stay the same.
    assert json.dumps([DeviceState.ACTIVATED, Metered.GUESS_YES]) == "[100, 3]" and f"{state}" == "130"


@pytest.mark.parametrize(
    ("link", "state_name", "metered_name", "activated"),
    [
        (LinkState("u"), "inactive", None, False),
        (
            LinkState("u", "/dev/1", "eth0", DeviceState.ACTIVATED, metered=Metered.YES),
            "activated",
            "yes",
            True,
        ),
        (
            LinkState("u", "/dev/1", None, DeviceState.ACTIVATED),
            "activated",
            "unknown",
            False,
        ),  # no interface
        (LinkState("u", "/dev/1", "eth0", DeviceState.IP_CONFIG), "ip-config", "unknown", False),
        (LinkState("u", "/dev/1", "eth0", DeviceState(130), metered=Metered(7)), "130", "7", False),
    ],
)
def test_a_links_state_as_the_status_shows_it(
    link: LinkState, state_name: str, metered_name: str | None, activated: bool
) -> None:
    assert (link.state_name, link.metered_name, link.activated) == (state_name, metered_name, activated)


@pytest.mark.parametrize(
    ("device_type", "driver", "tethering", "kind"),
    [
        (DeviceType.MODEM, "", Tethering.MODEM, "cellular"),
        (DeviceType.BT, "", Tethering.BLUETOOTH, "cellular"),
        (DeviceType.ETHERNET, "rndis_host", Tethering.USB, "cellular"),
        (DeviceType.ETHERNET, "e1000e", None, "wired"),
        (DeviceType.WIFI, "iwlwifi", None, "wireless"),
    ],
)
def test_phones_and_modems_by_device_type_and_driver(
    device_type: DeviceType, driver: str, tethering: Tethering | None, kind: str
) -> None:
    assert phone_or_modem(device_type, driver) is tethering
    assert LinkState("u", "/dev/1", "x", device_type=device_type, driver=driver).kind == kind
