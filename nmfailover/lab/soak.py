"""Soak: the daemon against a real NetworkManager under random faults for N minutes.

    python -m nmfailover.lab.soak --minutes 5 [--settle MINUTES] [--seed N] [--json FILE]

Faults come from the lab (Upstream's blackhole, loss, refused and hung targets, portal, dead resolver, cut
cable) plus NetworkManager restarts and hot-unplugs (an uplink's device deleted, later built again). Each
fault is written down with its time; at the end every switch the daemon logged is held against them.
Passes (exit 0) when:
  - every switch has a cause: the uplink it left had a fault in place within SWITCH_WINDOW before it, or
    it moved back to an uplink ranked higher that had a fault before (a failback);
  - the daemon's log has no traceback, the daemon is still running and answers Status on its bus;
  - the daemon's RSS grew by at most RSS_LIMIT from the end of the warm-up (a tour of every fault kind,
    so that what a first use of each loads is in the baseline; --settle adds minutes of the random
    phase) to the end. Its bounded tables fill for a while under faults: in a 1-hour run RSS grew by
    1.4 MiB over the first 35 minutes after the tour and by 0.08 MiB over the last 30.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

from ..control import call_daemon
from .demo import DaemonProcess, daemon_env, wait_for
from .sandbox import CommandError, NMLab, Upstream, lab_available

# A detector needs a few probe rounds to call an uplink down; a fault healed this shortly before a switch
# away from its uplink still explains the switch.
SWITCH_WINDOW = 30.0
RSS_LIMIT = 1024 * 1024
HOLD_DOWN = "5"  # failbacks within the run, not 30 s after each heal
STEP_SECONDS = (4.0, 20.0)
WARM_UP_STEP = 5.0  # long enough for a failover, and for the failback after a heal
UNPLUGGED = "unplug"
NM_RESTART = "nm-restart"
HEAL = "heal"
# The random phase's actions on an uplink and how often each is drawn; a heal is drawn most, so that
# healthy stretches come between faults and failbacks happen.
ACTIONS: tuple[tuple[str, int], ...] = (
    (HEAL, 40),
    ("blackhole", 14),
    ("lossy", 12),
    ("cut_cable", 7),
    ("refuse", 5),
    ("hang", 5),
    ("portal", 4),
    ("break_dns", 4),
    (UNPLUGGED, 4),
    (NM_RESTART, 5),
)
# A dead resolver behind a live path moves name resolution, never traffic (engine/core.py).
NOT_A_SWITCH_CAUSE = frozenset({"break_dns"})
_SWITCH_RE = re.compile(r"-> switching to (\S+) ")
_READY_RE = re.compile(r"ready: traffic on (\S+) ")


@dataclass
class Fault:
    """One fault on one uplink (by role), from `start` to `end` (None: still in place); seconds since the
    epoch."""

    uplink: str
    kind: str
    start: float
    end: float | None = None


@dataclass(frozen=True)
class Switch:
    at: float
    from_uplink: str
    to_uplink: str
    line: str


def log_time(line: str) -> float:
    """Seconds since the epoch of a daemon log line (its local-time stamp has milliseconds)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def switches_in(log: str) -> list[Switch]:
    """The switches a daemon log tells, each with the uplink it left (the one the log said before)."""
    found: list[Switch] = []
    current = ""
    for line in log.splitlines():
        if (ready := _READY_RE.search(line)) is not None:
            current = ready.group(1)
        elif (switch := _SWITCH_RE.search(line)) is not None:
            found.append(Switch(log_time(line), current, switch.group(1), line))
            current = switch.group(1)
    return found


def unexplained(
    switches: Sequence[Switch], faults: Sequence[Fault], order: Sequence[str], window: float = SWITCH_WINDOW
) -> list[Switch]:
    """The switches no fault explains: see the module's docstring."""

    def faulted(uplink: str, since: float, until: float) -> bool:
        return any(
            f.uplink == uplink
            and f.kind not in NOT_A_SWITCH_CAUSE
            and f.start <= until
            and (f.end is None or f.end >= since)
            for f in faults
        )

    def failback(switch: Switch) -> bool:
        ranked_higher = switch.from_uplink in order and order.index(switch.to_uplink) < order.index(
            switch.from_uplink
        )
        return ranked_higher and faulted(switch.to_uplink, 0.0, switch.at)

    return [s for s in switches if not (faulted(s.from_uplink, s.at - window, s.at) or failback(s))]


def rss_growth(samples: Sequence[tuple[float, int]], baseline_at: float) -> int:
    """Bytes the RSS grew from the last sample at or before `baseline_at` to the last sample."""
    before = [rss for at, rss in samples if at <= baseline_at]
    if not before:
        raise ValueError("no RSS sample before the end of the warm-up")
    return samples[-1][1] - before[-1]


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def replug(lab: NMLab, up: Upstream) -> None:
    """Build a deleted uplink's veth pair again as the lab does; NetworkManager sees a new device."""
    wait_for(lambda: up.iface not in lab.nmcli("-g", "DEVICE", "device"), 10, f"{up.iface} gone from NM")
    lab.host("ip", "link", "add", up.iface, "type", "veth", "peer", "name", "gw", "netns", up.netns)
    for argv in (
        ["address", "add", f"{up.gateway4}/26", "dev", "gw"],
        ["address", "add", f"{up.gateway6}/64", "dev", "gw", "nodad"],
        ["link", "set", "gw", "up"],
    ):
        subprocess.run(["ip", "-n", up.netns, *argv], check=True, timeout=10)
    lab.host("ip", "link", "set", up.iface, "up")
    # An externally created veth stays unmanaged until told otherwise (see the lab recipe).
    wait_for(
        lambda: (
            lab.nmcli("device", "set", up.iface, "managed", "yes", check=False) == ""
            and up.iface in lab.nmcli("-g", "DEVICE", "device")
        ),
        10,
        f"{up.iface} managed again",
    )


@dataclass
class Soak:
    """The faults in place and the record of every one, over a lab and the daemon in it."""

    lab: NMLab
    rng: random.Random
    faults: list[Fault] = field(default_factory=list)
    in_place: dict[str, Fault] = field(default_factory=dict)  # by uplink
    counts: dict[str, int] = field(default_factory=dict)
    lab_errors: list[str] = field(default_factory=list)

    def _end(self, role: str) -> None:
        fault = self.in_place.pop(role, None)
        if fault is not None:
            fault.end = time.time()

    def _start(self, role: str, kind: str) -> None:
        # The new fault is written down before it is in place, the old one ended after it is gone: a
        # switch in between is explained by either.
        fault = Fault(role, kind, time.time())
        self.faults.append(fault)
        previous = self.in_place.get(role)
        self.in_place[role] = fault
        if previous is not None:
            previous.end = time.time()

    def act(self, kind: str, index: int) -> None:
        """Do `kind` to uplink `index` (or to NetworkManager); a step the lab fails at is counted and left
        out of the record (the soak is about the daemon, not the lab)."""
        try:
            self._act(kind, index)
        except (CommandError, TimeoutError, subprocess.SubprocessError) as exc:
            role = self.lab.profiles[index]
            fault = self.in_place.get(role)
            if fault is not None and fault.kind == kind and fault.end is None:
                fault.end = time.time()  # it was never in place, or not for long
                del self.in_place[role]
            self.lab_errors.append(f"{kind} {role}: {str(exc)[:300]}")
            print(f"soak: the lab failed at {kind} {role}: {str(exc)[:300]}", flush=True)

    def _act(self, kind: str, index: int) -> None:
        up, role = self.lab.upstreams[index], self.lab.profiles[index]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        unplugged = self.in_place.get(role) is not None and self.in_place[role].kind == UNPLUGGED
        if kind == NM_RESTART:
            self.lab.restart_nm()
            return
        if unplugged:
            # Nothing else happens to a device that is not there: the next action on it plugs it back.
            replug(self.lab, up)
            _connection_up(self.lab, role)
            self._end(role)
            return
        if kind == UNPLUGGED:
            self._start(role, kind)
            up.heal()  # so that the device built again later finds a healthy upstream behind it
            self.lab.host("ip", "link", "del", up.iface)
            return
        if kind == HEAL:
            up.heal()
            self._end(role)
            return
        self._start(role, kind)
        apply: Callable[[], None] = {
            # Not 100: nft's "numgen random mod 100 < 100" is out of its range (sandbox's lossy says 0..100).
            "lossy": lambda: up.lossy(self.rng.choice((20, 40, 60, 80, 95))),
        }.get(kind, getattr(up, kind))
        apply()

    def restartable(self) -> bool:
        """NetworkManager can be restarted and waited for: every device is there and has its carrier."""
        return not any(f.kind in (UNPLUGGED, "cut_cable") for f in self.in_place.values())

    def random_step(self) -> str:
        kinds, weights = zip(*ACTIONS, strict=True)
        while True:
            kind = self.rng.choices(kinds, weights)[0]
            if kind != NM_RESTART or self.restartable():
                break
        index = self.rng.randrange(len(self.lab.upstreams))
        self.act(kind, index)
        return f"{kind} {self.lab.profiles[index]}" if kind != NM_RESTART else kind


def _connection_up(lab: NMLab, profile: str) -> None:
    wait_for(
        lambda: (
            lab.nmcli("connection", "up", profile, check=False) is not None
            and profile in lab.nmcli("-g", "NAME", "connection", "show", "--active")
        ),
        30,
        f"{profile} active again",
        step=1,
    )


def _status_answers() -> bool:
    try:
        (text,) = asyncio.run(call_daemon("Status"))
    except Exception:  # noqa: BLE001 - any failure to answer is what this records
        return False
    return isinstance(text, str) and text.startswith("{")


# The warm-up: every kind of action once on each uplink, each fault healed, so that the baseline RSS has
# seen what a first use of each loads.
WARM_UP: tuple[tuple[str, int], ...] = (
    *(
        (action, index)
        for fault, _ in ACTIONS
        if fault not in (HEAL, NM_RESTART)
        for index in (0, 1)
        for action in (fault, HEAL)
    ),
    (NM_RESTART, 0),
)


def run(minutes: float, seed: int, out: Path | None, log_dir: Path, settle: float = 0.0) -> int:
    problem = lab_available()
    if problem is not None:
        print(f"soak: {problem}", file=sys.stderr)
        return 2
    rng = random.Random(seed)
    samples: list[tuple[float, int]] = []
    status_failures = 0
    with NMLab(2) as lab:
        log = log_dir / "soak-daemon.log"
        env = daemon_env(lab, failback_hold_down=HOLD_DOWN, log_level="INFO")
        daemon = DaemonProcess(lab, log, env)
        soak = Soak(lab, rng)
        started = time.monotonic()
        try:
            daemon.wait_log(r"ready: ")
            # The soak's own calls go to the lab's bus, where the daemon's control interface is.
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = lab.bus_address

            def step(what: str, pause: float) -> None:
                nonlocal status_failures
                time.sleep(pause)
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {daemon.proc.returncode}")
                samples.append((time.time(), rss_of(daemon.proc.pid)))
                status_failures += not _status_answers()
                elapsed = time.monotonic() - started
                print(f"soak {elapsed:7.1f} s  {what:<22} rss {samples[-1][1] / 2**20:.2f} MiB", flush=True)

            for kind, index in WARM_UP:
                soak.act(kind, index)
                step(f"warm-up {kind} {lab.profiles[index]}", WARM_UP_STEP)
            time.sleep(float(HOLD_DOWN) + 10)  # the failback after the tour
            samples.append((time.time(), rss_of(daemon.proc.pid)))
            baseline_at = samples[-1][0] + settle * 60
            warm_up_seconds = time.monotonic() - started
            soak.counts.clear()
            deadline = time.monotonic() + minutes * 60
            while time.monotonic() < deadline:
                step(soak.random_step(), rng.uniform(*STEP_SECONDS))
            for index, role in enumerate(lab.profiles):
                if role in soak.in_place:
                    soak.act(HEAL, index)
            time.sleep(float(HOLD_DOWN) + 10)
            samples.append((time.time(), rss_of(daemon.proc.pid)))
            status_failures += not _status_answers()
            alive = daemon.proc.poll() is None
            exit_code = daemon.stop() if alive else daemon.proc.returncode
        finally:
            daemon.kill()
    text = daemon.text()
    switches = switches_in(text)
    bad = unexplained(switches, soak.faults, lab.profiles)
    growth = rss_growth(samples, baseline_at)
    report = {
        "seed": seed,
        "minutes": minutes,
        "settle_minutes": settle,
        "warm_up_seconds": round(warm_up_seconds, 1),
        "actions": soak.counts,
        "switches": len(switches),
        "unexplained_switches": [s.line for s in bad],
        "tracebacks": text.count("Traceback"),
        "lab_errors": soak.lab_errors,
        "errors": len(re.findall(r" ERROR ", text)),
        "daemon_alive": alive,
        "exit_code": exit_code,
        "status_failures": status_failures,
        "rss_baseline_mib": round(next(r for a, r in reversed(samples) if a <= baseline_at) / 2**20, 2),
        "rss_end_mib": round(samples[-1][1] / 2**20, 2),
        "rss_max_mib": round(max(r for _, r in samples) / 2**20, 2),
        "rss_growth_kib": growth // 1024,
        # Seconds since the end of the warm-up, MiB: the trend, not only its ends.
        "rss_mib": [(round(at - baseline_at), round(rss / 2**20, 2)) for at, rss in samples],
        "faults_log": [asdict(f) for f in soak.faults],
    }
    passed = (
        not bad
        and report["tracebacks"] == 0
        and alive
        and exit_code == 0
        and status_failures == 0
        and growth <= RSS_LIMIT
    )
    report["passed"] = passed
    summary = {k: v for k, v in report.items() if k not in ("faults_log", "rss_mib")}
    print(json.dumps(summary, indent=2))
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    if not passed:
        print(f"soak failed; the daemon's log ends ({log}):", "".join(text.splitlines(True)[-150:]), sep="\n")
    return 0 if passed else 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmfailover.lab.soak", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="the random phase's length (after warm-up)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="minutes of the random phase before the RSS baseline (default: 0, at the end of the warm-up)",
    )
    parser.add_argument("--seed", type=int, default=None, help="the random faults' seed (printed)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and faults here")
    parser.add_argument("--log-dir", type=Path, default=Path("."), help="where the daemon's log goes")
    args = parser.parse_args(argv)
    if not 0 <= args.settle < args.minutes:
        parser.error("--settle must be 0 or more and shorter than --minutes")
    # A CI timeout sends SIGTERM, which by default ends Python without closing the lab: as
    # KeyboardInterrupt, the namespaces, NetworkManager and the daemon go with it.
    signal.signal(signal.SIGTERM, _interrupt)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"soak: seed {seed}, {args.minutes:g} minutes after the warm-up", flush=True)
    return run(args.minutes, seed, args.json, args.log_dir, args.settle)


if __name__ == "__main__":
    sys.exit(main())
