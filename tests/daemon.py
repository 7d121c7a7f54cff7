"""Drive `nmfailover run` as a real subprocess inside the sandbox (the demo's harness, with test cleanup)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nmfailover.lab.demo import DaemonProcess, daemon_env
from nmfailover.lab.sandbox import NMLab


@contextmanager
def running_daemon(
    lab: NMLab, log: Path, env_extra: dict[str, str] | None = None, **overrides: str
) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(lab, log, {**daemon_env(lab, **overrides), **(env_extra or {})})
    try:
        daemon.wait_log(r" managing ")
        yield daemon
    finally:
        daemon.kill()
        print(daemon.text()[-8000:], file=sys.stderr)
