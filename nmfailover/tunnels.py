"""WireGuard tunnels follow the switch (NMFAILOVER_WIREGUARD_FOLLOW).

WireGuard remembers, per peer, the local address (and device) it last sent from. After the default route has
moved that address still belongs to the old uplink, so the tunnel goes on leaving through it: dead when that
uplink's upstream is dead, and never back on its own (wireguard-go pins the device too; the kernel does
notice a new device, but only once the cached route is invalidated). Setting a peer's endpoint again, even
to the same value, drops that cache, and the next packet takes the current route.

So after every switch, as a switch listener (after the routes changed, never delaying them), each peer of
each followed WireGuard interface whose endpoint is now routed through the uplink carrying traffic gets its
endpoint set again:

- interfaces NetworkManager manages (device type wireguard): by NetworkManager, a Reapply of the device's
  applied connection unchanged (nm.py), never by `wg` behind its back, which NetworkManager would not know of;
- the others (wg-quick, wireguard-go): `wg set IF peer KEY endpoint HOST:PORT`. That needs CAP_NET_ADMIN
  for a kernel interface and write access to /var/run/wireguard/IF.sock for a userspace one.

The unit grants CAP_NET_ADMIN only through a drop-in (KERNEL_WIREGUARD_DROP_IN), since most machines have no
such tunnel. Without it a followed kernel interface outside NetworkManager is refused at start when named
(exit 2), an error at start when found by auto, and at each switch a failure naming the drop-in: never a
`wg set` that fails with a bare "Operation not permitted".

A peer whose endpoint is routed elsewhere (a more specific route, another device, the tunnel itself) is left
alone: the user pinned it. A tunnel that cannot be moved is logged once with the reason; all of it runs
within FOLLOW_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from loguru import logger

from .config import Settings
from .engine import SwitchEvent
from .errors import ConfigError, NMError
from .nm import WireGuardDevice
from .status import TunnelMove, TunnelsStatus

VARIABLE = "NMFAILOVER_WIREGUARD_FOLLOW"
COMMAND_TIMEOUT = 2.0  # each `wg` or `ip` call
FOLLOW_TIMEOUT = 5.0  # everything one switch sets off; the switch itself is long done by then
BY_NM, BY_WG = "NetworkManager", "wg"
AUTO = ("auto",)  # Settings.wireguard_follow's default: every WireGuard interface there is at the switch
CAP_NET_ADMIN = 12  # linux/capability.h
KERNEL_WIREGUARD_DROP_IN = "kernel-wireguard.conf"
NEEDS_NET_ADMIN = (
    "a kernel WireGuard interface outside NetworkManager (wg-quick's): moving it needs CAP_NET_ADMIN, which "
    f"this process lacks; the service gets it from the drop-in {KERNEL_WIREGUARD_DROP_IN} (`nmfailover "
    "install-system-files --kernel-wireguard`, or the .deb's /usr/share/doc/nmfailover/examples/"
    f"{KERNEL_WIREGUARD_DROP_IN}; see the README)"
)

# argv, timeout -> (exit status, stdout, stderr); injectable so the decisions can be tested without root.
Runner = Callable[[Sequence[str], float], Awaitable[tuple[int, str, str]]]


def effective_capabilities(proc_status: str) -> int:
    """The CapEff mask of a /proc/PID/status text (0 if it has none)."""
    for line in proc_status.splitlines():
        name, _, value = line.partition(":")
        if name == "CapEff":
            return int(value.strip(), 16)
    return 0


def has_capability(capability: int, proc_status: Path = Path("/proc/self/status")) -> bool:
    return bool(effective_capabilities(proc_status.read_text()) >> capability & 1)


class WireGuardNM(Protocol):
    """What tunnels.py asks of NetworkManager (nm.NetworkManagerClient)."""

    async def wireguard_devices(self) -> list[WireGuardDevice]: ...

    async def reapply_wireguard(self, device: str) -> None: ...


async def run_command(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a hung `wg` is killed alone, never with the daemon's signals
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise TimeoutError(f"{argv[0]} did not finish within {timeout:g} s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass(frozen=True)
class Peer:
    interface: str
    public_key: str
    endpoint: str  # HOST:PORT as WireGuard shows it ([...] around IPv6); NetworkManager's may be a name
    fwmark: int = 0
    device: str | None = None  # NetworkManager's device path when it manages the interface

    @property
    def host(self) -> str:
        return self.endpoint.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class Moved:
    interface: str
    peer: str  # public key
    endpoint: str
    via: str  # the uplink's interface it now leaves through
    by: str  # BY_NM or BY_WG


@dataclass
class Outcome:
    """What the last switch did to the tunnels (status)."""

    at: float | None = None  # wall-clock time of that switch
    moved: list[Moved] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # interface -> why it was not moved


class Tunnels:
    """The switch listener; `names` is Settings.wireguard_follow (AUTO, or () when off)."""

    def __init__(
        self,
        names: tuple[str, ...],
        nm: WireGuardNM,
        run: Runner = run_command,
        wg: str | None = "",
        ip: str = "",
        timeout: float = FOLLOW_TIMEOUT,
        net_admin: bool | None = None,
    ) -> None:
        """`wg`, `ip`: the tools' paths, "" to look them up on PATH; `wg` None: not installed. `net_admin`:
        whether `wg set` may change kernel interfaces, None to ask this process's capabilities."""
        self.names = None if names == AUTO else names  # None: every WireGuard interface
        self.nm = nm
        self.run = run
        self.wg = shutil.which("wg") if wg == "" else wg
        self.ip = ip or shutil.which("ip", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "ip"
        self.timeout = timeout
        self.net_admin = has_capability(CAP_NET_ADMIN) if net_admin is None else net_admin
        self.last = Outcome()
        self._logged: set[tuple[str, str]] = set()
        self._order = asyncio.Lock()  # a later switch's moves come after the earlier one's

    @property
    def enabled(self) -> bool:
        return self.names != ()

    # -- finding tunnels ------------------------------------------------------------------------------

    async def _wg(self, *args: str) -> str:
        assert self.wg is not None
        code, out, err = await self.run([self.wg, *args], COMMAND_TIMEOUT)
        if code != 0:
            raise RuntimeError(f"wg {' '.join(args)}: {_first_line(err) or f'exit status {code}'}")
        return out

    async def _wg_interfaces(self) -> list[str]:
        """WireGuard interfaces `wg` knows in this network namespace (kernel and userspace)."""
        if self.wg is None:
            return []
        # wg lists userspace interfaces by the sockets in /var/run/wireguard, whatever their namespace.
        local = {name for _, name in socket.if_nameindex()}
        return [name for name in (await self._wg("show", "interfaces")).split() if name in local]

    async def _kernel_wireguard_links(self) -> list[str]:
        """Kernel WireGuard links, found without wg (which is what moving them would need)."""
        code, out, _ = await self.run([self.ip, "-j", "link", "show", "type", "wireguard"], COMMAND_TIMEOUT)
        if code != 0 or not out.strip():
            return []
        return [str(link["ifname"]) for link in json.loads(out) if "ifname" in link]

    async def _others(self, managed: set[str]) -> list[str]:
        found = await self._wg_interfaces() if self.wg is not None else await self._kernel_wireguard_links()
        return [name for name in found if name not in managed]

    async def unmovable(self, others: Sequence[str]) -> list[str]:
        """Those of `others` (followed, outside NetworkManager) this process may not move: kernel
        interfaces, without CAP_NET_ADMIN."""
        if self.net_admin or not others:
            return []
        kernel = set(await self._kernel_wireguard_links())
        return [name for name in others if name in kernel]

    async def interfaces(self) -> tuple[list[WireGuardDevice], list[str]]:
        """NetworkManager's activated WireGuard devices, and the other WireGuard interfaces."""
        managed = await self.nm.wireguard_devices()
        return managed, await self._others({d.interface for d in managed})

    async def _wg_peers(self, interface: str) -> list[Peer]:
        fwmark_text = (await self._wg("show", interface, "fwmark")).strip()
        fwmark = int(fwmark_text, 0) if fwmark_text not in ("", "off") else 0
        peers = []
        for line in (await self._wg("show", interface, "endpoints")).splitlines():
            key, _, endpoint = line.strip().partition("\t")
            if key and endpoint and endpoint != "(none)":
                peers.append(Peer(interface, key, endpoint, fwmark))
        return peers

    async def _route_device(self, peer: Peer) -> str:
        """The device the kernel sends a new packet to the peer's endpoint through (with the tunnel's
        fwmark, as WireGuard marks its own packets: wg-quick's and NetworkManager's policy routing)."""
        host = peer.host
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:  # a name in a NetworkManager profile: resolved as NetworkManager does, first answer
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
            host = str(infos[0][4][0])
        argv = [self.ip, "-j", "route", "get", host]
        if peer.fwmark:
            argv += ["mark", str(peer.fwmark)]
        code, out, err = await self.run(argv, COMMAND_TIMEOUT)
        if code != 0:
            raise RuntimeError(f"no route to {host}: {_first_line(err)}")
        routes = json.loads(out)
        return str(routes[0].get("dev", "")) if routes else ""

    # -- moving them ------------------------------------------------------------------------------------

    async def on_switch(self, event: SwitchEvent) -> None:
        """A switch listener: runs after the routes changed, never longer than `timeout`, never raises."""
        if not self.enabled:
            return
        async with self._order:
            outcome = Outcome(at=event.at)
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._follow(event, outcome)
            except TimeoutError:
                outcome.failed.setdefault("*", f"gave up after {self.timeout:g} s")
            except Exception as exc:  # noqa: BLE001 - a tunnel's trouble must never touch the daemon
                outcome.failed.setdefault("*", _describe(exc))
            self.last = outcome
            # A tunnel that moved again gets its next failure logged again.
            self._logged = {k for k in self._logged if k[0] not in {m.interface for m in outcome.moved}}
            for interface, why in outcome.failed.items():
                self._log_failure(interface, why)
            if outcome.moved:
                logger.info(
                    "WireGuard followed the switch to {} in {:.0f} ms: {}",
                    event.device,
                    (time.monotonic() - started) * 1000,
                    ", ".join(
                        f"{m.interface} peer {m.peer[:8]}... {m.endpoint} (by {m.by})" for m in outcome.moved
                    ),
                )

    async def _follow(self, event: SwitchEvent, outcome: Outcome) -> None:
        # Either way of finding tunnels may fail alone; the other's tunnels are moved all the same.
        managed: list[WireGuardDevice] = []
        others: list[str] = []
        try:
            managed = await self.nm.wireguard_devices()
        except NMError as exc:
            outcome.failed["*"] = f"cannot list NetworkManager's WireGuard devices: {_describe(exc)}"
        try:
            others = await self._others({d.interface for d in managed})
        except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
            outcome.failed["*"] = f"cannot list WireGuard interfaces: {_describe(exc)}"
        chosen = set(self.names) if self.names is not None else None
        for device in managed:
            if chosen is None or device.interface in chosen:
                await self._move_managed(device, event, outcome)
        followed = [name for name in others if chosen is None or name in chosen]
        try:
            unmovable = set(await self.unmovable(followed))
        except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
            outcome.failed["*"] = f"cannot list the kernel's WireGuard interfaces: {_describe(exc)}"
            unmovable = set()
        for interface in followed:
            if interface in unmovable:
                outcome.failed[interface] = NEEDS_NET_ADMIN
            else:
                await self._move_wg(interface, event, outcome)
        if chosen is not None:
            seen = {d.interface for d in managed} | set(others)
            for name in sorted(chosen - seen):
                outcome.failed[name] = "no such WireGuard interface any more"

    async def _following(self, peers: Sequence[Peer], event: SwitchEvent) -> list[Peer]:
        """The peers whose endpoint is now reached through the uplink carrying traffic."""
        found = []
        for peer in peers:
            via = await self._route_device(peer)
            if via == event.device:
                found.append(peer)
            else:
                logger.debug(
                    "WireGuard {} peer {}... left alone: {} is routed via {}, not the default route ({})",
                    peer.interface,
                    peer.public_key[:8],
                    peer.endpoint,
                    via or "nothing",
                    event.device,
                )
        return found

    async def _move_managed(self, device: WireGuardDevice, event: SwitchEvent, outcome: Outcome) -> None:
        peers = [
            Peer(device.interface, key, ep, device.fwmark, device.path) for key, ep in device.peers if ep
        ]
        try:
            following = await self._following(peers, event)
        except (RuntimeError, TimeoutError, OSError, ValueError, IndexError) as exc:
            outcome.failed[device.interface] = _describe(exc)
            return
        try:
            if following:
                await self.nm.reapply_wireguard(device.path)
        except NMError as exc:
            outcome.failed[device.interface] = f"NetworkManager could not reapply it: {_describe(exc)}"
            return
        outcome.moved += [
            Moved(p.interface, p.public_key, p.endpoint, event.device, BY_NM) for p in following
        ]

    async def _move_wg(self, interface: str, event: SwitchEvent, outcome: Outcome) -> None:
        if self.wg is None:
            outcome.failed[interface] = "wg (Debian: wireguard-tools) is not installed"
            return
        try:
            for peer in await self._following(await self._wg_peers(interface), event):
                await self._wg("set", interface, "peer", peer.public_key, "endpoint", peer.endpoint)
                outcome.moved.append(Moved(interface, peer.public_key, peer.endpoint, event.device, BY_WG))
        except (RuntimeError, TimeoutError, OSError, ValueError, IndexError) as exc:
            outcome.failed[interface] = _describe(exc)

    def _log_failure(self, interface: str, why: str) -> None:
        # Once per tunnel and reason: a tunnel that can never be moved must not fill the log at every switch.
        if (interface, why) in self._logged:
            logger.debug("WireGuard {} not moved (again): {}", interface, why)
            return
        self._logged.add((interface, why))
        what = "WireGuard tunnels" if interface == "*" else f"WireGuard {interface}"
        logger.warning("{} not moved to the new uplink: {}", what, why)

    def status(self) -> TunnelsStatus | None:
        """The `tunnels` object of Status(): None when the option is off."""
        if not self.enabled:
            return None
        return TunnelsStatus(
            follow="auto" if self.names is None else tuple(self.names),
            switch_at=self.last.at,
            moved=tuple(TunnelMove(**asdict(m)) for m in self.last.moved),
            failed=dict(self.last.failed),
        )


async def check_names(settings: Settings, nm: WireGuardNM, tunnels: Tunnels | None = None) -> None:
    """At start: every interface NMFAILOVER_WIREGUARD_FOLLOW names must be a WireGuard interface here, and
    one this process can move; with auto, a kernel interface it cannot move is an error in the log."""
    if settings.wireguard_follow == ():
        return
    tunnels = tunnels or Tunnels(settings.wireguard_follow, nm)
    if settings.wireguard_follow == AUTO:
        if not tunnels.net_admin:
            await _log_unmovable(tunnels)
        return
    try:
        managed, others = await tunnels.interfaces()
        unmovable = await tunnels.unmovable([name for name in others if name in settings.wireguard_follow])
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        raise ConfigError(VARIABLE, f"cannot list the WireGuard interfaces: {_describe(exc)}") from exc
    if unmovable:
        raise ConfigError(VARIABLE, f"{unmovable[0]!r} is {NEEDS_NET_ADMIN}")
    known = sorted({d.interface for d in managed} | set(others))
    local = {name for _, name in socket.if_nameindex()}
    for name in settings.wireguard_follow:
        if name in known:
            continue
        what = "is not a WireGuard interface" if name in local else "is no interface here"
        listing = ", ".join(known) if known else "there are none"
        hint = (
            ""
            if tunnels.wg is not None or known
            else " (wg from wireguard-tools finds those not in NetworkManager)"
        )
        raise ConfigError(VARIABLE, f"{name!r} {what}; WireGuard interfaces: {listing}{hint}")


async def _log_unmovable(tunnels: Tunnels) -> None:
    try:
        managed, others = await tunnels.interfaces()
        unmovable = await tunnels.unmovable(others)
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        logger.warning("cannot list the WireGuard interfaces to follow: {}", _describe(exc))
        return
    for name in unmovable:
        logger.error("WireGuard {} will not follow the switches: it is {}", name, NEEDS_NET_ADMIN)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
