"""The policy's parameter checks by their exact bounds and messages: scripts/mutation found bounds and
messages that tests/test_policy.py let change unnoticed."""

from __future__ import annotations

import pytest

from nmfailover.policy import PolicyParams

INVALID: list[tuple[str, dict[str, float | None], str]] = [
    ("no failures needed", {"fail_count": 0}, "fail_count must be >= 1, got 0"),
    ("no successes needed", {"rise_count": 0}, "rise_count must be >= 1, got 0"),
    ("negative hold-down", {"failback_hold_down": -0.5}, "failback_hold_down must be >= 0, got -0.5"),
    (
        "cap below the hold-down",
        {"max_hold_down": 29.0},
        "max_hold_down must be >= failback_hold_down, got 29.0",
    ),
    ("no flap window", {"flap_window": 0.0}, "flap_window must be > 0, got 0.0"),
]
VALID: list[tuple[str, dict[str, float | None]]] = [
    ("one failure, one success", {"fail_count": 1, "rise_count": 1}),
    ("no hold-down", {"failback_hold_down": 0.0, "max_hold_down": 0.0}),
    ("cap at the hold-down", {"max_hold_down": 30.0}),
    ("the shortest flap window", {"flap_window": 0.001}),
]


def params(**changes: float | None) -> PolicyParams:
    values: dict[str, float | None] = {"fail_count": 3, "rise_count": 2, "failback_hold_down": 30.0}
    values.update(changes)
    return PolicyParams(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_params_are_refused_saying_which_and_what(
    changes: dict[str, float | None], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        params(**changes)
    assert str(raised.value) == message


@pytest.mark.parametrize("changes", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_params_at_their_bounds_are_accepted(changes: dict[str, float | None]) -> None:
    assert params(**changes)
