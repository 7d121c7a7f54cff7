"""Brownouts against the real NetworkManager: light loss on the primary's upstream never moves traffic,
heavy loss does (nmfailover.lab.sandbox Upstream.lossy drops each packet beyond the router by chance)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

# Proofs every 3 s instead of 60: twenty times the HTTP rounds a lossy minute would see at the defaults.
FREQUENT_PROOFS = {"NMFAILOVER_PROOF_INTERVAL": "3"}
LIGHT_LOSS = 15  # percent each way: about 28 % of echoes and 80 % of lean HTTP rounds go unanswered
LIGHT_SECONDS = 60.0
HEAVY_LOSS = 60  # percent each way: 84 % of echoes unanswered
HEAVY_LIMIT = 30.0  # seconds: the brownout window (20 s) and a margin


def test_light_loss_never_moves_traffic(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log", env_extra=FREQUENT_PROOFS) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].lossy(LIGHT_LOSS)
        try:
            deadline = time.monotonic() + LIGHT_SECONDS
            while time.monotonic() < deadline:
                assert nmlab.default_route(4) == "wana", "light loss moved the traffic"
                time.sleep(0.5)
        finally:
            nmlab.upstreams[0].heal()
        text = daemon.text()
        # The premise: the loss was felt, by echoes and by HTTP rounds, and shrugged off.
        assert re.search(r"primary \(wana\) failing", text) and re.search(r"primary \(wana\) lossy", text)
        assert "switching" not in text and "primary (wana) down" not in text
        assert daemon.stop() == 0


def test_heavy_loss_moves_traffic(nmlab: NMLab, tmp_path: Path) -> None:
    with running_daemon(nmlab, tmp_path / "daemon.log") as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        nmlab.upstreams[0].lossy(HEAVY_LOSS)
        try:
            started = time.monotonic()
            daemon.wait_route("wanb", timeout=HEAVY_LIMIT)
            print(f"\n{HEAVY_LOSS} % loss each way: traffic moved {time.monotonic() - started:.1f} s later")
        finally:
            nmlab.upstreams[0].heal()
        assert daemon.stop() == 0
