"""What must outlive a crashed daemon: each profile's own autoconnect-priority from before we changed it.

NetworkManager keeps our in-memory value after the daemon dies, so a restarted daemon would take it for the
profile's own. One small file per profile UUID under the runtime directory (tmpfs: gone at reboot, as is
NetworkManager's in-memory change) remembers the value until a clean stop puts it back.
"""

from __future__ import annotations

import os
from pathlib import Path


def _directory() -> Path:
    # systemd's RuntimeDirectory= (with RuntimeDirectoryPreserve=yes) sets this; by hand, the same place.
    return Path(os.environ.get("RUNTIME_DIRECTORY", "/run/nmfailover").split(":")[0])


def _file(uuid: str) -> Path:
    return _directory() / f"autoconnect-priority-{uuid}"


def original_priority(uuid: str, current: int) -> int:
    """The value to restore: the one an earlier run remembered, else `current` (remembered now)."""
    path = _file(uuid)
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        pass
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_text(f"{current}\n")
    except OSError:
        pass  # without a place to remember it, we are no worse off than before
    return current


def forget_priority(uuid: str) -> None:
    _file(uuid).unlink(missing_ok=True)
