"""The data budget of metered uplinks: the bytes a metered uplink carries while it carries traffic, per
outage and per calendar month, and warnings as the month's bytes pass shares of an optional budget
(NMFAILOVER_METERED_BUDGET, NMFAILOVER_METERED_BUDGET_WARN).

The accounting is pure (`account`: a ledger and a reading in, the new ledger and any warning out); the
daemon's side (`BudgetKeeper`) reads the device's byte counters (/sys/class/net/DEV/statistics, received
plus sent) every few seconds and at each switch, and keeps the ledger in the state directory as a small
JSON file written atomically, so a month's count survives restarts and reboots.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from loguru import logger

from .status import BudgetStatus, OutageStatus, Status

SAMPLE_INTERVAL = 5.0
# The ledger is written when an outage begins or ends, a warning is given or the month turns, and
# otherwise at most this often (and at a clean stop): a crash loses at most this much of the count, and a
# long outage does not write to the disk every few seconds.
SAVE_INTERVAL = 60.0
LEDGER_FILE = "metered-budget.json"
# Metered as NetworkManager reports it: what desktops hold big downloads back for.
METERED = ("yes", "guess-yes")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_size(text: str) -> int:
    """ "5GiB", "500 MB", "1.5GB", "1000000" -> bytes; ValueError with the rule otherwise."""
    match = _SIZE.fullmatch(text.strip().lower())
    unit = _UNITS.get(match.group(2)) if match else None
    if match is None or unit is None or float(match.group(1)) * unit < 1:
        raise ValueError(
            f"must be a size of 1 byte or more, like 5GiB, 500MB or 2000000 (B, kB, MB, GB, TB, KiB, MiB, "
            f"GiB, TiB); got {text!r}"
        )
    return int(float(match.group(1)) * unit)


def format_size(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


@dataclass(frozen=True)
class Counter:
    """One reading of a device's byte counters; a new ifindex is a new device (its counters start at 0)."""

    device: str
    ifindex: int
    total: int  # received + sent


@dataclass(frozen=True)
class Reading:
    uplink: str | None  # profile id of the metered uplink carrying traffic; None when none does
    counter: Counter | None  # its counters; None when they cannot be read (the device is gone)
    at: float  # seconds since the epoch
    month: str  # the calendar month of `at` on this machine, "2026-12"


@dataclass(frozen=True)
class Outage:
    """One stretch of a metered uplink carrying traffic (the current one while `ended_at` is None)."""

    uplink: str
    started_at: float
    ended_at: float | None
    bytes: int


@dataclass(frozen=True)
class Ledger:
    """What is counted, and what is kept across restarts."""

    month: str
    month_bytes: Mapping[str, int] = field(default_factory=dict)  # profile id -> bytes this month
    outage: Outage | None = None  # the current or the last one
    warned: int = 0  # the highest percentage of the budget warned about this month
    baseline: Counter | None = None  # the last reading of the device being counted

    @property
    def total(self) -> int:
        return sum(self.month_bytes.values())


@dataclass(frozen=True)
class BudgetWarning:
    percent: int  # the threshold passed
    used: int
    budget: int

    def __str__(self) -> str:
        return (
            f"metered uplinks carried {format_size(self.used)} this month, {self.percent} % of the budget "
            f"of {format_size(self.budget)} (NMFAILOVER_METERED_BUDGET)"
        )


def account(
    ledger: Ledger, reading: Reading, budget: int | None, thresholds: tuple[int, ...]
) -> tuple[Ledger, BudgetWarning | None]:
    """Count `reading` into `ledger`: the new ledger, and a warning when the month's bytes passed a further
    threshold (percent of `budget`; only the highest one passed at once is told)."""
    if reading.month != ledger.month:
        ledger = Ledger(reading.month, {}, ledger.outage, 0, ledger.baseline)
    outage, counter = ledger.outage, reading.counter
    open_outage = outage if outage is not None and outage.ended_at is None else None
    if reading.uplink is None:
        if open_outage is not None:
            outage = replace(open_outage, ended_at=reading.at)
        return replace(ledger, outage=outage, baseline=None), None
    if open_outage is None or open_outage.uplink != reading.uplink:
        # A new stretch on a metered uplink: its counters so far are someone else's business.
        outage = Outage(reading.uplink, reading.at, None, 0)
        return replace(ledger, outage=outage, baseline=counter), None
    if counter is None:
        return replace(ledger, baseline=None), None
    base = ledger.baseline
    if base is None:
        added = 0
    elif (base.device, base.ifindex) == (counter.device, counter.ifindex) and counter.total >= base.total:
        added = counter.total - base.total
    else:
        # The device came back (a modem re-plugged, a hotspot re-joined): its counters started again at 0.
        added = counter.total
    month_bytes = dict(ledger.month_bytes)
    month_bytes[reading.uplink] = month_bytes.get(reading.uplink, 0) + added
    ledger = replace(
        ledger,
        month_bytes=month_bytes,
        outage=replace(open_outage, bytes=open_outage.bytes + added),
        baseline=counter,
    )
    if budget is None:
        return ledger, None
    passed = [t for t in thresholds if ledger.total * 100 >= t * budget and t > ledger.warned]
    if not passed:
        return ledger, None
    return replace(ledger, warned=max(passed)), BudgetWarning(max(passed), ledger.total, budget)


def month_of(at: float) -> str:
    return time.strftime("%Y-%m", time.localtime(at))


# -- the ledger on disk -------------------------------------------------------------------------------------


def ledger_to_json(ledger: Ledger) -> str:
    return json.dumps(asdict(ledger), indent=1, sort_keys=True) + "\n"


def ledger_from_json(text: str) -> Ledger:
    """ValueError (or KeyError, TypeError) for anything that is not a ledger this version wrote."""
    data = json.loads(text)
    outage = data["outage"]
    baseline = data["baseline"]
    return Ledger(
        str(data["month"]),
        {str(k): int(v) for k, v in data["month_bytes"].items()},
        Outage(str(outage["uplink"]), float(outage["started_at"]), outage["ended_at"], int(outage["bytes"]))
        if outage is not None
        else None,
        int(data["warned"]),
        Counter(str(baseline["device"]), int(baseline["ifindex"]), int(baseline["total"]))
        if baseline is not None
        else None,
    )


def state_directory() -> Path:
    # systemd's StateDirectory= sets this (/var/lib/nmfailover); by hand, the same place.
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/nmfailover").split(":")[0])


def load_ledger(path: Path, now: float) -> Ledger:
    try:
        return ledger_from_json(path.read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("metered budget: cannot read {} ({!r}); counting from 0", path, exc)
    return Ledger(month_of(now))


def save_ledger(path: Path, ledger: Ledger) -> None:
    """Replace the file so that a crash leaves the old ledger or the new one, never a part."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(ledger_to_json(ledger))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_counter(device: str, sys_class_net: Path = Path("/sys/class/net")) -> Counter | None:
    base = sys_class_net / device
    try:
        ifindex = int((base / "ifindex").read_text())
        received = int((base / "statistics" / "rx_bytes").read_text())
        sent = int((base / "statistics" / "tx_bytes").read_text())
    except (OSError, ValueError):
        return None
    return Counter(device, ifindex, received + sent)


# -- the daemon's side --------------------------------------------------------------------------------------


def _stretch(outage: Outage | None) -> tuple[str, float, float | None] | None:
    return None if outage is None else (outage.uplink, outage.started_at, outage.ended_at)


def metered_carrier(status: Status) -> tuple[str, str] | None:
    """(profile id, device) of the uplink carrying traffic if it is metered (as NetworkManager says, or
    marked by NMFAILOVER_METERED), else None."""
    uplink = status.carrying
    if uplink is not None and uplink.device and (uplink.metered in METERED or uplink.metered_marked):
        return uplink.profile, uplink.device
    return None


class BudgetKeeper:
    """Counts the metered uplinks' bytes for the running daemon: a supervised job and a switch listener."""

    def __init__(
        self,
        status: Callable[[], Status],
        budget: int | None,
        thresholds: tuple[int, ...],
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._status = status
        self._budget, self._thresholds = budget, thresholds
        self._path = path if path is not None else state_directory() / LEDGER_FILE
        self._clock = clock
        self.ledger = load_ledger(self._path, clock())
        self._saved, self._saved_at = self.ledger, clock()
        self._failing: str | None = None

    async def on_switch(self, _: object) -> None:
        """A switch listener: count what the old uplink carried up to now, before the listeners after it
        (the Switched signal) tell the switch."""
        self.sample()

    async def run(self, interval: float = SAMPLE_INTERVAL) -> None:
        """Sample until cancelled; the ledger is written whenever it changed, and once more at the end."""
        try:
            while True:
                self.sample()
                await asyncio.sleep(interval)
        finally:
            self._save(force=True)

    def sample(self) -> None:
        now = self._clock()
        carrier = metered_carrier(self._status())
        open_outage = (
            self.ledger.outage if self.ledger.outage and self.ledger.outage.ended_at is None else None
        )
        base = self.ledger.baseline
        if (
            open_outage is not None
            and base is not None
            and (carrier is None or carrier[0] != open_outage.uplink)
        ):
            # Traffic left it: its last bytes first, read from the device it was counted on.
            self._count(Reading(open_outage.uplink, read_counter(base.device), now, month_of(now)))
        uplink, device = carrier if carrier is not None else (None, None)
        self._count(Reading(uplink, read_counter(device) if device else None, now, month_of(now)))
        self._save()

    def _count(self, reading: Reading) -> None:
        self.ledger, warning = account(self.ledger, reading, self._budget, self._thresholds)
        if warning is not None:
            logger.warning("{}", warning)

    def _save(self, force: bool = False) -> None:
        ledger, saved = self.ledger, self._saved
        if ledger == saved:
            return
        turned = (ledger.month, ledger.warned, _stretch(ledger.outage)) != (
            saved.month,
            saved.warned,
            _stretch(saved.outage),
        )
        if not (force or turned or self._clock() - self._saved_at >= SAVE_INTERVAL):
            return
        try:
            save_ledger(self._path, self.ledger)
        except OSError as exc:
            problem = str(exc.strerror or exc)
            if problem != self._failing:
                logger.error("metered budget: cannot write {}: {}", self._path, problem)
            self._failing = problem
            return
        self._failing = None
        self._saved, self._saved_at = ledger, self._clock()

    def status(self) -> BudgetStatus:
        """The `metered_budget` object of Status()."""
        ledger, budget = self.ledger, self._budget
        outage = ledger.outage
        return BudgetStatus(
            month=ledger.month,
            month_bytes=ledger.total,
            month_bytes_by_uplink=dict(ledger.month_bytes),
            budget_bytes=budget,
            used_pct=round(ledger.total * 100 / budget, 1) if budget else None,
            warned_pct=ledger.warned,
            outage=None
            if outage is None
            else OutageStatus(
                uplink=outage.uplink,
                started_at=outage.started_at,
                ended_at=outage.ended_at,
                bytes=outage.bytes,
            ),
        )
