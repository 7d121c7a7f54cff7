"""Run `nmfailover run` as a real subprocess inside the sandbox's host namespace, and watch its effects."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from nmfailover.sandbox import LAB_PROBE_URLS, NMLab


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll until predicate() holds; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started


class Daemon:
    def __init__(self, lab: NMLab, log: Path, env: Mapping[str, str]) -> None:
        self.lab = lab
        self.log = log
        self.proc = lab.popen_host([sys.executable, "-m", "nmfailover", "run"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=log.open("w"))

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, pattern: str, timeout: float = 20) -> float:
        return wait_for(lambda: re.search(pattern, self.text()) is not None, timeout, f"log {pattern!r}")

    def wait_route(self, device: str, timeout: float = 20, family: int = 4) -> float:
        return wait_for(lambda: self.lab.default_route(family) == device, timeout,
                        f"default route on {device}", step=0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def daemon_env(lab: NMLab, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in lab.env.items() if not k.startswith("NMFAILOVER_")}
    env.update({
        "NMFAILOVER_UPLINKS": ",".join(lab.profiles),
        "NMFAILOVER_PROBE_URLS": LAB_PROBE_URLS,
        "NMFAILOVER_ENV_FILE": "/dev/null",
        "NMFAILOVER_LOG_LEVEL": "DEBUG",
    })
    env.update({f"NMFAILOVER_{k.upper()}": v for k, v in overrides.items()})
    return env


@contextmanager
def running_daemon(lab: NMLab, log: Path, **overrides: str) -> Iterator[Daemon]:
    daemon = Daemon(lab, log, daemon_env(lab, **overrides))
    try:
        daemon.wait_log(r"managing primary=")
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        print(daemon.text()[-6000:], file=sys.stderr)
