"""The methods compared, each started in a lab: nmfailover, the virtual-failover method, NM's check."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import BENCH_DIR, NM_CONNECTIVITY, NM_CONNECTIVITY_FAST, NMC, NMC_FAST, NMF, VF
from nmfailover.lab.demo import DaemonProcess, daemon_env
from nmfailover.lab.sandbox import TARGET_ADDRESSES, NMLab

# -- nmfailover ---------------------------------------------------------------------------------------------


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


# -- the virtual-failover method -----------------------------------------------------------------------------


class VirtualFailover:
    """bench/alt_virtual_failover.py in the lab's host namespace, its timestamped events collected."""

    def __init__(self, lab: NMLab) -> None:
        script = BENCH_DIR / "alt_virtual_failover.py"
        argv = [sys.executable, str(script), "--primary", "wana", "--backup", "wanb"]
        for i, address in enumerate(TARGET_ADDRESSES, 1):
            argv += ["--target", f"http://target{i}.test/generate_204"]
            argv += ["--resolve", f"target{i}.test:80:{address}"]
        self.proc = lab.popen_host(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def event(self, words: str, timeout: float) -> float | None:
        """When it logged the event starting with `words`, waiting up to `timeout`; None if it did not."""
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


# -- NetworkManager's connectivity check ---------------------------------------------------------------------


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
    return lab.popen_host(
        ["nmcli", "networking", "connectivity", "check"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- any of them ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(method: str, workdir: Path) -> Iterator[NMLab]:
    """A fresh lab with `method` in charge of the default route, yielded once the method is ready."""
    config = {NMC: NM_CONNECTIVITY, NMC_FAST: NM_CONNECTIVITY_FAST}.get(method, "")
    with NMLab(2, extra_nm_config=config) as lab:
        if method == NMF:
            with daemon_in(lab, workdir / "nmfailover.log"):
                yield lab
        elif method == VF:
            vf = VirtualFailover(lab)
            try:
                if vf.event("ready", 30) is None:
                    raise RuntimeError("alt_virtual_failover never got ready: " + "\n".join(vf.lines))
                yield lab
            finally:
                vf.stop()
        else:
            wait_nm_full(lab)
            yield lab
