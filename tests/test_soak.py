"""The soak's judgement (nmfailover/lab/soak.py), on tables: which switches a fault explains, what a daemon
log says switched, and how RSS growth is measured. The soak itself runs in CI (scripts/bootstrap)."""

from __future__ import annotations

import pytest

from nmfailover.lab.soak import Fault, Switch, log_time, rss_growth, switches_in, unexplained

ORDER = ("primary", "backup")
LOG = """\
2026-12-07 15:35:40.000 INFO     ready: traffic on primary (wana); primary (wana) up, backup (wanb) up
2026-12-07 15:35:48.936 INFO     primary (wana) down: 1/1 targets failed (no-device)
2026-12-07 15:35:49.000 WARNING  primary (wana) is down -> switching to backup (wanb)
2026-12-07 15:36:05.765 WARNING  primary (wana) healthy for 10s; moving back -> switching to primary (wana)
"""


def switch(at: float, from_uplink: str, to_uplink: str) -> Switch:
    return Switch(at, from_uplink, to_uplink, f"{from_uplink} -> {to_uplink}")


def test_switches_in_a_log_with_the_uplink_each_left() -> None:
    found = switches_in(LOG)
    assert [(s.from_uplink, s.to_uplink) for s in found] == [("primary", "backup"), ("backup", "primary")]
    assert found[0].at == log_time("2026-12-07 15:35:49.000")
    assert found[1].at - found[0].at == pytest.approx(16.765)


@pytest.mark.parametrize(
    ("the_switch", "faults", "explained"),
    [
        # Away from an uplink with a fault in place, or healed shortly before.
        (switch(100, "primary", "backup"), [Fault("primary", "blackhole", 90)], True),
        (switch(100, "primary", "backup"), [Fault("primary", "blackhole", 60, 80)], True),
        (switch(100, "primary", "backup"), [Fault("primary", "blackhole", 10, 60)], False),
        (switch(100, "primary", "backup"), [Fault("primary", "blackhole", 101)], False),
        # A fault on the other uplink explains nothing; nor does a dead resolver, which moves only DNS.
        (switch(100, "primary", "backup"), [Fault("backup", "blackhole", 90)], False),
        (switch(100, "primary", "backup"), [Fault("primary", "break_dns", 90)], False),
        (switch(100, "primary", "backup"), [], False),
        # Back to an uplink ranked higher that had a fault before: a failback, whenever it was.
        (switch(100, "backup", "primary"), [Fault("primary", "cut_cable", 5, 10)], True),
        (switch(100, "backup", "primary"), [Fault("backup", "unplug", 5, 10)], False),
        # Down the order to an uplink that had the fault: no failback, and the one left was fine.
        (switch(100, "primary", "backup"), [Fault("backup", "blackhole", 5, 10)], False),
    ],
)
def test_a_switch_is_explained_by_a_fault_on_the_uplink_it_left_or_a_failback(
    the_switch: Switch, faults: list[Fault], explained: bool
) -> None:
    assert unexplained([the_switch], faults, ORDER, window=30) == ([] if explained else [the_switch])


@pytest.mark.parametrize(
    ("samples", "baseline_at", "growth"),
    [
        ([(0, 100), (10, 150), (20, 170)], 10, 20),
        ([(0, 100), (10, 150), (20, 140)], 10, -10),
        ([(0, 100), (10, 150), (20, 170)], 15, 20),  # the last sample before the end of the warm-up
        ([(0, 100)], 0, 0),
    ],
)
def test_rss_growth_from_the_end_of_the_warm_up(
    samples: list[tuple[float, int]], baseline_at: float, growth: int
) -> None:
    assert rss_growth(samples, baseline_at) == growth


def test_rss_growth_needs_a_sample_in_the_warm_up() -> None:
    with pytest.raises(ValueError, match="warm-up"):
        rss_growth([(10, 100)], 5)
