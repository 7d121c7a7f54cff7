"""`nmfailover check` and the exit codes, run as a subprocess in the sandbox's host namespace."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nmfailover import __version__
from nmfailover.lab.demo import daemon_env
from nmfailover.lab.sandbox import NMLab


def cli(lab: NMLab, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    return lab.host(sys.executable, "-m", "nmfailover", *args, env=daemon_env(lab, **overrides), check=False)


def test_version_and_usage_errors() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nmfailover", "--version"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and run.stdout.strip() == f"nmfailover {__version__}"
    bad = subprocess.run(
        [sys.executable, "-m", "nmfailover", "frobnicate"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "invalid choice: 'frobnicate'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.lab
def test_check_prints_a_table_and_exits_by_the_primary(nmlab: NMLab) -> None:
    healthy = cli(nmlab, "check")
    assert healthy.returncode == 0, healthy.stderr
    lines = healthy.stdout.splitlines()
    assert lines[0].split()[:5] == ["UPLINK", "DEVICE", "RESULT", "LATENCY_MS", "REASON"]
    assert sum(line.startswith("primary  wana    ok") for line in lines) == 3
    assert "primary (primary): healthy: 3/3 targets answered" in healthy.stdout

    nmlab.upstreams[0].refuse()
    report = json.loads(cli(nmlab, "check", "--json").stdout)
    assert [u["healthy"] for u in report["uplinks"]] == [False, True]
    assert {p["reason"] for p in report["probes"] if p["uplink"] == "primary"} == {"connect"}
    assert cli(nmlab, "check").returncode == 1


@pytest.mark.lab
def test_unknown_profile_exits_2_before_touching_networkmanager(nmlab: NMLab) -> None:
    routes = nmlab.default_routes(4), nmlab.default_routes(6)
    for command in ("run", "check"):
        result = cli(nmlab, command, uplinks="primary,nosuch")
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "nmfailover: NMFAILOVER_UPLINKS: 'nosuch': no NetworkManager profile "
            "has this id, UUID or interface name"
        )
    assert (nmlab.default_routes(4), nmlab.default_routes(6)) == routes
