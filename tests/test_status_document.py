"""The status document and the D-Bus interface hold still: docs/status.md is the model's own reference, the
daemon's Status() JSON is the model's dump field for field, and the exported interface of the control
object is the checked-in XML (nothing changes by accident)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nmfailover.bus import BusType, Message, MessageBus, MessageType
from nmfailover.control import BUS_NAME, OBJECT_PATH, ControlService, call_daemon
from nmfailover.engine import Engine, EngineParams, Operator
from nmfailover.lab.sandbox import NMLab
from nmfailover.status import LastSwitch, Status, reference
from tests import status_samples as samples
from tests.test_engine import PROFILES, SETTINGS, FakeNM, FakeProber, start, stop

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "status.md"
INTERFACE_XML = ROOT / "docs" / "net.nmfailover.Failover1.xml"


def test_the_reference_is_generated_from_the_model() -> None:
    assert REFERENCE.read_text() == reference(), (
        "docs/status.md differs from the model: run `python -m nmfailover.status > docs/status.md`"
    )


def test_every_field_of_the_model_is_in_the_reference() -> None:
    text = reference()
    for name in ("hold_down_remaining", "carrying_traffic", "dns_moved_to", "month_bytes_by_uplink"):
        assert f"| `{name}` |" in text
    assert "| `from` | string or null | required |" in text  # the JSON name, not the Python one


def test_the_json_names_and_what_an_older_daemon_leaves_out() -> None:
    switched = samples.status(
        samples.uplink("primary"),
        last_switch=LastSwitch(action="initial", from_role=None, to="primary", reason="start"),
    )
    document = json.loads(switched.to_json())
    assert document["last_switch"] == {"action": "initial", "from": None, "to": "primary", "reason": "start"}
    assert Status.model_validate_json(switched.to_json()) == switched
    # A daemon from before these fields: still read, with their defaults.
    del document["last_switch"], document["uplinks"][0]["kind"], document["tunnels"]
    document["from_a_newer_daemon"] = 1
    older = Status.model_validate(document)
    assert (older.last_switch, older.uplinks[0].kind, older.tunnels) == (None, "wired", None)


async def test_the_engines_status_survives_the_trip_through_json() -> None:
    engine = Engine(EngineParams.from_settings(SETTINGS), FakeNM(), PROFILES, FakeProber())
    task = await start(engine)
    try:
        status = Operator(engine).status()
    finally:
        await stop(engine, task)
    text = status.to_json()
    assert Status.model_validate_json(text).to_json() == text
    assert [u["role"] for u in json.loads(text)["uplinks"]] == ["primary", "backup"]


# -- on a real bus -------------------------------------------------------------------------------------------


@pytest.fixture
async def control(nmlab: NMLab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Engine]:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nmlab.bus_address)
    engine = Engine(EngineParams.from_settings(SETTINGS), FakeNM(), PROFILES, FakeProber())
    task = await start(engine)
    service = ControlService()
    await service.start(Operator(engine))
    yield engine
    await service.close()
    await stop(engine, task)


@pytest.mark.lab
async def test_the_exported_interface_is_pinned(control: Engine) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface="org.freedesktop.DBus.Introspectable",
                member="Introspect",
            )
        )
    finally:
        bus.disconnect()
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
    assert reply.body[0] == INTERFACE_XML.read_text(), (
        "the control object's interface changed: if on purpose, update docs/net.nmfailover.Failover1.xml"
    )


@pytest.mark.lab
async def test_status_over_the_bus_is_the_models_json(control: Engine) -> None:
    (text,) = await call_daemon("Status")
    status = Status.model_validate_json(text)
    assert status.to_json() == text  # field for field, in the same order
    assert status.preferred == "primary" and [u.profile for u in status.uplinks] == ["primary", "backup"]
