"""A browser-like user of the lab: what a user's application does, timed per attempt.

Every INTERVAL seconds, in a thread of its own (a slow attempt never holds up the next one, as in a
browser), it looks a site's name up through glibc (`getaddrinfo`, as an application does, so through
/etc/resolv.conf) and fetches a page over a NEW TCP connection to the answer, through the default route.
Each attempt ends as one JSON line in the output file: when it started (wall clock and CLOCK_MONOTONIC,
which every process of the machine shares), the lookup's outcome and duration, the connection's and the
answer's. With `--lookup-only` it only looks names up.

Started by nmfailover.lab.sandbox.Topology.user_traffic() inside the lab's host namespace and a private
mount namespace whose /etc/resolv.conf is the lab's: it refuses to run if /etc/resolv.conf is not the file
it was told to expect, so a lookup can never reach the machine's own resolver. It stops by itself after
`--seconds`, or at SIGTERM; attempts still under way then are written as `unfinished`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType

SITES: tuple[str, ...] = ("site1.test", "site2.test", "site3.test")  # in nmfailover.lab.upstream's zone
PAGE_PATH = "/success.txt"
PAGE_BODY = b"success\n"
INTERVAL = 0.3
CONNECT_TIMEOUT = 3.0
ANSWER_TIMEOUT = 3.0
MAX_IN_FLIGHT = 100  # past this many unfinished attempts a tick is skipped (each holds a thread)
# What an attempt can end as; the connection outcomes only without --lookup-only.
OUTCOMES = (
    "ok",  # the page, complete (or, with --lookup-only, an address)
    "lookup-failed",
    "refused",
    "connect-timeout",
    "timeout",  # connected, but no (complete) answer in time
    "reset",  # connected, then reset or closed without an answer
    "wrong-answer",  # an answer, but not the page (a portal's redirect or login page)
    "error",
    "unfinished",  # still under way when the client stopped
)
RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class UserAttempt:
    """One attempt of the user-traffic client; durations are None for a step never reached or finished."""

    seq: int
    name: str
    started: float  # time.time() at the start
    started_monotonic: float  # time.monotonic() at the start (the same clock in every process)
    outcome: str  # one of OUTCOMES
    lookup_ok: bool
    lookup_seconds: float | None
    lookup_error: str  # glibc's message, e.g. "Temporary failure in name resolution"
    address: str | None  # the address the name resolved to
    local_address: str | None  # the connection's source address: which uplink carried it
    connect_seconds: float | None
    http_status: int | None
    seconds: float | None  # start to end of the whole attempt

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def ended(self) -> float | None:
        """Wall-clock time the attempt ended; None if it never did."""
        return None if self.seconds is None else self.started + self.seconds

    @property
    def lookup_ended(self) -> float | None:
        return None if self.lookup_seconds is None else self.started + self.lookup_seconds


def parse_attempts(lines: Iterable[str]) -> list[UserAttempt]:
    """The attempts in the client's output, in the order they started (half-written last lines skipped)."""
    attempts = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if record.get("kind") == "attempt":
            del record["kind"]
            attempts.append(UserAttempt(**record))
    return sorted(attempts, key=lambda a: a.seq)


def first_after(
    attempts: Iterable[UserAttempt], since: float, good: Callable[[UserAttempt], bool] = lambda a: a.ok
) -> UserAttempt | None:
    """The earliest-started attempt that started at or after `since` (wall clock) and is `good`."""
    return next(
        (a for a in sorted(attempts, key=lambda a: a.started) if a.started >= since and good(a)), None
    )


# -- the client ------------------------------------------------------------------------------------------


class _Client:
    def __init__(self, out: Path, interval: float, seconds: float, lookup_only: bool) -> None:
        self.out = out.open("a", encoding="utf-8")
        self.interval = interval
        self.seconds = seconds
        self.lookup_only = lookup_only
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.pending: dict[int, UserAttempt] = {}

    def write(self, record: dict[str, object]) -> None:
        with self.lock:
            if not self.out.closed:  # a thread finishing after the end has nothing more to say
                self.out.write(json.dumps(record) + "\n")
                self.out.flush()

    def update(self, attempt: UserAttempt) -> None:
        with self.lock:
            if attempt.seq in self.pending:  # not yet written as unfinished at the end
                self.pending[attempt.seq] = attempt

    def finish(self, attempt: UserAttempt) -> None:
        with self.lock:
            if self.pending.pop(attempt.seq, None) is None:
                return  # already written as unfinished at the end
        self.write({"kind": "attempt", **asdict(attempt)})

    def attempt(self, seq: int) -> None:
        name = SITES[seq % len(SITES)]
        t0 = time.monotonic()
        a = UserAttempt(
            seq, name, time.time(), t0, "unfinished", False, None, "", None, None, None, None, None
        )
        with self.lock:
            if self.out.closed:
                return
            self.pending[seq] = a
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            self.finish(
                replace(a, outcome="lookup-failed", lookup_seconds=time.monotonic() - t0,
                        lookup_error=str(e.strerror), seconds=time.monotonic() - t0)
            )  # fmt: skip
            return
        family, _, _, _, sockaddr = infos[0]
        a = replace(a, lookup_ok=True, lookup_seconds=time.monotonic() - t0, address=str(sockaddr[0]))
        self.update(a)
        if self.lookup_only:
            self.finish(replace(a, outcome="ok", seconds=time.monotonic() - t0))
            return
        self.finish(self.fetch(a, family, t0))

    @staticmethod
    def fetch(a: UserAttempt, family: int, t0: float) -> UserAttempt:
        assert a.address is not None
        conn = http.client.HTTPConnection(a.address, 80, timeout=CONNECT_TIMEOUT)
        step = "connect"
        try:
            conn.connect()
            local = str(conn.sock.getsockname()[0])
            a = replace(a, local_address=local, connect_seconds=time.monotonic() - t0)
            step = "answer"
            conn.sock.settimeout(ANSWER_TIMEOUT)
            conn.request("GET", PAGE_PATH, headers={"Host": a.name, "Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            good = response.status == 200 and body == PAGE_BODY
            a = replace(a, outcome="ok" if good else "wrong-answer", http_status=response.status)
        except ConnectionRefusedError:
            a = replace(a, outcome="refused")
        except TimeoutError:
            a = replace(a, outcome="connect-timeout" if step == "connect" else "timeout")
        except (ConnectionError, http.client.HTTPException):
            a = replace(a, outcome="reset" if step == "answer" else "error")
        except OSError:
            a = replace(a, outcome="error")
        finally:
            conn.close()
        return replace(a, seconds=time.monotonic() - t0)

    def run(self) -> None:
        self.write({"kind": "ready", "pid": os.getpid(), "resolv_conf": os.path.realpath(RESOLV_CONF)})
        start = time.monotonic()
        seq = 0
        while not self.stop.is_set() and time.monotonic() - start < self.seconds:
            with self.lock:
                busy = len(self.pending) >= MAX_IN_FLIGHT
            if not busy:
                threading.Thread(target=self.attempt, args=(seq,), daemon=True).start()
                seq += 1
            # On the schedule, not after the attempt: a failing attempt must not slow the user down.
            self.stop.wait(
                max(0.0, start + seq * self.interval - time.monotonic()) if not busy else self.interval
            )
        with self.lock:
            for a in sorted(self.pending.values(), key=lambda a: a.seq):
                self.out.write(json.dumps({"kind": "attempt", **asdict(a)}) + "\n")
            self.pending = {}
            self.out.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per attempt (appended)")
    parser.add_argument("--expect-resolv", type=Path, required=True, help="the file /etc/resolv.conf must be")
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--seconds", type=float, required=True, help="stop after this long")
    parser.add_argument("--lookup-only", action="store_true", help="look names up, open no connections")
    args = parser.parse_args(argv)
    if os.path.realpath(RESOLV_CONF) != os.path.realpath(args.expect_resolv):
        print(f"usertraffic: {RESOLV_CONF} is not {args.expect_resolv}: refusing to run", file=sys.stderr)
        return 2
    client = _Client(args.out, args.interval, args.seconds, args.lookup_only)

    def on_term(signum: int, frame: FrameType | None) -> None:
        client.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    client.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
