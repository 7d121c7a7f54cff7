"""Disruption: what a failover does to open TCP connections, per method.

The switch is caused by probe targets answering slower than every method's timeout, which leaves plain TCP
alone; one connection over each uplink to an echo server sends a byte every 100 ms across the switch.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    METHODS,
    NM_CONNECTIVITY,
    NM_TIMEOUT,
    NMC,
    NMF,
    VF,
    Attempts,
    Results,
    Run,
    fmt,
    minus,
    now,
    say,
)
from bench.measure import RouteStory, RouteWatch, deactivations, log_lines, nm_log_offset
from bench.methods import VirtualFailover, daemon_in, trigger_nm_check, wait_nm_full
from nmfailover.lab.sandbox import NMLab

ECHO_ADDRESS, ECHO_PORT = "203.0.113.20", 7

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
print(json.dumps({"sent": sent[0], "echoed": len(got), "error": error[0],
                  "max_gap": max(gaps, default=None)}))
"""


def _echo_servers(lab: NMLab) -> list[subprocess.Popen[bytes]]:
    """The same echo address behind each uplink, so either route reaches it."""
    servers = []
    for up in lab.upstreams:
        address = f"{ECHO_ADDRESS}/32"
        subprocess.run(["ip", "-n", up.netns, "address", "add", address, "dev", "lo"], check=True)
        argv = [
            "ip",
            "netns",
            "exec",
            up.netns,
            sys.executable,
            "-c",
            _ECHO_SERVER,
            ECHO_ADDRESS,
            str(ECHO_PORT),
        ]
        servers.append(subprocess.Popen(argv))
    return servers


def run_disruption(method: str, workdir: Path) -> Run:
    """A switch caused by HTTP answers slower than every tool's timeout, which leaves plain TCP untouched;
    a byte every 100 ms on one connection over each uplink, across the switch."""
    config = NM_CONNECTIVITY if method == NMC else ""
    with NMLab(2, extra_nm_config=config) as lab:
        servers = _echo_servers(lab)
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
            clients = {
                dev: lab.popen_host(
                    [sys.executable, "-c", _ECHO_CLIENT, dev, ECHO_ADDRESS, str(ECHO_PORT)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                for dev in ("wana", "wanb")
            }
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
            switches = len(log_lines(daemon.text(), r"-> switching to")) if method == NMF else None
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
        "reached": reached,
        "failover": minus(story.settled, t0),
        "no_route": story.no_route,
        "deactivations": dead,
        "switches": switches,
        "connections": {
            dev: {**r, "survived": r["error"] is None and r["echoed"] == r["sent"]}
            for dev, r in results.items()
        },
    }


def part(results: Results, runs: int, workdir: Path, attempts: Attempts) -> None:
    """A third as many rounds as the failover part (at least 3), every method, into results["disruption"]."""
    dis: dict[str, list[Run]] = {m: [] for m in METHODS}
    for i in range(max(3, runs // 3)):
        for method in METHODS:
            run = attempts.run(f"disruption/{method}/{i}", partial(run_disruption, method, workdir))
            if run is not None:
                dis[method].append(run)
                conns = run["connections"].items()
                say(
                    f"disruption {method}: "
                    + ", ".join(f"{d} survived={c['survived']} gap={fmt(c['max_gap'])}" for d, c in conns)
                )
    results["disruption"] = dis
