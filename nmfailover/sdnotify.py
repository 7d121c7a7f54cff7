"""The two pieces of systemd's sd_notify protocol the daemon needs, without a dependency: state messages
over $NOTIFY_SOCKET (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1) and the watchdog interval.

Outside systemd (no NOTIFY_SOCKET, no WATCHDOG_USEC) everything is a no-op, so the daemon calls these
unconditionally.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=traffic on eth0") in one datagram; True if it was sent.

    Never raises: a service manager that went away must not take the daemon down with it.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        return False  # unset, or a transport (vsock) systemd uses only for VMs
    # A newline would start a new assignment: one state must stay one line.
    message = "\n".join(state.replace("\n", " ") for state in states).encode()
    try:
        # Non-blocking: a service manager that stops reading must never freeze the daemon's event loop.
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        ) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds if systemd expects this process to pet it, else None.

    Pet at half of it. WATCHDOG_PID, when set, names the process meant: a child (a hook) that inherited
    the environment must not think it is the one being watched.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
