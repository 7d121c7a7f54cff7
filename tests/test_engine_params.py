"""Each part of the engine gets only the parameters it uses, built from the settings once at start; none
of them is handed the whole Settings."""

from __future__ import annotations

import typing

import pytest

from nmfailover.config import Settings, load_settings
from nmfailover.engine import Engine, EngineParams, Operator
from nmfailover.engine.actuator import Actuator, ActuatorParams
from nmfailover.engine.intake import EventIntake
from nmfailover.engine.ondemand import OnDemand
from nmfailover.engine.probing import ProbeScheduler
from tests.test_engine import PROFILES, FakeNM, FakeProber

BASE = {"NMFAILOVER_ENV_FILE": "/dev/null", "NMFAILOVER_UPLINKS": "primary,backup"}


@pytest.mark.parametrize("part", [Engine, Actuator, ProbeScheduler, EventIntake, OnDemand, Operator])
def test_no_part_of_the_engine_is_handed_the_settings(part: type) -> None:
    hints = typing.get_type_hints(vars(part)["__init__"])
    assert Settings not in hints.values(), f"{part.__name__} takes the whole Settings"


@pytest.mark.parametrize(
    ("variable", "value", "read"),
    [
        ("NMFAILOVER_METRIC_BASE", "300", lambda p: p.actuator.metric_base == 300),
        ("NMFAILOVER_METERED", "backup", lambda p: p.actuator.metered == ("backup",)),
        ("NMFAILOVER_SOURCE_ROUTING", "false", lambda p: p.actuator.source_routing is False),
        ("NMFAILOVER_DNS_SERVERS", "198.51.100.53", lambda p: p.dns_servers == ("198.51.100.53",)),
        ("NMFAILOVER_FAIL_COUNT", "5", lambda p: p.policy.fail_count == 5),
        ("NMFAILOVER_HEARTBEAT", "false", lambda p: p.detection.heartbeat is False),
        ("NMFAILOVER_UPLINKS", "auto", lambda p: p.auto_uplinks and p.actuator.auto_uplinks),
    ],
)
def test_params_are_read_from_the_settings(
    variable: str, value: str, read: typing.Callable[[EngineParams], bool]
) -> None:
    assert read(EngineParams.from_settings(load_settings(BASE | {variable: value})))


def test_the_layers_nothing_can_send_are_off() -> None:
    params = EngineParams.from_settings(load_settings(BASE))
    assert params.detection.heartbeat and params.detection.dns_checks and params.detection.http_checks
    engine = Engine(params, FakeNM(), PROFILES, FakeProber())  # no echo, DNS or HTTP check given
    assert (engine.detection.heartbeat, engine.detection.dns_checks, engine.detection.http_checks) == (
        False,
        False,
        False,
    )
    assert engine.actuator.params is params.actuator
    assert ActuatorParams.from_settings(load_settings(BASE)) == params.actuator
