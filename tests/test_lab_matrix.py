"""The fault-class matrix of the benchmark (bench/scenarios/matrix.py): its repair rule, its tables, and one
real cell end to end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.common import NMC_FAST, NMF, VF
from bench.report import summarise
from bench.scenarios import matrix
from nmfailover.lab.usertraffic import UserAttempt


def _lookup(seq: int, started: float, seconds: float | None) -> UserAttempt:
    ok = seconds is not None
    return UserAttempt(seq, "site1.test", started, started, "ok" if ok else "lookup-failed", ok, seconds, "",
                       None, None, None, None, seconds)  # fmt: skip


class _Recorded:
    def __init__(self, attempts: list[UserAttempt]) -> None:
        self._attempts = attempts

    def attempts(self) -> list[UserAttempt]:
        return self._attempts


def test_dns_repair_is_the_first_lookup_after_the_fault_answered_within_a_second() -> None:
    traffic: Any = _Recorded(
        [
            _lookup(0, 99.0, 0.01),  # before the fault
            _lookup(1, 100.5, 5.2),  # answered, but only after the first server's timeout
            _lookup(2, 101.0, None),
            _lookup(3, 102.0, 0.9),
            _lookup(4, 103.0, 0.01),
        ]
    )
    assert matrix._dns_repaired(traffic, 100.0) == pytest.approx(102.9)
    assert matrix._dns_repaired(traffic, 103.5) is None
    assert matrix._dns_repaired(None, 100.0) is None


def _timed(repair: float | None) -> dict[str, Any]:
    return {"repair": repair, "repaired_by": None if repair is None else "route"}


def test_matrix_tables_show_median_worst_and_ratios_to_the_baselines() -> None:
    cells = {
        "silent": {
            "idle": {
                NMF: [_timed(1.0), _timed(2.0), _timed(1.5)],
                VF: [_timed(5.0), _timed(8.0), _timed(6.0)],
                NMC_FAST: [_timed(None), _timed(None), _timed(None)],
            }
        },
        "download": {
            "idle": {
                m: [
                    {"switches": n, "off_primary": 0.0, "mbit_per_s": 3.9}
                    for n in (0, 0, 1 if m == VF else 0)
                ]
                for m in (NMF, VF, NMC_FAST)
            }
        },
    }
    results: dict[str, Any] = {
        "matrix": {
            "rows": {
                "silent": {"title": "upstream silently dead", "soak": False, "dns": False},
                "download": {"title": "a saturating download", "soak": True, "dns": False},
            },
            "modes": ["idle"],
            "methods": [NMF, VF, NMC_FAST],
            "runs": 3,
            "detect_limit": 30.0,
            "soak_seconds": 60.0,
            "dns_ok_within": 1.0,
            "user_interval": 0.3,
            "lookup_interval": 1.0,
            "cells": cells,
        }
    }
    table, summary = summarise(results)
    lines = table.splitlines()
    silent = next(line for line in lines if line.startswith("| upstream silently dead"))
    # median (worst); nmfailover / virtual-failover 1.5/6 and 2/8; the never-ending baseline bounds it: 1.5/30
    assert silent.split(" | ")[1:6] == [
        "1.5 s (2.0 s)",
        "6.0 s (8.0 s)",
        "never (never)",
        "0.25 (0.25)",
        "< 0.05 (< 0.07)",
    ]
    download = next(line for line in lines if line.startswith("| a saturating download"))
    assert download.split(" | ")[1:4] == ["0 (0)", "0 (1)", "0 (0)"]
    assert "3.90 Mbit/s or more" in download
    assert summary["matrix"]["silent"]["idle"][NMC_FAST]["median"] == math.inf


def test_one_cell_end_to_end_silent_death_with_traffic(tmp_path: Path, lab_machine: None) -> None:
    run = matrix.run_timed(matrix.ROWS[0], "traffic", NMF, tmp_path)
    print(f"\n{run}")
    assert run["repaired_by"] == "route"
    assert 0 < run["repair"] < matrix.DETECT_LIMIT
    # The user's pages load again once the route is on the backup, and not before it moved.
    assert run["user_ok"] is not None and run["user_ok"] >= run["route"] - 0.5
    assert run["user_attempts"] > 0 and "ok" in run["user_outcomes"]
