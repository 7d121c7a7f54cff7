"""Multipath TCP path management that follows the switches (issue 18).

An MPTCP connection opened on the primary survives the primary's death only if it has a subflow through
another uplink to fall back on, and the metered backup's subflow should carry nothing while the primary
works. NetworkManager (1.40 and newer) already makes every address of a device with a default route an
MPTCP `subflow` endpoint while the kernel's net.mptcp.enabled is on (connection.mptcp-flags 0, "default");
what it cannot know is which uplink carries the traffic. So the uplinks that do not get the `backup` flag in
their connection.mptcp-flags, put on the applied connection in the same Reapply as their route metrics
(NetworkManager 1.42 replaces the endpoint with the new flags; the kernel then opens the subflow afresh)
and taken off again on stop.

Why not the kernel's own switch (`ip mptcp endpoint change ID backup`, MP_PRIO, subflows kept) first, with
the Reapply then finding the endpoint as it wants it? Tried in the lab: a pulled cable then stalled the
stream 1.2 s instead of 0.09 s. A kept subflow on the dead uplink holds the data the server sent on it until
its retransmissions time out (the MP_PRIO that would make it a backup travels on that dead subflow), whereas
NetworkManager's replaced endpoint closes it at once and the peer, told on the live subflow, sends that data
again there. And the replaced endpoint of the uplink coming back opens a fresh subflow from it, where a
subflow that failed to open while it was dead is never tried again.

The kernel's view (the sysctl, the limits, the endpoints) is read here for `doctor`; nothing here writes it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# connection.mptcp-flags (NMMptcpFlags), NetworkManager 1.40 and newer.
MPTCP_DISABLED = 0x1
MPTCP_ENABLED = 0x2
MPTCP_ALSO_WITHOUT_SYSCTL = 0x4
MPTCP_ALSO_WITHOUT_DEFAULT_ROUTE = 0x8
MPTCP_SIGNAL = 0x10
MPTCP_SUBFLOW = 0x20
MPTCP_BACKUP = 0x40
MPTCP_FULLMESH = 0x80
_ENDPOINT_KINDS = MPTCP_SIGNAL | MPTCP_SUBFLOW | MPTCP_FULLMESH
_FLAG_NAMES = (
    (MPTCP_DISABLED, "disabled"),
    (MPTCP_ENABLED, "enabled"),
    (MPTCP_ALSO_WITHOUT_SYSCTL, "also-without-sysctl"),
    (MPTCP_ALSO_WITHOUT_DEFAULT_ROUTE, "also-without-default-route"),
    (MPTCP_SIGNAL, "signal"),
    (MPTCP_SUBFLOW, "subflow"),
    (MPTCP_BACKUP, "backup"),
    (MPTCP_FULLMESH, "fullmesh"),
)

SYSCTL_ENABLED = Path("/proc/sys/net/mptcp/enabled")


def endpoint_flags(own: int, carrying: bool) -> int | None:
    """The connection.mptcp-flags an uplink's applied connection gets: its profile's `own` value with
    `backup` set unless it carries the traffic; None to leave it alone (the profile disables MPTCP).

    A profile without endpoint flags (0, NetworkManager's default, or just "enabled") gets `subflow`, what
    NetworkManager applies for it itself: a client's addresses are worth nothing as endpoints otherwise."""
    if own & MPTCP_DISABLED:
        return None
    wanted = own | MPTCP_ENABLED
    if not own & _ENDPOINT_KINDS:
        wanted |= MPTCP_SUBFLOW
    return wanted & ~MPTCP_BACKUP if carrying else wanted | MPTCP_BACKUP


def describe_flags(flags: int) -> str:
    """As nmcli writes them: "enabled,subflow,backup"; "default" for 0."""
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    return ",".join(names) or "default"


# -- the kernel's side, for doctor ----------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One MPTCP endpoint as `ip mptcp endpoint show` lists it."""

    address: str
    id: int
    flags: frozenset[str]  # signal, subflow, backup, fullmesh
    device: str | None


@dataclass(frozen=True)
class KernelMptcp:
    """What the kernel offers MPTCP connections in this network namespace."""

    enabled: bool | None  # net.mptcp.enabled; None: no MPTCP in this kernel
    subflows: int | None  # limits: extra subflows per connection (None: unknown)
    add_addr_accepted: int | None
    endpoints: tuple[Endpoint, ...] = ()

    def on_device(self, device: str) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.device == device)


_LIMIT_RE = re.compile(r"\b(subflows|add_addr_accepted)\s+(\d+)")
_ENDPOINT_RE = re.compile(r"^(?P<address>\S+)\s+(?:port \d+\s+)?id (?P<id>\d+)(?P<rest>.*)$")
_ENDPOINT_FLAGS = frozenset({"signal", "subflow", "backup", "fullmesh", "implicit"})


def parse_limits(text: str) -> dict[str, int]:
    """`ip mptcp limits show`: {"subflows": 2, "add_addr_accepted": 0}."""
    return {name: int(value) for name, value in _LIMIT_RE.findall(text)}


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """`ip mptcp endpoint show`, one endpoint a line: "192.0.2.2 id 1 subflow backup dev wana"."""
    found: list[Endpoint] = []
    for line in text.splitlines():
        match = _ENDPOINT_RE.match(line.strip())
        if match is None:
            continue
        words = match["rest"].split()
        device = words[words.index("dev") + 1] if "dev" in words[:-1] else None
        found.append(
            Endpoint(
                match["address"],
                int(match["id"]),
                frozenset(w for w in words if w in _ENDPOINT_FLAGS),
                device,
            )
        )
    return tuple(found)


def kernel_enabled(sysctl: Path = SYSCTL_ENABLED) -> bool | None:
    """net.mptcp.enabled; None when the kernel has no MPTCP."""
    try:
        return sysctl.read_text(encoding="ascii").strip() == "1"
    except OSError:
        return None


def read_kernel(sysctl: Path = SYSCTL_ENABLED, timeout: float = 5.0) -> KernelMptcp:
    """The kernel's MPTCP state in this namespace: the sysctl, and the limits and endpoints as iproute2's
    `ip mptcp` shows them (None/() when `ip` is missing or too old to know MPTCP)."""
    enabled = kernel_enabled(sysctl)
    ip = shutil.which("ip", path="/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")
    if enabled is None or ip is None:
        return KernelMptcp(enabled, None, None)

    def show(what: str) -> str | None:
        try:
            proc = subprocess.run(
                [ip, "mptcp", what, "show"], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    limits = parse_limits(show("limits") or "")
    return KernelMptcp(
        enabled,
        limits.get("subflows"),
        limits.get("add_addr_accepted"),
        parse_endpoints(show("endpoint") or ""),
    )
