"""The daemon loads no code its configuration does not use (issue 19, point 7: its memory at defaults).

First the import path alone, cheaply: `nmfailover run` in a fresh interpreter with no system bus, so it
stops right after the imports and the settings; then the real daemon in the lab, ready and probing, its
imports listed by Python itself (PYTHONPROFILEIMPORTTIME), with a configuration that asks for the metrics as
the proof that the list would show them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

# Never in a daemon at defaults: the lab and demo, the generated documents, the metrics client, the
# desktop agent, doctor and install-system-files.
NEVER_AT_DEFAULTS = (
    "prometheus_client",
    "nmfailover.lab",
    "nmfailover.lab.demo",
    "nmfailover.lab.sandbox",
    "nmfailover.manpage",
    "nmfailover.metrics",
    "nmfailover.notify",
    "nmfailover.indicator",
    "nmfailover.tray",
    "nmfailover.doctor",
    "nmfailover.system_files",
    "wsgiref",
)
# What `nmfailover run` needs whatever the configuration: the test's sign that it got that far.
ALWAYS = ("nmfailover.daemon", "nmfailover.engine.core", "nmfailover.probe", "nmfailover.nm")

_LOADED_AFTER_RUN = """
import json, sys
from nmfailover.cli import main
code = main(["run"])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded_by_run(**settings: str) -> set[str]:
    """The modules `nmfailover run` imported before giving up on the (absent) system bus."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NMFAILOVER_")}
    env.update(
        {
            "NMFAILOVER_ENV_FILE": "",
            "NMFAILOVER_UPLINKS": "Fiber,Hotspot",
            "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/nmfailover-test-bus",
            **{f"NMFAILOVER_{k.upper()}": v for k, v in settings.items()},
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", _LOADED_AFTER_RUN], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 1, done.stderr  # cannot start: no bus
    return set(result["modules"])


def test_run_at_defaults_imports_nothing_its_configuration_does_not_use() -> None:
    loaded = loaded_by_run()
    assert set(ALWAYS) <= loaded
    # Saying why the bus is unreachable takes system_files' bus_connect_error: that one is fair here.
    assert sorted(loaded & set(NEVER_AT_DEFAULTS) - {"nmfailover.system_files"}) == []
    assert "nmfailover.tunnels" in loaded  # NMFAILOVER_WIREGUARD_FOLLOW is auto by default


def test_tunnels_are_imported_only_when_followed() -> None:
    assert "nmfailover.tunnels" not in loaded_by_run(wireguard_follow="off")


def imported(log: str) -> set[str]:
    """Every module Python reported importing in a PYTHONPROFILEIMPORTTIME log."""
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", log, re.MULTILINE))


def test_ready_daemon_at_defaults_has_not_loaded_the_metrics_lab_or_documents(
    nmlab: NMLab, tmp_path: Path
) -> None:
    profile = {"PYTHONPROFILEIMPORTTIME": "1"}
    with running_daemon(nmlab, tmp_path / "defaults.log", profile) as daemon:
        daemon.wait_log(r"ready: traffic on primary", timeout=30)
        time.sleep(3)  # the first rounds after READY: whatever they import is in the log by now
        loaded = imported(daemon.text())
    assert set(ALWAYS) <= loaded
    assert sorted(loaded & set(NEVER_AT_DEFAULTS)) == []
    # The same listing sees the metrics client once the configuration asks for it.
    textfile = tmp_path / "nmfailover.prom"
    with running_daemon(nmlab, tmp_path / "metrics.log", profile, metrics_textfile=str(textfile)) as daemon:
        daemon.wait_log(r"ready: traffic on primary", timeout=30)
        loaded = imported(daemon.text())
    assert {"prometheus_client", "nmfailover.metrics"} <= loaded
