"""The daemon's import graph never reaches the lab.

nmfailover.lab (the sandbox, its upstream server and the demo) builds namespaces and starts NetworkManager
instances; the daemon must neither load it nor depend on what it needs. Only `nmfailover demo` reaches it,
through a lazy import in the command itself.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import nmfailover

LAB = "nmfailover.lab"
# The entry point runs the CLI when imported; everything it imports is walked anyway.
ENTRY_POINT = "nmfailover.__main__"
# Far fewer than the package holds: below this the walk itself went wrong, and the test would prove nothing.
MIN_DAEMON_MODULES = 10

# Imports each named module in turn and reports which one first pulled in a lab module, so a failure
# names the culprit instead of only the symptom.
_IMPORT_EACH = r"""
import importlib, json, sys
def lab_loaded():
    return sorted(m for m in sys.modules if m == "nmfailover.lab" or m.startswith("nmfailover.lab."))
culprit = None
for name in sys.argv[1:]:
    importlib.import_module(name)
    if culprit is None and lab_loaded():
        culprit = name
print(json.dumps({"imported": len(sys.argv) - 1, "lab": lab_loaded(), "culprit": culprit,
                  "package": importlib.import_module("nmfailover").__path__[0]}))
"""


def _in_lab(name: str) -> bool:
    return name == LAB or name.startswith(LAB + ".")


def _unimportable(name: str) -> None:
    # Left to itself, the walk skips a package that fails to import, and every module inside it unseen.
    raise ImportError(f"{name} does not import, so the walk cannot look inside it")


def daemon_modules() -> list[str]:
    # walk_packages imports each package to look inside it, the lab's too: so the walk runs here, and only
    # its result goes to the fresh interpreter.
    walked = pkgutil.walk_packages(nmfailover.__path__, "nmfailover.", onerror=_unimportable)
    return sorted(m.name for m in walked if not _in_lab(m.name) and m.name != ENTRY_POINT)


def test_daemon_modules_never_import_the_lab() -> None:
    names = daemon_modules()
    assert len(names) >= MIN_DAEMON_MODULES, names
    package_dir = Path(nmfailover.__path__[0])
    # A fresh interpreter: this one has the lab loaded already (the fixtures use it).
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *names],
        cwd=package_dir.parent,  # this checkout's package, not some other installed copy
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert Path(report["package"]) == package_dir
    assert report["imported"] == len(names)
    assert report["lab"] == [], f"{report['culprit']} imports {', '.join(report['lab'])}"
