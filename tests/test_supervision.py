"""A real daemon process against a real NetworkManager, with a bug injected into the primary's probe loop:
every crash is logged with its traceback and the loop restarted, and when it keeps crashing the daemon puts
the profiles' own values back and exits non-zero, so that systemd restarts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nmfailover.lab.demo import daemon_env
from nmfailover.lab.sandbox import NMLab

INJECT = """
import sys
import time
import nmfailover.echo as echo
import nmfailover.probe as probe

# The first round (its steps within the first seconds) decides the start; every later step hits the bug.
started = time.monotonic()

def crashing(real):
    async def step(link, *args):
        if getattr(link, "interface", link) == "wana" and time.monotonic() - started > 3:
            raise RuntimeError("injected crash in the primary's probe loop")
        return await real(link, *args)
    return step

probe.probe_round = crashing(probe.probe_round)
echo.echo_round = crashing(echo.echo_round)
probe.dns_round = crashing(probe.dns_round)
from nmfailover.cli import main  # after the patch: the daemon takes its steps' senders when imported
sys.exit(main(["run"]))
"""


def test_a_probe_loop_that_keeps_crashing_ends_the_daemon_non_zero_after_restoring(
    nmlab: NMLab, tmp_path: Path
) -> None:
    env = dict(daemon_env(nmlab), PYTHONPATH=str(Path(__file__).parents[1]))
    before = nmlab.default_routes(4)
    proc = nmlab.popen_host(
        [sys.executable, "-c", INJECT], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, log = proc.communicate(timeout=90)
    finally:
        proc.kill()
    print(log[-6000:], file=sys.stderr)
    assert proc.returncode == 1
    assert "ready: traffic on primary" in log
    assert log.count("task probe-primary crashed: RuntimeError") == 6
    assert log.count("Traceback") == 6 and "injected crash" in log
    for restart, delay in enumerate(("0.5", "1", "2", "5", "10"), start=1):
        assert f"restarting task probe-primary in {delay} s (restart {restart})" in log
    assert "probe-primary crashed 6 times within 300 s" in log
    assert "primary (wana): restored its profile's own route metrics" in log
    assert nmlab.default_routes(4) == before  # left as it was found
