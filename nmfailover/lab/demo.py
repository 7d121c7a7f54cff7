"""`nmfailover demo`: the daemon against a real NetworkManager in a sandbox, with a silent outage to watch.

Also the harness the end-to-end tests drive the daemon with.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

from .sandbox import LAB_PROBE_URLS, NMLab, lab_available


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> float:
    """Poll until predicate() holds; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started


def daemon_env(lab: NMLab, **overrides: str) -> dict[str, str]:
    """The sandbox's environment with nmfailover pointed at its profiles and probe targets."""
    env = {k: v for k, v in lab.env.items() if not k.startswith("NMFAILOVER_")}
    env.update(
        {
            "NMFAILOVER_UPLINKS": ",".join(lab.profiles),
            "NMFAILOVER_PROBE_URLS": LAB_PROBE_URLS,
            "NMFAILOVER_ENV_FILE": "/dev/null",
            "NMFAILOVER_LOG_LEVEL": "DEBUG",
            # The sandbox's profiles are gone with it: so is what the daemon remembers about them.
            "RUNTIME_DIRECTORY": str(lab.workdir / "run-nmfailover"),
            "STATE_DIRECTORY": str(lab.workdir / "lib-nmfailover"),  # the metered uplinks' byte counts
            "NMFAILOVER_HOOKS_DIR": "",  # never the machine's own hooks
        }
    )
    env.update({f"NMFAILOVER_{k.upper()}": v for k, v in overrides.items()})
    return env


class DaemonProcess:
    """`nmfailover run` inside the sandbox's host namespace, its log in a file (optionally echoed)."""

    def __init__(self, lab: NMLab, log: Path, env: Mapping[str, str], echo: TextIO | None = None) -> None:
        self.lab = lab
        self.log = log
        self.proc = lab.popen_host(
            [sys.executable, "-m", "nmfailover", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._lines: list[str] = []
        self._echo = echo
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("w") as out:
            for line in self.proc.stderr:
                self._lines.append(line)
                out.write(line)
                out.flush()
                if self._echo is not None:
                    self._echo.write(f"    | {line}")
                    self._echo.flush()

    def text(self) -> str:
        return "".join(self._lines)

    def wait_log(self, pattern: str, timeout: float = 20) -> float:
        def seen() -> bool:
            if re.search(pattern, self.text()) is not None:
                return True
            if self.proc.poll() is not None:
                raise RuntimeError(f"nmfailover exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            return False

        return wait_for(seen, timeout, f"log {pattern!r}")

    def wait_route(self, device: str, timeout: float = 20, family: int = 4) -> float:
        return wait_for(
            lambda: self.lab.default_route(family) == device,
            timeout,
            f"IPv{family} default route on {device}",
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _routes(lab: NMLab) -> str:
    return ", ".join(f"{dev} metric {metric}" for dev, metric in lab.default_routes(4))


def run_demo(hold_down: float = 10.0) -> int:
    problem = lab_available()
    if problem is not None:
        print(f"nmfailover demo: {problem}", file=sys.stderr)
        return 2
    timings: dict[str, float] = {}
    with NMLab(2) as lab:
        _say(
            "sandbox up: a real NetworkManager with uplinks 'primary' (wana) and 'backup' (wanb), "
            "each behind its own simulated ISP"
        )
        print(f"   default routes: {_routes(lab)}")
        log = Path(lab.workdir) / "nmfailover.log"
        daemon = DaemonProcess(
            lab, log, daemon_env(lab, failback_hold_down=str(hold_down), log_level="INFO"), echo=sys.stdout
        )
        try:
            daemon.wait_log(r"ready: ")
            print(f"   default routes: {_routes(lab)}")
            _say("cutting the primary's upstream silently (cable and router stay up, nothing beyond answers)")
            lab.upstreams[0].blackhole()
            timings["failover"] = daemon.wait_route("wanb", timeout=30)
            print(f"   default routes: {_routes(lab)}")
            _say(f"healing the primary; nmfailover waits {hold_down:g} s of good health before failing back")
            lab.upstreams[0].heal()
            timings["failback"] = daemon.wait_route("wana", timeout=hold_down + 30)
            print(f"   default routes: {_routes(lab)}")
            _say("stopping nmfailover (SIGTERM): the profiles' own metrics come back")
            code = daemon.stop()
            print(f"   exit code {code}; default routes: {_routes(lab)}")
        finally:
            daemon.kill()
    _say("results")
    print(f"   outage -> default route on the backup: {timings['failover']:.2f} s")
    print(
        f"   heal -> default route on the primary:  {timings['failback']:.2f} s (hold-down {hold_down:g} s)"
    )
    print("   sandbox removed; the machine's own network was never touched")
    return 0
