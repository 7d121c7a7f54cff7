"""The metered uplinks' data budget: sizes, the pure accounting (tables: outages, month rollover, a device
that comes back with its counters at 0, warnings), the ledger on disk, the metrics, and the real daemon in
the lab counting a metered backup's bytes after a failover and keeping them across a restart."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nmfailover.budget import (
    Counter,
    Ledger,
    Outage,
    Reading,
    account,
    load_ledger,
    metered_carrier,
    parse_size,
    read_counter,
    save_ledger,
)
from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from nmfailover.metrics import Metrics
from nmfailover.status import BudgetStatus, OutageStatus
from tests import status_samples as samples
from tests.daemon import running_daemon
from tests.operate import SignalRecorder, cli, status


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("5GiB", 5 * 2**30),
        (" 500 MB ", 500 * 10**6),
        ("1.5GB", 1_500_000_000),
        ("2000000", 2_000_000),
        ("64kB", 64_000),
        ("1KiB", 1024),
        ("1b", 1),
        ("2TiB", 2 * 2**40),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "0.5", "abc", "5 GiG", "-1", "1.5.0GB", "GiB", "5 GiB 2"])
def test_bad_sizes_say_what_a_size_is(text: str) -> None:
    with pytest.raises(ValueError, match=r"^must be a size of 1 byte or more, like 5GiB"):
        parse_size(text)


# -- the accounting -----------------------------------------------------------------------------------------

# One step: the metered uplink carrying traffic (None: none does), its device, ifindex and rx+tx counter
# (None: unreadable), the month; then what must hold after it: the month's bytes, the outage's bytes and
# whether it is still open, and the warning's percentage (0: none).
Step = tuple[str | None, str, int, int | None, str, int, int, bool, int]
DEC, JAN = "2026-12", "2027-01"
BUDGET = 1000

SCENARIOS: dict[str, list[Step]] = {
    "an outage counts from its first reading": [
        ("backup", "wwan0", 5, 7000, DEC, 0, 0, True, 0),
        ("backup", "wwan0", 5, 7100, DEC, 100, 100, True, 0),
        ("backup", "wwan0", 5, 7350, DEC, 350, 350, True, 0),
        (None, "", 0, None, DEC, 350, 350, False, 0),
    ],
    "the next outage starts at 0, the month goes on": [
        ("backup", "wwan0", 5, 100, DEC, 0, 0, True, 0),
        ("backup", "wwan0", 5, 300, DEC, 200, 200, True, 0),
        (None, "", 0, None, DEC, 200, 200, False, 0),
        ("backup", "wwan0", 5, 900, DEC, 200, 0, True, 0),  # what it carried meanwhile was not traffic
        ("backup", "wwan0", 5, 950, DEC, 250, 50, True, 0),
    ],
    "a new month starts at 0 and warns again": [
        ("backup", "wwan0", 5, 0, DEC, 0, 0, True, 0),
        ("backup", "wwan0", 5, 800, DEC, 800, 800, True, 75),
        ("backup", "wwan0", 5, 900, JAN, 100, 900, True, 0),
        ("backup", "wwan0", 5, 1700, JAN, 900, 1700, True, 75),
    ],
    "a device back with its counters at 0 counts from 0": [
        ("backup", "wwan0", 5, 5000, DEC, 0, 0, True, 0),
        ("backup", "wwan0", 5, 5100, DEC, 100, 100, True, 0),
        ("backup", "wwan0", 9, 40, DEC, 140, 140, True, 0),  # re-plugged: a new ifindex
        ("backup", "wwan0", 9, 90, DEC, 190, 190, True, 0),
        ("backup", "wwan0", 9, 10, DEC, 200, 200, True, 0),  # same ifindex, counter went down: reset
    ],
    "an unreadable counter loses nothing but that moment": [
        ("backup", "wwan0", 5, 0, DEC, 0, 0, True, 0),
        ("backup", "wwan0", 5, 100, DEC, 100, 100, True, 0),
        ("backup", "wwan0", 5, None, DEC, 100, 100, True, 0),
        ("backup", "wwan0", 5, 500, DEC, 100, 100, True, 0),  # a new baseline
        ("backup", "wwan0", 5, 600, DEC, 200, 200, True, 0),
    ],
    "warnings once each; jumping past both tells the higher one": [
        ("backup", "wwan0", 5, 0, DEC, 0, 0, True, 0),
        ("backup", "wwan0", 5, 749, DEC, 749, 749, True, 0),
        ("backup", "wwan0", 5, 750, DEC, 750, 750, True, 75),
        ("backup", "wwan0", 5, 900, DEC, 900, 900, True, 0),
        ("backup", "wwan0", 5, 949, DEC, 949, 949, True, 0),
        ("backup", "wwan0", 5, 5000, DEC, 5000, 5000, True, 95),
        ("backup", "wwan0", 5, 9000, DEC, 9000, 9000, True, 0),
    ],
    "another metered uplink is another outage": [
        ("backup", "wwan0", 5, 0, DEC, 0, 0, True, 0),
        ("backup", "wwan0", 5, 300, DEC, 300, 300, True, 0),
        ("fallback", "usb0", 7, 2000, DEC, 300, 0, True, 0),
        ("fallback", "usb0", 7, 2500, DEC, 800, 500, True, 75),
    ],
}


@pytest.mark.parametrize("steps", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_accounting(steps: list[Step]) -> None:
    ledger = Ledger(DEC)
    for at, (uplink, device, ifindex, total, month, month_bytes, outage_bytes, open_, warned) in enumerate(
        steps
    ):
        counter = Counter(device, ifindex, total) if total is not None else None
        ledger, warning = account(ledger, Reading(uplink, counter, float(at), month), BUDGET, (75, 95))
        step = f"step {at}: {(uplink, device, ifindex, total, month)}"
        assert ledger.total == month_bytes, step
        assert ledger.outage is not None, step
        assert (ledger.outage.bytes, ledger.outage.ended_at is None) == (outage_bytes, open_), step
        assert (warning.percent if warning else 0) == warned, step
        if warning is not None:
            assert (warning.used, warning.budget) == (ledger.total, BUDGET)
            assert f"{warned} % of the budget" in str(warning)


def test_without_a_budget_it_counts_and_never_warns() -> None:
    ledger = Ledger(DEC)
    for at, total in enumerate((0, 10**9, 10**12)):
        ledger, warning = account(
            ledger, Reading("backup", Counter("wwan0", 5, total), at, DEC), None, (75, 95)
        )
        assert warning is None
    assert ledger.total == 10**12


def test_the_outage_ends_when_traffic_leaves_and_keeps_its_times() -> None:
    ledger = Ledger(DEC)
    ledger, _ = account(ledger, Reading("backup", Counter("wwan0", 5, 0), 100.0, DEC), None, ())
    ledger, _ = account(ledger, Reading("backup", Counter("wwan0", 5, 64), 105.0, DEC), None, ())
    ledger, _ = account(ledger, Reading(None, None, 110.0, DEC), None, ())
    assert ledger.outage == Outage("backup", 100.0, 110.0, 64) and ledger.baseline is None


@pytest.mark.parametrize(
    ("uplinks", "carrier"),
    [
        ([("primary", "eth0", "no", False, True), ("backup", "wwan0", "yes", True, False)], None),
        (
            [("primary", "eth0", "no", False, False), ("backup", "wwan0", "yes", True, True)],
            ("backup", "wwan0"),
        ),
        (
            [("primary", "eth0", "no", False, False), ("backup", "wwan0", "guess-yes", False, True)],
            ("backup", "wwan0"),
        ),
        (
            [("primary", "eth0", "no", False, False), ("backup", "wwan0", "guess-no", True, True)],
            ("backup", "wwan0"),
        ),
        ([("primary", "eth0", "no", False, False), ("backup", "wwan0", "no", False, True)], None),
        ([("primary", "eth0", "no", False, False), ("backup", None, None, True, True)], None),
    ],
)
def test_which_uplink_is_counted(
    uplinks: list[tuple[str, str | None, str | None, bool, bool]], carrier: tuple[str, str] | None
) -> None:
    document = samples.status(
        *(
            samples.uplink(p, p, device=d, metered=m, metered_marked=marked, carrying_traffic=c)
            for p, d, m, marked, c in uplinks
        )
    )
    assert metered_carrier(document) == carrier


# -- on disk ------------------------------------------------------------------------------------------------


def test_the_ledger_survives_a_round_trip_and_a_bad_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "state" / "metered-budget.json"
    ledger = Ledger(DEC, {"backup": 1234}, Outage("backup", 1.5, None, 1000), 75, Counter("wwan0", 5, 99))
    save_ledger(path, ledger)
    assert load_ledger(path, 0.0) == ledger
    assert [p.name for p in path.parent.iterdir()] == ["metered-budget.json"]  # no temporary file left
    path.write_text('{"month": "2026-12"')
    assert load_ledger(path, 1_796_648_575.0) == Ledger("2026-12")
    assert load_ledger(tmp_path / "missing.json", 1_796_648_575.0).total == 0


def test_a_real_device_counter_is_read() -> None:
    counter = read_counter("lo")
    assert counter is not None and counter.device == "lo" and counter.ifindex == 1 and counter.total >= 0
    assert read_counter("nmfailover-none") is None


# -- metrics ------------------------------------------------------------------------------------------------


async def test_metrics_show_the_budget() -> None:
    budget = BudgetStatus(
        month=DEC,
        month_bytes=800,
        month_bytes_by_uplink={"Hotspot": 800},
        budget_bytes=1000,
        used_pct=80.0,
        warned_pct=75,
        outage=OutageStatus(uplink="Hotspot", started_at=1.0, ended_at=None, bytes=300),
    )
    document = samples.status(
        samples.uplink("primary", "Fiber", device="eth0"),
        samples.uplink("backup", "Hotspot", device="wwan0", carrying_traffic=True),
        metered_budget=budget,
    )
    text = Metrics(lambda: document).exposition().decode()
    assert 'nmfailover_metered_month_bytes{uplink="backup"} 800.0' in text
    assert 'nmfailover_metered_outage_bytes{uplink="backup"} 300.0' in text
    assert "nmfailover_metered_budget_bytes 1000.0" in text
    assert "nmfailover_metered_budget_used_ratio 0.8" in text
    assert "nmfailover_metered_budget_warning_percent 75.0" in text
    document = document.model_copy(
        update={"metered_budget": budget.model_copy(update={"budget_bytes": None, "used_pct": None})}
    )
    text = Metrics(lambda: document).exposition().decode()
    assert "nmfailover_metered_month_bytes{" in text and "nmfailover_metered_budget_bytes" not in text


# -- the real daemon ----------------------------------------------------------------------------------------


def budget_of(lab: NMLab) -> dict[str, Any]:
    found: dict[str, Any] = status(lab)["metered_budget"]
    return found


def test_a_metered_backup_is_counted_after_a_failover_and_kept_across_a_restart(
    nmlab: NMLab, tmp_path: Path
) -> None:
    ledger_file = nmlab.workdir / "lib-nmfailover" / "metered-budget.json"
    textfile = tmp_path / "nmfailover.prom"
    settings = {
        "NMFAILOVER_METERED": "backup",
        "NMFAILOVER_METERED_BUDGET": "40kB",
        "NMFAILOVER_METRICS_TEXTFILE": str(textfile),
    }
    with running_daemon(nmlab, tmp_path / "first.log", env_extra=settings) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        assert budget_of(nmlab)["outage"] is None  # the primary is not metered: nothing counted
        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        with nmlab.user_traffic():
            wait_for(lambda: budget_of(nmlab)["warned_pct"] == 95, 60, "the 95 % warning", step=0.5)
        first = budget_of(nmlab)
        print("after the failover:", json.dumps(first))
        assert first["outage"]["uplink"] == "backup" and first["outage"]["ended_at"] is None
        assert (
            first["month_bytes_by_uplink"]["backup"] == first["month_bytes"] >= first["outage"]["bytes"] > 0
        )
        assert first["month_bytes"] * 100 >= 95 * 40_000 and first["used_pct"] >= 95
        table = cli(nmlab, "status").stdout
        assert re.search(
            r"^metered data this month: [\d.]+ KiB of 39\.1 KiB \([\d.]+ %\); this outage on backup: ",
            table,
            re.M,
        ), table
        log = daemon.text()
        # Each share passed is told once; a reading that jumps past both tells only the higher one.
        warned = re.findall(
            r"WARNING .*metered uplinks carried [\d.]+ KiB this month, (\d+) % of the budget", log
        )
        assert warned in (["95"], ["75", "95"]), warned
        wait_for(
            lambda: "nmfailover_metered_budget_warning_percent 95.0" in textfile.read_text(), 20, "metric"
        )
        assert daemon.stop() == 0
    kept = json.loads(ledger_file.read_text())
    assert kept["month_bytes"]["backup"] >= first["month_bytes"]

    # Restarted while the primary is still dead: the month goes on from what was kept, the warnings given
    # this month are not given again.
    with (
        running_daemon(nmlab, tmp_path / "second.log", env_extra=settings, failback_hold_down="2") as daemon,
        SignalRecorder(nmlab.bus_address) as recorder,
    ):
        daemon.wait_log(r"ready: traffic on")
        daemon.wait_route("wanb", timeout=15)
        again = budget_of(nmlab)
        print("after the restart:", json.dumps(again))
        assert again["month_bytes"] >= kept["month_bytes"]["backup"] and again["warned_pct"] == 95
        with nmlab.user_traffic():
            wait_for(lambda: budget_of(nmlab)["month_bytes"] > again["month_bytes"], 20, "more bytes counted")
        assert "of the budget" not in daemon.text()

        # Back on the primary: the Switched signal tells what the backup carried in the outage just ended.
        nmlab.upstreams[0].heal()
        daemon.wait_route("wana", timeout=20)
        wait_for(
            lambda: any(json.loads(s[4])["action"] == "failback" for s in recorder.signals), 5, "failback"
        )
        failback = next(
            json.loads(s[4]) for s in recorder.signals if json.loads(s[4])["action"] == "failback"
        )
        told = failback["metered_budget"]
        print("in the failback's Switched signal:", json.dumps(told))
        assert told["outage"]["uplink"] == "backup" and told["outage"]["ended_at"] is not None
        assert told["outage"]["bytes"] > 0 and told["month_bytes"] > again["month_bytes"]
        assert budget_of(nmlab)["outage"] == told["outage"]  # nothing more counted on the primary
        assert daemon.stop() == 0
