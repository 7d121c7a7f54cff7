"""Failover benchmark: nmfailover against the virtual-failover method and NetworkManager's connectivity check.

Everything runs in the sandbox (nmfailover/sandbox.py): a real NetworkManager on a private bus, two simulated
uplinks in network namespaces. Needs root; touches none of the machine's own interfaces, routes or resolver.

    python bench/failover.py [--runs 10] [--json out.json]

Prints one table and writes the raw runs as JSON (default bench/results/<date>.json). See README "Benchmarks".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmfailover.config import Settings
from nmfailover.demo import DaemonProcess, daemon_env
from nmfailover.nm import NetworkManagerClient
from nmfailover.sandbox import TARGET_ADDRESSES, NMLab, lab_available

SCENARIOS = ("blackhole", "refuse", "cable")
NMF, VF, NMC = "nmfailover", "virtual-failover", "nm-connectivity"
METHOD_TITLES = {NMF: "nmfailover (defaults)", VF: "virtual-failover method",
                 NMC: "NM connectivity check"}
# NetworkManager's own check at its defaults. The URI is an address, not a name: the sandbox's host namespace
# has no resolver, and a query to the machine's resolver address must not even be attempted from the lab.
NM_INTERVAL = 300.0
NM_TIMEOUT = 20.0  # fixed in NetworkManager 1.42
NM_CONNECTIVITY = ("[connectivity]\nenabled=true\nuri=http://203.0.113.10/generate_204\nresponse=\n"
                   f"interval={NM_INTERVAL:g}\n")
VF_PRIMARY_INTERVAL = 5.0
NMF_ACTIVE_INTERVAL = 2.0
FAILBACK_HOLD_DOWN = 10.0  # shortened from the default 30 s for the failback cycles only
DEFAULT_HOLD_DOWN = 30.0
POLL = 0.01
ECHO_ADDRESS, ECHO_PORT = "203.0.113.20", 7
FOOTPRINT_SECONDS = 180.0
BASELINE_SECONDS = 30.0
VF_TRAFFIC_SECONDS = 120.0
STATE_CHANGE = re.compile(r"device \((\w+)\): state change: activated -> (\w+)")


def now() -> float:
    return time.time()


def say(text: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {text}", flush=True)


# -- observing the lab ----------------------------------------------------------------------------------


class RouteWatch:
    """Polls the host namespace's IPv4 default route every `step` seconds in a thread; keeps the transitions."""

    def __init__(self, lab: NMLab, step: float = POLL) -> None:
        self.lab = lab
        self.step = step
        self.changes: list[tuple[float, str | None]] = []  # (when first seen, route device)
        self.last_seen = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                route = self.lab.default_route(4)
            except Exception:  # noqa: BLE001 - a failed poll is a missing sample, not a verdict
                route = "?"
            with self._lock:
                self.last_seen = now()
                if not self.changes or self.changes[-1][1] != route:
                    self.changes.append((self.last_seen, route))
            self._stop.wait(self.step)

    def wait(self, device: str, timeout: float) -> float | None:
        """When the route (last) became `device`, waiting up to `timeout`; None if it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.changes and self.changes[-1][1] == device:
                    return self.changes[-1][0]
            time.sleep(self.step / 2)
        return None

    def stop(self) -> RouteWatch:
        self._stop.set()
        self._thread.join(5)
        return self


@dataclass
class RouteStory:
    """What the default route did after a fault: when it first and when it finally became `device`."""

    first: float | None
    settled: float | None  # start of the stretch on `device` that lasted to the end of the watch
    no_route: float  # seconds without any IPv4 default route
    changes: int

    @staticmethod
    def of(watch: RouteWatch, since: float, device: str) -> RouteStory:
        after = [(t, r) for t, r in watch.changes if t >= since]
        first = next((t for t, r in after if r == device), None)
        settled = after[-1][0] if after and after[-1][1] == device else None
        ends = [t for t, _ in after[1:]] + [watch.last_seen]
        no_route = sum(end - t for (t, r), end in zip(after, ends) if r is None)
        return RouteStory(first, settled, no_route, len(after))


def nm_log_offset(lab: NMLab) -> int:
    return lab.nm_log.stat().st_size


def deactivations(lab: NMLab, offset: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """Devices NetworkManager moved away from `activated` since `offset` in its log, minus `exclude`."""
    with lab.nm_log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [f"{m[1]}->{m[2]}" for m in STATE_CHANGE.finditer(text) if m[1] not in exclude]


def log_time(line: str) -> float:
    """Epoch seconds of a daemon log line (loguru's local-time stamp with ms)."""
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def log_lines(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


def inject(lab: NMLab, scenario: str) -> float:
    """Apply the fault to the primary's upstream; returns the moment just before it (the clock starts)."""
    up = lab.upstreams[0]
    action: Callable[[], None] = {"blackhole": up.blackhole, "refuse": up.refuse, "cable": up.cut_cable}[scenario]
    started = now()
    action()
    return started


def nmfailover_env(lab: NMLab, **overrides: str) -> dict[str, str]:
    # daemon_env also sets DEBUG; the benchmark runs the daemon at its default INFO level.
    env = daemon_env(lab, **overrides)
    if "log_level" not in overrides:
        env.pop("NMFAILOVER_LOG_LEVEL", None)
    # Its crash-surviving state belongs to this sandbox, not to the machine's /run/nmfailover.
    env["RUNTIME_DIRECTORY"] = str(lab.workdir / "nmfailover-run")
    return env


@contextlib.contextmanager
def daemon_in(lab: NMLab, log: Path, **overrides: str) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(lab, log, nmfailover_env(lab, **overrides))
    try:
        daemon.wait_log(r"ready: traffic on primary", timeout=30)
        yield daemon
    finally:
        daemon.kill()


class VirtualFailover:
    """bench/alt_virtual_failover.py in the lab's host namespace, its timestamped events collected."""

    def __init__(self, lab: NMLab) -> None:
        argv = [sys.executable, str(ROOT / "bench" / "alt_virtual_failover.py"), "--primary", "wana",
                "--backup", "wanb"]
        for i, address in enumerate(TARGET_ADDRESSES, 1):
            argv += ["--target", f"http://target{i}.test/generate_204", "--resolve", f"target{i}.test:80:{address}"]
        self.proc = lab.popen_host(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def event(self, words: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                stamp, _, rest = line.partition(" ")
                if rest.startswith(words):
                    return float(stamp)
            if self.proc.poll() is not None:
                raise RuntimeError("alt_virtual_failover exited: " + "\n".join(self.lines[-10:]))
            time.sleep(0.02)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def nm_connectivity(lab: NMLab, device: str) -> str:
    return lab.nmcli("-g", "GENERAL.IP4-CONNECTIVITY", "device", "show", device).strip()


def wait_nm_full(lab: NMLab, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(nm_connectivity(lab, d).startswith("4") for d in ("wana", "wanb")):
            return
        time.sleep(0.2)
    raise TimeoutError("NetworkManager's connectivity check never reported full on both uplinks")


def trigger_nm_check(lab: NMLab) -> subprocess.Popen[str]:
    return lab.popen_host(["nmcli", "networking", "connectivity", "check"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


# -- one failover run per method ----------------------------------------------------------------------------


def run_nmfailover(scenario: str, workdir: Path) -> dict[str, Any]:
    with NMLab(2) as lab, daemon_in(lab, workdir / "nmfailover.log") as daemon:
        phase = random.uniform(0, NMF_ACTIVE_INTERVAL)
        time.sleep(phase)
        watch = RouteWatch(lab)
        offset = nm_log_offset(lab)
        t0 = inject(lab, scenario)
        reached = watch.wait("wanb", 30)
        time.sleep(1.0)  # observe that it stays
        watch.stop()
        text = daemon.text()
        dead = deactivations(lab, offset, exclude=("wana",) if scenario == "cable" else ())
    story = RouteStory.of(watch, t0, "wanb")
    decisions = log_lines(text, r"-> switching to backup")
    decided = log_time(decisions[0]) if decisions else None
    return {
        "phase": phase, "fault_at": t0, "reached": reached, "failover": _minus(story.settled, t0),
        "first": _minus(story.first, t0), "decision": _minus(decided, t0),
        "actuation": _minus(story.settled, decided), "no_route": story.no_route,
        "route_changes": story.changes, "deactivations": dead, "switches": len(decisions),
    }


def run_virtual_failover(scenario: str, workdir: Path) -> dict[str, Any]:
    with NMLab(2) as lab:
        vf = VirtualFailover(lab)
        try:
            if vf.event("ready", 30) is None:
                raise RuntimeError("alt_virtual_failover never got ready: " + "\n".join(vf.lines))
            phase = random.uniform(0, VF_PRIMARY_INTERVAL)
            time.sleep(phase)
            watch = RouteWatch(lab)
            offset = nm_log_offset(lab)
            t0 = inject(lab, scenario)
            reached = watch.wait("wanb", 40)
            # Its switch restarts both links; the route is only final once that is over.
            switched = vf.event("switched to backup", 20)
            time.sleep(1.5)
            watch.stop()
            decided = vf.event("switching to backup", 0)
        finally:
            vf.stop()
        dead = deactivations(lab, offset, exclude=("wana",) if scenario == "cable" else ())
        on_disk = lab.nmcli("-g", "ipv4.route-metric", "connection", "show", "primary").strip()
    story = RouteStory.of(watch, t0, "wanb")
    return {
        "phase": phase, "fault_at": t0, "reached": reached, "failover": _minus(story.settled, t0),
        "first": _minus(story.first, t0), "decision": _minus(decided, t0),
        "actuation": _minus(story.settled, decided), "switch_done": _minus(switched, t0),
        "no_route": story.no_route, "route_changes": story.changes, "deactivations": dead,
        "primary_metric_on_disk_after": on_disk,
    }


def run_nm_check(scenario: str, triggered: bool, timeout: float = 60) -> dict[str, Any]:
    """NetworkManager's own check. `triggered`: ask for a check right after the fault (measures the check's
    own latency; the wait for the next periodic check is added from the interval)."""
    with NMLab(2, extra_nm_config=NM_CONNECTIVITY) as lab:
        wait_nm_full(lab)
        phase = random.uniform(0, NM_INTERVAL if not triggered and scenario != "cable" else 2.0)
        if not triggered and scenario != "cable":
            say(f"  NM connectivity check, periodic: fault in {phase:.0f} s, then up to {NM_INTERVAL:g} + "
                f"{NM_TIMEOUT:g} s for the next check")
        time.sleep(phase)
        watch = RouteWatch(lab, step=POLL if timeout <= 60 else 0.1)
        offset = nm_log_offset(lab)
        t0 = inject(lab, scenario)
        check = trigger_nm_check(lab) if triggered else None
        reached = watch.wait("wanb", timeout)
        time.sleep(1.0)
        watch.stop()
        if check is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                check.wait(30)
        dead = deactivations(lab, offset, exclude=("wana",) if scenario == "cable" else ())
        routes = lab.default_routes(4)
    story = RouteStory.of(watch, t0, "wanb")
    return {
        "phase": phase, "fault_at": t0, "triggered": triggered, "reached": reached,
        "failover": _minus(story.settled, t0), "first": _minus(story.first, t0),
        "no_route": story.no_route, "route_changes": story.changes, "deactivations": dead,
        "routes_after": routes,
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# -- failback, actuation, disruption, footprint ------------------------------------------------------------------


def run_failback(workdir: Path, hold_down: float) -> dict[str, Any]:
    with NMLab(2) as lab, daemon_in(lab, workdir / "failback.log",
                                     failback_hold_down=f"{hold_down:g}") as daemon:
        time.sleep(random.uniform(0, NMF_ACTIVE_INTERVAL))
        lab.upstreams[0].blackhole()
        if daemon.wait_route("wanb", timeout=30) is None:
            raise RuntimeError("no failover")
        time.sleep(random.uniform(0, NMF_ACTIVE_INTERVAL))
        watch = RouteWatch(lab)
        healed = now()
        lab.upstreams[0].heal()
        back = watch.wait("wana", hold_down + 30)
        watch.stop()
        text = daemon.text()
    story = RouteStory.of(watch, healed, "wana")
    ups = [log_time(line) for line in log_lines(text, r"primary \(wana\) up: ") if log_time(line) >= healed - 0.01]
    up_at = ups[0] if ups else None
    return {
        "hold_down": hold_down, "healed_at": healed, "reached": back, "failback": _minus(story.settled, healed),
        "primary_up": _minus(up_at, healed), "held": _minus(story.settled, up_at),
        "honoured": story.settled is not None and up_at is not None and story.settled - up_at >= hold_down,
        "switches": len(log_lines(text, r"-> switching to")),
    }


def _poll_route(lab: NMLab, device: str, deadline: float) -> float:
    while lab.default_route(4) != device:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the default route never moved to {device}")
    return time.perf_counter()


async def _reapply_latency(lab: NMLab, switches: int) -> list[dict[str, float]]:
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = lab.bus_address
    client = NetworkManagerClient()
    await client.connect()
    try:
        profiles = await client.resolve(["primary", "backup"])
        devices = {}
        for profile in profiles:
            link = await client.link_state(profile.uuid)
            assert link.device is not None and link.interface is not None
            devices[link.interface] = link.device
        out = []
        current = "wana"
        for _ in range(switches):
            new = "wanb" if current == "wana" else "wana"
            started = time.perf_counter()
            # nmfailover's order: promote the new uplink first, then demote the old one.
            await client.set_route_metrics(devices[new], 100, 100)
            promoted = time.perf_counter()
            await client.set_route_metrics(devices[current], 200, 200)
            demoted = time.perf_counter()
            # Blocking on purpose: nothing else runs on this loop, and a sleep-free poll is the finest timer.
            in_kernel = _poll_route(lab, new, deadline=started + 10)
            out.append({"reapply": promoted - started, "reapply2": demoted - promoted,
                        "kernel": in_kernel - started})
            current = new
            await asyncio.sleep(0.2)
        return out
    finally:
        await client.close()


def run_actuation(switches: int) -> list[dict[str, float]]:
    with NMLab(2) as lab:
        return asyncio.run(_reapply_latency(lab, switches))


_ECHO_SERVER = r"""
import socket, sys, threading
def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), reuse_port=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""

# Sends one byte every 100 ms over a socket bound to a device until stdin closes; reports the echoes' gaps.
_ECHO_CLIENT = r"""
import json, socket, sys, threading, time
dev, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.settimeout(5)
s.connect((host, port))
s.settimeout(None)
stop, got, error, sent = threading.Event(), [], [None], [0]
def reader():
    try:
        while data := s.recv(4096):
            got.extend([time.time()] * len(data))
        error[0] = error[0] or "closed by peer"
    except OSError as e:
        error[0] = error[0] or f"recv: {e}"
threading.Thread(target=reader, daemon=True).start()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
started = time.time()
print("connected", flush=True)
while not stop.is_set():
    try:
        s.send(b"x")
        sent[0] += 1
    except OSError as e:
        error[0] = error[0] or f"send: {e}"
        break
    stop.wait(0.1)
drain = time.time() + 5
while len(got) < sent[0] and time.time() < drain and error[0] is None:
    time.sleep(0.05)
stamps = [started] + got
gaps = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"sent": sent[0], "echoed": len(got), "error": error[0], "max_gap": max(gaps, default=None)}))
"""


def run_disruption(method: str, workdir: Path) -> dict[str, Any]:
    """A switch caused by HTTP answers slower than every tool's timeout, which leaves plain TCP untouched;
    a byte every 100 ms on one connection over each uplink, across the switch."""
    config = NM_CONNECTIVITY if method == NMC else ""
    with NMLab(2, extra_nm_config=config) as lab:
        servers = []
        for up in lab.upstreams:
            subprocess.run(["ip", "-n", up.netns, "address", "add", f"{ECHO_ADDRESS}/32", "dev", "lo"], check=True)
            servers.append(subprocess.Popen(["ip", "netns", "exec", up.netns, sys.executable, "-c", _ECHO_SERVER,
                                             ECHO_ADDRESS, str(ECHO_PORT)]))
        try:
            time.sleep(0.5)
            tool: Any = None
            if method == NMF:
                tool = contextlib.ExitStack()
                daemon = tool.enter_context(daemon_in(lab, workdir / "disruption.log"))
            elif method == VF:
                tool = VirtualFailover(lab)
                if tool.event("ready", 30) is None:
                    raise RuntimeError("alt_virtual_failover never got ready")
            else:
                wait_nm_full(lab)
            clients = {dev: lab.popen_host([sys.executable, "-c", _ECHO_CLIENT, dev, ECHO_ADDRESS, str(ECHO_PORT)],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                       for dev in ("wana", "wanb")}
            for client in clients.values():
                assert client.stdout is not None
                if client.stdout.readline().strip() != "connected":
                    raise RuntimeError("echo client could not connect")
            time.sleep(1.0)
            watch = RouteWatch(lab)
            offset = nm_log_offset(lab)
            t0 = now()
            lab.upstreams[0].set_http_mode(f"slow:{NM_TIMEOUT + 10:g}")
            if method == NMC:
                trigger_nm_check(lab)
            reached = watch.wait("wanb", 40)
            if method == VF:
                tool.event("switched to backup", 20)
            time.sleep(2.0)
            watch.stop()
            results = {}
            for dev, client in clients.items():
                out, _ = client.communicate("", timeout=20)
                results[dev] = json.loads(out.strip().splitlines()[-1])
            switches = (len(log_lines(daemon.text(), r"-> switching to")) if method == NMF else None)
        finally:
            if isinstance(tool, VirtualFailover):
                tool.stop()
            elif isinstance(tool, contextlib.ExitStack):
                tool.close()
            for server in servers:
                server.kill()
                server.wait(5)
        dead = deactivations(lab, offset)
    story = RouteStory.of(watch, t0, "wanb")
    return {
        "reached": reached, "failover": _minus(story.settled, t0), "no_route": story.no_route,
        "deactivations": dead, "switches": switches,
        "connections": {dev: {**r, "survived": r["error"] is None and r["echoed"] == r["sent"]}
                        for dev, r in results.items()},
    }


def _counters(lab: NMLab, dev: str) -> int:
    return sum(int(lab.host("cat", f"/sys/class/net/{dev}/statistics/{c}_bytes").stdout) for c in ("rx", "tx"))


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _traffic(lab: NMLab, seconds: float) -> dict[str, float]:
    """Bytes per second on each uplink's host-side device over `seconds`."""
    before = {dev: _counters(lab, dev) for dev in ("wana", "wanb")}
    time.sleep(seconds)
    return {dev: (_counters(lab, dev) - before[dev]) / seconds for dev in ("wana", "wanb")}


def run_footprint(workdir: Path, seconds: float) -> dict[str, Any]:
    # The daemon's own defaults, so the table says what was measured even after they change.
    fields = Settings.model_fields
    out: dict[str, Any] = {"seconds": seconds, "intervals": {"wana": fields["active_interval"].default,
                                                             "wanb": fields["standby_interval"].default}}
    with NMLab(2) as lab:
        # The lab's own chatter (IPv6 router solicitations and the like) is not the daemon's.
        out["baseline_bytes_per_s"] = _traffic(lab, min(BASELINE_SECONDS, seconds))
        with daemon_in(lab, workdir / "footprint.log") as daemon:
            pid = daemon.proc.pid
            cpu0, start = _proc_cpu(pid), time.monotonic()
            before = {dev: _counters(lab, dev) for dev in ("wana", "wanb")}
            requests0 = [up.http_requests() for up in lab.upstreams]
            rss = []
            while time.monotonic() - start < seconds:
                rss.append(_rss_kib(pid))
                time.sleep(1.0)
            elapsed = time.monotonic() - start
            cpu = _proc_cpu(pid) - cpu0
            after = {dev: _counters(lab, dev) for dev in ("wana", "wanb")}
            requests = [up.http_requests() - r for up, r in zip(lab.upstreams, requests0)]
        out.update({
            "rss_kib_median": statistics.median(rss), "rss_kib_max": max(rss), "rss_kib_samples": rss,
            "cpu_seconds": cpu, "cpu_percent": 100 * cpu / elapsed, "elapsed": elapsed,
            "bytes_per_s": {dev: (after[dev] - before[dev]) / elapsed for dev in after},
            "http_requests": dict(zip(("wana", "wanb"), requests)),
        })
    with NMLab(2) as lab:
        vf = VirtualFailover(lab)
        try:
            vf.event("ready", 30)
            out["virtual_failover_bytes_per_s"] = _traffic(lab, min(VF_TRAFFIC_SECONDS, seconds))
        finally:
            vf.stop()
    with NMLab(2, extra_nm_config=NM_CONNECTIVITY) as lab:
        wait_nm_full(lab)
        time.sleep(1.0)
        before = {dev: _counters(lab, dev) for dev in ("wana", "wanb")}
        checks = 3
        for _ in range(checks):
            trigger_nm_check(lab).wait(30)
        out["nm_check_bytes_per_check"] = {dev: (_counters(lab, dev) - before[dev]) / checks for dev in before}
    return out


# -- statistics and the table -------------------------------------------------------------------------------


def quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    # p90 by the nearest-rank method: with 10 runs it is the 9th, never an interpolation past the data.
    p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]
    return {"median": statistics.median(ordered), "p90": p90, "worst": ordered[-1], "n": len(ordered)}


def derived_nm(latency: float) -> dict[str, float]:
    """Detection when the fault lands at a uniformly random moment of NM's check period: U(0, interval) + L."""
    return {"median": NM_INTERVAL * 0.5 + latency, "p90": NM_INTERVAL * 0.9 + latency,
            "worst": NM_INTERVAL + latency, "n": 0}


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


@dataclass
class Table:
    lines: list[str] = field(default_factory=list)

    def title(self, text: str) -> None:
        self.lines.append(f"| **{text}** | | | | |")

    def row(self, label: str, q: dict[str, float] | None, note: str = "") -> None:
        if q is None:
            self.lines.append(f"| {label} | - | - | - | {note} |")
            return
        self.lines.append(f"| {label} | {fmt(q['median'])} | {fmt(q['p90'])} | {fmt(q['worst'])} | {note} |")

    def ratio(self, label: str, a: dict[str, float] | None, b: dict[str, float] | None) -> None:
        if a is None or b is None:
            return
        r = [a[k] / b[k] if b[k] else float("nan") for k in ("median", "p90", "worst")]
        self.lines.append(f"| {label} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.3f} | |" if min(r) < 0.01
                          else f"| {label} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} | |")

    def text(self) -> str:
        head = ["| scenario / method | median | p90 | worst | notes |", "| --- | --- | --- | --- | --- |"]
        return "\n".join(head + self.lines)


def machine() -> dict[str, Any]:
    nm = subprocess.run(["NetworkManager", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "networkmanager": nm,
            "python": platform.python_version()}


class LoadMeter:
    """Whole-machine CPU busy share over the run (other work on the machine skews timings)."""

    def __init__(self) -> None:
        self.start = self._read()
        self.load_start = os.getloadavg()

    @staticmethod
    def _read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values), idle

    def summary(self) -> dict[str, Any]:
        total, idle = self._read()
        busy = 1 - (idle - self.start[1]) / max(1, total - self.start[0])
        return {"cpu_busy_percent": round(100 * busy, 1), "loadavg_start": self.load_start,
                "loadavg_end": os.getloadavg()}


def summarise(results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    t = Table()
    summary: dict[str, Any] = {}
    fo = results.get("failover", {})
    trig = results.get("nm_triggered", {})
    periodic = results.get("nm_periodic")
    for scenario, title in (("blackhole", "Failover: silent upstream death (blackhole)"),
                            ("refuse", "Failover: hard failure (connection refused)"),
                            ("cable", "Failover: pulled cable")):
        runs = fo.get(scenario, {})
        if not runs and not trig.get(scenario):
            continue
        t.title(title)
        q = {m: quantiles([r["failover"] for r in runs.get(m, []) if r["failover"] is not None])
             for m in (NMF, VF, NMC)}
        failed = {m: sum(r["failover"] is None for r in runs.get(m, [])) for m in (NMF, VF, NMC)}
        if scenario != "cable" and trig.get(scenario):
            lat = statistics.median(r["failover"] for r in trig[scenario] if r["failover"] is not None)
            q[NMC] = derived_nm(lat)
            note = (f"derived: U(0, {NM_INTERVAL:g} s) wait for the next check + {fmt(lat)} measured from fault "
                    f"to route with a check started at the fault ({len(trig[scenario])} runs)")
            if scenario == "blackhole" and periodic and periodic.get("failover") is not None:
                note += (f"; 1 unprompted run: {fmt(periodic['failover'])} with the fault "
                         f"{periodic['phase']:.0f} s after a check")
        else:
            note = ""
        for m in (NMF, VF, NMC):
            extra = f"{q[m]['n']} runs" if q[m] and q[m]["n"] else ""
            if failed[m]:
                extra += f"; {failed[m]} runs never failed over"
            dead = sum(len(r.get("deactivations", [])) for r in runs.get(m, []))
            if runs.get(m):
                extra += f"; link deactivations caused: {dead}"
            t.row(METHOD_TITLES[m], q[m], note if m == NMC and note else extra)
        t.ratio("ratio nmfailover / virtual-failover", q[NMF], q[VF])
        t.ratio("ratio nmfailover / NM connectivity check", q[NMF], q[NMC])
        summary[scenario] = q
    fb = results.get("failback", [])
    fb30 = results.get("failback_default", [])
    if fb or fb30:
        t.title("Failback after heal (nmfailover; hold-down must be served after the primary is up again)")
        for runs, hold in ((fb, FAILBACK_HOLD_DOWN), (fb30, DEFAULT_HOLD_DOWN)):
            if not runs:
                continue
            q = quantiles([r["failback"] for r in runs if r["failback"] is not None])
            held = quantiles([r["held"] for r in runs if r["held"] is not None])
            ok = sum(r["honoured"] for r in runs)
            t.row(f"heal -> route on primary, hold-down {hold:g} s", q,
                  f"{ok}/{len(runs)} honoured the hold-down; primary up -> failback min "
                  f"{fmt(min((r['held'] for r in runs if r['held'] is not None), default=None))}, median "
                  f"{fmt(held['median'] if held else None)}")
            summary[f"failback_{hold:g}"] = {"time": q, "honoured": ok, "runs": len(runs)}
    act = results.get("actuation", [])
    nmf_runs = [r for s in SCENARIOS for r in fo.get(s, {}).get(NMF, []) if r.get("actuation") is not None]
    if act or nmf_runs:
        t.title("Switch actuation")
        if nmf_runs:
            q = quantiles([r["actuation"] for r in nmf_runs])
            t.row("nmfailover: decision (log) -> route in kernel", q,
                  f"{len(nmf_runs)} switches of the failover runs; log has ms stamps, route polled every "
                  f"{POLL * 1000:.0f} ms")
            summary["actuation_log"] = q
        vf_runs = [r for s in SCENARIOS for r in fo.get(s, {}).get(VF, []) if r.get("actuation") is not None]
        if vf_runs:
            q = quantiles([r["actuation"] for r in vf_runs])
            t.row("virtual-failover: decision -> route final", q, "modify + down/up of every link")
            summary["actuation_vf"] = q
        if act:
            t.row("one Reapply call (GetAppliedConnection + Reapply)", quantiles([a["reapply"] for a in act]),
                  f"{len(act)} switches measured directly with NetworkManagerClient.set_route_metrics")
            t.row("switch: 2 Reapply calls -> route in kernel", quantiles([a["kernel"] for a in act]), "")
            summary["reapply"] = quantiles([a["reapply"] for a in act])
    dis = results.get("disruption", {})
    if dis:
        t.title("Disruption: TCP connections (a byte every 100 ms) across a failover")
        for m in (NMF, VF, NMC):
            runs = dis.get(m, [])
            if not runs:
                continue
            parts = []
            for dev, name in (("wana", "over primary"), ("wanb", "over backup")):
                alive = sum(r["connections"][dev]["survived"] for r in runs)
                gap = max(r["connections"][dev]["max_gap"] or 0 for r in runs)
                parts.append(f"{name}: survived {alive}/{len(runs)}, max gap {fmt(gap)}")
            dead = [len(r["deactivations"]) for r in runs]
            no_route = max(r["no_route"] for r in runs)
            parts.append(f"link deactivations per switch: {max(dead)}; without any default route: {fmt(no_route)}")
            t.lines.append(f"| {METHOD_TITLES[m]} | | | | {'; '.join(parts)} |")
        summary["disruption"] = dis
    fp = results.get("footprint")
    if fp:
        t.title(f"Footprint (nmfailover at defaults, {fp['elapsed'] / 60:.0f} min)")
        base = fp["baseline_bytes_per_s"]

        def day(rate: float, dev: str) -> str:
            net = max(0.0, rate - base[dev])
            return f"{net * 3600 / 1024:.0f} KiB/h = {net * 86400 / 1024 / 1024:.1f} MiB/day"

        t.lines.append(f"| memory (VmRSS) | {fp['rss_kib_median'] / 1024:.1f} MiB | | "
                       f"{fp['rss_kib_max'] / 1024:.1f} MiB | median and max of {len(fp['rss_kib_samples'])} samples |")
        t.lines.append(f"| CPU (utime+stime) | {fp['cpu_percent']:.2f} % | | | {fp['cpu_seconds']:.1f} s of CPU in "
                       f"{fp['elapsed']:.0f} s |")
        intervals = fp.get("intervals", {})
        for dev, role in (("wana", "primary"), ("wanb", "backup")):
            every = f" (rounds every {intervals[dev]:g} s)" if dev in intervals else ""
            t.lines.append(f"| probe traffic, {role}{every} | {day(fp['bytes_per_s'][dev], dev)} "
                           f"| | | {fp['http_requests'][dev]} HTTP requests; lab background subtracted |")
        vfr = fp.get("virtual_failover_bytes_per_s")
        if vfr:
            t.lines.append(f"| virtual-failover method, primary / backup | {day(vfr['wana'], 'wana')} / "
                           f"{day(vfr['wanb'], 'wanb')} | | | checks every 5 / 10 s |")
        nmc = fp.get("nm_check_bytes_per_check")
        if nmc:
            per_day = {d: nmc[d] * 86400 / NM_INTERVAL / 1024 / 1024 for d in nmc}
            t.lines.append(f"| NM connectivity check, per uplink | {per_day['wana']:.2f} MiB/day | | | "
                           f"{nmc['wana']:.0f} bytes per check, one check per {NM_INTERVAL:g} s |")
        summary["footprint"] = {k: v for k, v in fp.items() if k != "rss_kib_samples"}
    return t.text(), summary


# -- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="runs per scenario and method (default 10)")
    parser.add_argument("--json", type=Path, help="raw runs (default bench/results/<date>.json)")
    parser.add_argument("--only", default="failover,nm,failback,actuation,disruption,footprint",
                        help="comma-separated parts to run (default: all)")
    parser.add_argument("--nm-triggered-runs", type=int, default=3)
    parser.add_argument("--footprint-seconds", type=float, default=FOOTPRINT_SECONDS)
    parser.add_argument("--table-from", type=Path, metavar="JSON", help="only print the table of an earlier run")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        earlier = json.loads(args.table_from.read_text())
        print(earlier["header"] + "\n\n" + summarise(earlier)[0])
        return 0
    problem = lab_available()
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    parts = set(args.only.split(","))
    today = dt.date.today().isoformat()
    out_path = args.json or ROOT / "bench" / "results" / f"{today}.json"
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"nmfo-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    meter = LoadMeter()
    began = time.monotonic()
    results: dict[str, Any] = {"date": today, "machine": machine(), "runs_per_scenario": args.runs,
                               "settings": {"nmfailover": "defaults (only UPLINKS, PROBE_URLS, ENV_FILE set); "
                                            f"failback cycles with FAILBACK_HOLD_DOWN={FAILBACK_HOLD_DOWN:g}",
                                            "nm_connectivity": NM_CONNECTIVITY}}
    errors: list[str] = []
    background: list[threading.Thread] = []

    def in_background(name: str, job: Callable[[], Any]) -> None:
        def work() -> None:
            try:
                results[name] = job()
                say(f"background part {name} done")
            except Exception as exc:  # noqa: BLE001 - report and go on with the other parts
                errors.append(f"{name}: {exc!r}")
        thread = threading.Thread(target=work, name=name, daemon=True)
        thread.start()
        background.append(thread)

    # The long, mostly idle parts run alongside the timed runs; their figures do not depend on timing.
    if "nm" in parts:
        in_background("nm_periodic", lambda: run_nm_check("blackhole", triggered=False,
                                                          timeout=NM_INTERVAL + NM_TIMEOUT + 30))
    if "footprint" in parts:
        def footprint_then_default_failback() -> dict[str, Any]:
            fp = run_footprint(workdir, args.footprint_seconds)
            if "failback" in parts:
                results["failback_default"] = [run_failback(workdir, DEFAULT_HOLD_DOWN) for _ in range(3)]
            return fp
        in_background("footprint", footprint_then_default_failback)

    def attempt(label: str, job: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return job()
        except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others
            errors.append(f"{label}: {exc!r}")
            say(f"  {label} FAILED: {exc!r}")
            return None

    if "actuation" in parts:
        say("actuation: Reapply latency measured directly")
        results["actuation"] = run_actuation(20)
    if "failover" in parts:
        fo: dict[str, dict[str, list[dict[str, Any]]]] = {s: {NMF: [], VF: [], NMC: []} for s in SCENARIOS}
        results["failover"] = fo
        for i in range(args.runs):
            for scenario in SCENARIOS:
                jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                    (NMF, lambda s=scenario: run_nmfailover(s, workdir)),  # type: ignore[misc]
                    (VF, lambda s=scenario: run_virtual_failover(s, workdir)),  # type: ignore[misc]
                ]
                if scenario == "cable":  # NM reacts to carrier itself; no check period involved
                    jobs.append((NMC, lambda: run_nm_check("cable", triggered=False)))
                random.shuffle(jobs)  # no method always runs first after another one's teardown
                for method, job in jobs:
                    run = attempt(f"{scenario}/{method}/{i}", job)
                    if run is not None:
                        fo[scenario][method].append(run)
                        say(f"run {i + 1}/{args.runs} {scenario:9} {method:17} failover {fmt(run['failover'])}")
    if "nm" in parts:
        results["nm_triggered"] = {}
        for scenario in ("blackhole", "refuse"):
            runs = []
            for i in range(args.nm_triggered_runs):
                run = attempt(f"nm-triggered/{scenario}/{i}", lambda s=scenario: run_nm_check(s, triggered=True))  # type: ignore[misc]
                if run is not None:
                    runs.append(run)
                    say(f"NM check started at the fault, {scenario}: {fmt(run['failover'])}")
            results["nm_triggered"][scenario] = runs
    if "failback" in parts:
        fb = []
        for i in range(args.runs):
            run = attempt(f"failback/{i}", lambda: run_failback(workdir, FAILBACK_HOLD_DOWN))
            if run is not None:
                fb.append(run)
                say(f"failback {i + 1}/{args.runs}: {fmt(run['failback'])} after heal, {fmt(run['held'])} "
                    f"after the primary was up again")
        results["failback"] = fb
    if "disruption" in parts:
        dis: dict[str, list[dict[str, Any]]] = {NMF: [], VF: [], NMC: []}
        for i in range(max(3, args.runs // 3)):
            for method in (NMF, VF, NMC):
                run = attempt(f"disruption/{method}/{i}", lambda m=method: run_disruption(m, workdir))  # type: ignore[misc]
                if run is not None:
                    dis[method].append(run)
                    say(f"disruption {method}: " + ", ".join(
                        f"{d} survived={c['survived']} gap={fmt(c['max_gap'])}" for d, c in run["connections"].items()))
        results["disruption"] = dis
    for thread in background:
        say(f"waiting for background part {thread.name}")
        thread.join(NM_INTERVAL + 600)
    results["load"] = meter.summary()
    results["elapsed_s"] = time.monotonic() - began
    results["errors"] = errors
    table, summary = summarise(results)
    results["summary"] = summary
    m = results["machine"]
    header = (f"nmfailover benchmark, {today}; {m['nproc']} CPUs, Linux {m['kernel']}, NetworkManager "
              f"{m['networkmanager']}; whole-machine CPU busy {results['load']['cpu_busy_percent']} % during the "
              f"run; {results['elapsed_s'] / 60:.0f} min")
    print("\n" + header + "\n\n" + table)
    if errors:
        print("\nerrors:\n  " + "\n  ".join(errors))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**results, "table": table, "header": header}, indent=1, default=str) + "\n")
    print(f"\nraw runs: {out_path}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
