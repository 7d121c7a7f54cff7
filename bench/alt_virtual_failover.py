"""The virtual-failover method, re-created from its description (shared/reference/prior-art.md) for the bench.

Not nmfailover code and not virtual-failover's code: the same method, written small. Per link, a check is
`curl --interface IFACE -sI --max-time 1 --connect-timeout 1 URL` against a random target, up to 4 tries,
any HTTP status counting as up. The primary is checked every 5 s, the backup every 10 s. A switch writes
the new metrics to the saved profiles (`nmcli connection modify`) and then restarts EVERY link in parallel
(`nmcli connection down` + `up`). One good check fails back, after a 30 s cooldown since the last switch.

Run inside the namespace whose links it manages, with nmcli pointed at that NetworkManager. Each event is a
line on stderr: `EPOCH-SECONDS event words`, so the benchmark can time it.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections.abc import Sequence

TRIES = 4
SWITCH_TIMEOUT = 60.0


def log(event: str) -> None:
    print(f"{time.time():.3f} {event}", file=sys.stderr, flush=True)


def probe(iface: str, targets: Sequence[str], resolve: Sequence[str]) -> bool:
    for _ in range(TRIES):
        argv = ["curl", "--interface", iface, "-sI", "--max-time", "1", "--connect-timeout", "1"]
        argv += ["-o", "/dev/null"]
        for entry in resolve:
            argv += ["--resolve", entry]
        # curl exits 0 on any HTTP answer (no --fail): a 302 or 500 counts as up, as in the original.
        if subprocess.run([*argv, random.choice(targets)], check=False, timeout=5).returncode == 0:
            return True
    return False


def profile_on(iface: str) -> str:
    out = subprocess.run(
        ["nmcli", "-g", "GENERAL.CONNECTION", "device", "show", iface],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    if not out:
        raise SystemExit(f"no active profile on {iface}")
    return out


def switch(preferred: int, profiles: Sequence[str]) -> None:
    log(f"switching to {profiles[preferred]}")
    order = [preferred] + [i for i in range(len(profiles)) if i != preferred]
    for rank, index in enumerate(order):
        metric = str(100 + 100 * rank)
        metrics = ["ipv4.route-metric", metric, "ipv6.route-metric", metric]
        subprocess.run(
            ["nmcli", "connection", "modify", profiles[index], *metrics], check=False, timeout=SWITCH_TIMEOUT
        )
    restarts = [
        subprocess.Popen(
            ["sh", "-c", 'nmcli connection down "$1"; nmcli connection up "$1"', "sh", name],
            stdout=subprocess.DEVNULL,
        )
        for name in profiles
    ]
    for proc in restarts:
        proc.wait(SWITCH_TIMEOUT)
    log(f"switched to {profiles[preferred]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--primary", required=True, help="primary device, e.g. eth0")
    parser.add_argument("--backup", required=True, help="backup device")
    parser.add_argument("--target", action="append", required=True, help="URL to probe (repeatable)")
    parser.add_argument("--resolve", action="append", default=[], help="curl --resolve HOST:PORT:ADDR")
    parser.add_argument("--primary-interval", type=float, default=5.0)
    parser.add_argument("--backup-interval", type=float, default=10.0)
    parser.add_argument("--cooldown", type=float, default=30.0)
    args = parser.parse_args(argv)

    ifaces = [args.primary, args.backup]
    profiles = [profile_on(iface) for iface in ifaces]
    intervals = [args.primary_interval, args.backup_interval]
    up = [probe(iface, args.target, args.resolve) for iface in ifaces]
    current = 0  # the lab starts with the primary preferred, so no initial restart is needed
    last_switch = float("-inf")
    next_check = [time.monotonic() + interval for interval in intervals]
    log(f"ready primary={'up' if up[0] else 'down'} backup={'up' if up[1] else 'down'}")
    while True:
        index = min(range(len(ifaces)), key=lambda i: next_check[i])
        time.sleep(max(0.0, next_check[index] - time.monotonic()))
        was = up[index]
        up[index] = probe(ifaces[index], args.target, args.resolve)
        next_check[index] = time.monotonic() + intervals[index]
        if was != up[index]:
            log(f"{profiles[index]} {'up' if up[index] else 'down'}")
        best = next((i for i in range(len(ifaces)) if up[i]), None)
        if best is None or best == current or time.monotonic() - last_switch < args.cooldown:
            continue
        switch(best, profiles)
        current, last_switch = best, time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
