"""`nmfailover doctor`: is this machine set up for nmfailover? One line per check, and a fix for each failure.

    ok    NetworkManager 1.42.4 reachable on the system bus
    FAIL  unit /etc/systemd/system/nmfailover.service missing — fix: nmfailover install-system-files

Exit 0 only if no check failed; "skip" lines are checks that cannot apply here (no systemd) or that wait on
an earlier failure, which already fails the run. It reads the settings like the daemon (environment over
the env file) and changes nothing. `root` (--root) looks for the system files under another directory,
such as one `install-system-files --root` wrote; NetworkManager, the bus, the executable and the probes
are still this machine's.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TextIO

from .config import DEFAULT_ENV_FILE, ENV_FILE_VARIABLE, Settings, load_settings
from .control import BUS_NAME
from .engine import find_uplinks, role_name
from .errors import ConfigError, NMError, ProfileError
from .mptcp import KernelMptcp, read_kernel
from .nm import DeviceState, LinkState, NetworkManagerClient, Profile
from .probe import Link, probe_round
from .system_files import (
    DBUS_POLICY,
    DISPATCHER_HOOK,
    ENV_FILE,
    PACKAGED_DBUS_POLICY,
    PACKAGED_DISPATCHER_HOOK,
    UNIT_DIRS,
    UNIT_NAME,
    sandbox_hidings,
    systemd_running,
    under_root,
)

if TYPE_CHECKING:
    from .tunnels import WireGuardNM  # imported when a tunnel is followed, as the daemon does

OK, FAIL, SKIP = "ok", "FAIL", "skip"
SYSTEMCTL_TIMEOUT = 10.0
_ENABLED = ("enabled", "enabled-runtime")


@dataclass(frozen=True)
class Check:
    status: str  # OK, FAIL or SKIP
    text: str
    fix: str = ""

    def line(self) -> str:
        line = f"{self.status:<6}{self.text}"
        return f"{line} — fix: {self.fix}" if self.fix else line


class Doctor:
    """The checks, in order; paths and the systemctl to ask are parameters so tests can point them away."""

    def __init__(
        self,
        root: Path = Path("/"),
        environ: Mapping[str, str] | None = None,
        systemctl: str = "systemctl",
    ) -> None:
        self.root = root
        self.environ = dict(os.environ if environ is None else environ)
        self.systemctl = systemctl
        self.relocated = root.resolve() != Path("/")
        self.install_fix = "nmfailover install-system-files" + (
            f" --root {shlex.quote(str(root))}" if self.relocated else ""
        )

    async def checks(self) -> AsyncIterator[Check]:
        settings = self._settings()
        yield settings[0]
        client = NetworkManagerClient()
        try:
            nm = await self._networkmanager(client)
            yield nm
            yield self._dbus_policy()
            yield self._dispatcher_hook()
            for check in self._unit():
                yield check
            if settings[1] is not None and nm.status == OK:
                for check in await self.wireguard_capability(settings[1], client):
                    yield check
            if settings[1] is None or nm.status != OK:
                yield Check(
                    SKIP,
                    "uplinks not checked: " + ("no settings" if settings[1] is None else "no NetworkManager"),
                )
                return
            links: list[tuple[int, Profile, LinkState]] = []
            async for check, found in self._profiles(client, settings[1]):
                yield check
                if found is not None:
                    links.append(found)
        finally:
            await client.close()
        for check in await self._probes(settings[1], links):
            yield check
        if settings[1] is not None:
            uplinks = [(index, link.interface) for index, _, link in links if link.interface is not None]
            for check in mptcp_checks(settings[1].mptcp, read_kernel(), uplinks):
                yield check

    # -- settings and NetworkManager ----------------------------------------------------------------

    def _settings(self) -> tuple[Check, Settings | None]:
        env = dict(self.environ)
        if self.relocated and ENV_FILE_VARIABLE not in env and under_root(self.root, ENV_FILE).exists():
            env[ENV_FILE_VARIABLE] = str(under_root(self.root, ENV_FILE))
        named = env.get(ENV_FILE_VARIABLE)
        env_file = DEFAULT_ENV_FILE if named is None else Path(named) if named else None
        where = (
            f"the environment and {env_file}"
            if env_file is not None and env_file.exists()
            else f"the environment (no {env_file})"
            if env_file is not None
            else "the environment"
        )
        edit = f"edit {env_file}" if env_file is not None else "set it in the environment"
        try:
            settings = load_settings(env)
        except ConfigError as exc:
            # The environment wins over the file: editing the file would not help then.
            fix = f"correct {exc.variable} in the environment" if exc.variable in self.environ else edit
            if exc.variable in ("NMFAILOVER_UPLINKS", "PRIMARY_CONNECTION", "BACKUP_CONNECTION"):
                fix += " (`nmcli -f NAME,UUID,DEVICE connection show` lists the profiles)"
            return Check(FAIL, f"settings: {exc}", fix), None
        uplinks = ", ".join(settings.uplinks) or "found at run time (auto)"
        return Check(OK, f"settings: uplinks {uplinks} (from {where})"), settings

    async def _networkmanager(self, client: NetworkManagerClient) -> Check:
        try:
            await client.connect()
        except NMError as exc:
            return Check(FAIL, f"NetworkManager not reachable: {exc}", "start dbus: systemctl start dbus")
        try:
            version = await client.version()
        except NMError as exc:
            fix = "systemctl enable --now NetworkManager; journalctl -u NetworkManager says why it stopped"
            return Check(FAIL, f"NetworkManager not reachable: {exc}", fix)
        return Check(OK, f"NetworkManager {version} reachable on the system bus")

    # -- the system files ---------------------------------------------------------------------------

    def _dbus_policy(self) -> Check:
        candidates = [under_root(self.root, p) for p in (DBUS_POLICY, PACKAGED_DBUS_POLICY)]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            return Check(
                FAIL,
                f"D-Bus policy {candidates[0]} missing: the daemon cannot own {BUS_NAME}",
                self.install_fix,
            )
        try:
            tree = ElementTree.parse(path)
        except (OSError, ElementTree.ParseError) as exc:
            return Check(
                FAIL,
                f"D-Bus policy {path} unreadable ({exc}): dbus ignores it",
                self.install_fix + " --force",
            )
        owners = [e for e in tree.iter("allow") if e.get("own") == BUS_NAME]
        if not owners:
            return Check(
                FAIL, f"D-Bus policy {path} lets nobody own {BUS_NAME}", self.install_fix + " --force"
            )
        return Check(OK, f"D-Bus policy {path}")

    def _dispatcher_hook(self) -> Check:
        local = under_root(self.root, DISPATCHER_HOOK)
        packaged = under_root(self.root, PACKAGED_DISPATCHER_HOOK)
        if local.is_symlink() and os.readlink(local) == "/dev/null":
            return Check(FAIL, f"dispatcher hook disabled: {local} is a symlink to /dev/null", f"rm {local}")
        # NetworkManager runs the one in /etc when both exist.
        path = local if os.path.lexists(local) else packaged if os.path.lexists(packaged) else None
        if path is None:
            return Check(FAIL, f"dispatcher hook {local} missing", self.install_fix)
        try:
            info = path.stat()
        except OSError as exc:
            return Check(FAIL, f"dispatcher hook {path} unusable: {exc.strerror}", self.install_fix)
        mode = stat.S_IMODE(info.st_mode)
        # nm-dispatcher's own rules (check_permissions()): it skips the script otherwise, quietly.
        problems = []
        if not stat.S_ISREG(info.st_mode):
            problems.append("is not a regular file")
        if info.st_uid != 0:
            problems.append(f"is owned by uid {info.st_uid}, not root")
        writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit]
        if writable:
            problems.append(f"is writable by {' and '.join(writable)} (mode {mode:04o})")
        if not mode & stat.S_IXUSR:
            problems.append(f"is not executable (mode {mode:04o})")
        if mode & stat.S_ISUID:
            problems.append("is setuid")
        if problems:
            fix = self.install_fix if path == local else f"chown root: {path}; chmod 0755 {path}"
            return Check(
                FAIL, f"dispatcher hook {path} {', '.join(problems)}: NetworkManager ignores it", fix
            )
        return Check(OK, f"dispatcher hook {path} (root, {mode:04o})")

    def _unit(self) -> list[Check]:
        if shutil.which(self.systemctl) is None:
            return [
                Check(
                    SKIP,
                    f"systemd not found (no {self.systemctl}): {UNIT_NAME} not checked; "
                    "start `nmfailover run` from your service manager",
                )
            ]
        # systemd's order: the first one found is the one it loads.
        candidates = [under_root(self.root, d / UNIT_NAME) for d in UNIT_DIRS]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            return [Check(FAIL, f"unit {candidates[0]} missing", self.install_fix)]
        text = path.read_text(encoding="utf-8", errors="replace")
        executable = exec_start(text)
        if executable is None:
            found = Check(FAIL, f"unit {path} has no ExecStart=", self.install_fix)
        elif not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            found = Check(
                FAIL, f"unit {path} runs {executable}, which is not an executable file", self.install_fix
            )
        elif hidings := sandbox_hidings(text, _program_paths(executable)):
            found = Check(
                FAIL,
                f"unit {path} runs {executable}, which lives under {hidings[0].why}: the service "
                "cannot start",
                f"{self.install_fix} --force (it writes {hidings[0].loosened})",
            )
        else:
            found = Check(OK, f"unit {path} runs {executable}")
        return [found, self._enabled()]

    def unit_capabilities(self) -> frozenset[str] | None:
        """The bounding set the unit and its drop-ins give the service; None: no unit, or no limit known."""
        unit = next((p for d in UNIT_DIRS if (p := under_root(self.root, d / UNIT_NAME)).exists()), None)
        if unit is None:
            return None
        # Drop-ins in name order, a name in an earlier directory hiding the same name in a later one.
        drop_ins: dict[str, Path] = {}
        for directory in reversed(UNIT_DIRS):
            for path in under_root(self.root, directory / f"{UNIT_NAME}.d").glob("*.conf"):
                drop_ins[path.name] = path
        texts = [unit, *(drop_ins[name] for name in sorted(drop_ins))]
        return bounding_set(p.read_text(encoding="utf-8", errors="replace") for p in texts)

    async def wireguard_capability(self, settings: Settings, client: WireGuardNM) -> list[Check]:
        """A followed kernel WireGuard tunnel outside NetworkManager, and a unit without CAP_NET_ADMIN."""
        capabilities = self.unit_capabilities()
        if not settings.wireguard_follow or capabilities is None:
            return []
        from .tunnels import KERNEL_WIREGUARD_DROP_IN, Tunnels

        tunnels = Tunnels(settings.wireguard_follow, client, net_admin="CAP_NET_ADMIN" in capabilities)
        try:
            _, others = await tunnels.interfaces()
            chosen = tunnels.names
            unmovable = await tunnels.unmovable([n for n in others if chosen is None or n in chosen])
        except (RuntimeError, TimeoutError, OSError, ValueError, NMError) as exc:
            return [Check(SKIP, f"WireGuard tunnels not checked: {exc}")]
        if not unmovable:
            return []
        if self.relocated or under_root(self.root, UNIT_DIRS[0] / UNIT_NAME).exists():
            fix = f"{self.install_fix} --kernel-wireguard"
        else:  # the .deb's unit
            fix = (
                f"install -D -m 0644 /usr/share/doc/nmfailover/examples/{KERNEL_WIREGUARD_DROP_IN} "
                f"{UNIT_DIRS[0] / (UNIT_NAME + '.d') / KERNEL_WIREGUARD_DROP_IN}"
            )
        fix += "; systemctl daemon-reload; systemctl restart nmfailover"
        what = ", ".join(unmovable)
        return [
            Check(
                FAIL,
                f"WireGuard {what}: a kernel tunnel outside NetworkManager, to follow the switch, but the "
                "unit grants no CAP_NET_ADMIN",
                fix,
            )
        ]

    def _systemctl(self, *args: str) -> tuple[int, str]:
        argv = [self.systemctl, *([f"--root={self.root}"] if self.relocated else []), *args]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return -1, str(exc)
        # is-enabled and is-active print the state on stdout; when they cannot tell, the reason on stderr.
        lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
        return done.returncode, lines[-1] if lines else ""

    def _enabled(self) -> Check:
        root_option = f" --root={shlex.quote(str(self.root))}" if self.relocated else ""
        _, state = self._systemctl("is-enabled", UNIT_NAME)
        if state not in _ENABLED:
            fix = f"systemctl{root_option} enable {'' if self.relocated else '--now '}nmfailover"
            if state == "masked":
                fix = f"systemctl{root_option} unmask nmfailover; " + fix
            return Check(FAIL, f"unit {UNIT_NAME} is {state or 'in an unknown state'}, not enabled", fix)
        if self.relocated or not systemd_running():
            return Check(OK, f"unit {UNIT_NAME} {state}")
        _, active = self._systemctl("is-active", UNIT_NAME)
        if active != "active":
            fix = "systemctl restart nmfailover; journalctl -u nmfailover says why it stopped"
            return Check(FAIL, f"unit {UNIT_NAME} {state} but {active or 'not running'}", fix)
        return Check(OK, f"unit {UNIT_NAME} {state} and active")

    # -- uplinks ------------------------------------------------------------------------------------

    async def _profiles(
        self, client: NetworkManagerClient, settings: Settings
    ) -> AsyncIterator[tuple[Check, tuple[int, Profile, LinkState] | None]]:
        if settings.auto_uplinks:
            async for found in self._found(client, settings):
                yield found
            return
        seen: dict[str, str] = {}
        fix_spec = "set NMFAILOVER_UPLINKS to existing profiles (`nmcli -f NAME,UUID,DEVICE connection show`)"
        for index, spec in enumerate(settings.uplinks):
            role = role_name(index)
            try:
                (profile,) = await client.resolve([spec])
                link = await client.link_state(profile.uuid)
            except ProfileError as exc:
                yield Check(FAIL, f"uplink {role}: {exc}", fix_spec), None
                continue
            except NMError as exc:
                yield Check(FAIL, f"uplink {role} {spec!r}: {exc}", "systemctl status NetworkManager"), None
                continue
            if profile.uuid in seen:
                yield (
                    Check(
                        FAIL,
                        f"uplink {role} {spec!r} is the same profile as {seen[profile.uuid]!r}",
                        fix_spec,
                    ),
                    None,
                )
                continue
            seen[profile.uuid] = spec
            if not link.activated:
                fix = f"nmcli connection up {shlex.quote(profile.uuid)} (check its device and cable)"
                state = (
                    "not active"
                    if link.state == DeviceState.UNKNOWN
                    else f"{link.state_name} on its device, not activated"
                )
                yield Check(FAIL, f"uplink {role}: profile {profile.id!r} is {state}", fix), None
                continue
            yield (
                Check(OK, f"uplink {role}: profile {profile.id!r} active on {link.interface}"),
                (index, profile, link),
            )

    async def _found(
        self, client: NetworkManagerClient, settings: Settings
    ) -> AsyncIterator[tuple[Check, tuple[int, Profile, LinkState] | None]]:
        """The uplinks found among the active connections, in their order and why, and those left out."""
        try:
            choice = await find_uplinks(client, settings)
            links = [await client.link_state(r.profile.uuid) for r in choice.uplinks]
        except NMError as exc:
            yield Check(FAIL, f"uplinks: {exc}", "systemctl status NetworkManager"), None
            return
        for index, (ranked, link) in enumerate(zip(choice.uplinks, links, strict=True)):
            profile = ranked.profile
            yield (
                Check(OK, f"uplink {role_name(index)}: {profile.id!r} on {link.interface} ({ranked.why})"),
                (index, profile, link),
            )
        for left in choice.left:
            yield Check(OK, f"not an uplink: {left.candidate.profile.id!r}: {left.why}"), None
        if len(choice.uplinks) < 2:
            # Not a fault of the installation: the daemon waits for a second uplink and takes it then.
            count = len(choice.uplinks)
            hint = "connect a second way out (cable, Wi-Fi, phone), or name them in NMFAILOVER_UPLINKS"
            yield Check(OK, f"{count} uplink(s) found: nothing to fail over to yet; {hint}"), None

    async def _probes(
        self, settings: Settings | None, links: list[tuple[int, Profile, LinkState]]
    ) -> list[Check]:
        if settings is None or not links:
            return []
        rounds = await asyncio.gather(
            *(
                probe_round(
                    Link(link.interface, link.nameservers),
                    settings.probe_targets,
                    settings.probe_timeout,
                    settings.probe_quorum,
                )
                for _, _, link in links
            )
        )
        checks = []
        for (index, _, link), result in zip(links, rounds, strict=True):
            where = f"uplink {role_name(index)} ({link.interface})"
            if result.ok:
                fastest = min(r.latency for r in result.results if r.ok)
                checks.append(
                    Check(
                        OK, f"{where} reaches the internet: {result.summary}, fastest {fastest * 1000:.0f} ms"
                    )
                )
            else:
                fix = "check that uplink's router or modem; `nmfailover check` shows each target"
                if os.geteuid() != 0:
                    fix += " (probes bind to the device, which needs root)"
                checks.append(Check(FAIL, f"{where} probe failed: {result.summary}", fix))
        return checks


def _program_paths(executable: str) -> list[PurePosixPath]:
    """The executable and, for a script, its interpreter, each also with its links resolved."""
    paths = [executable]
    try:
        with open(executable, "rb") as script:
            first = script.readline(4096)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        paths += words[:1]
    return [PurePosixPath(p) for path in paths for p in dict.fromkeys((path, os.path.realpath(path)))]


def bounding_set(texts: Iterable[str]) -> frozenset[str] | None:
    """CapabilityBoundingSet= over a unit and its drop-ins, in order: lines add up, an empty one resets.
    None: no such line (every capability), or one that inverts (~), which this does not follow."""
    granted: set[str] | None = None
    for text in texts:
        for value in re.findall(r"^\s*CapabilityBoundingSet\s*=(.*)$", text, re.MULTILINE):
            if value.strip().startswith("~"):
                return None
            granted = set() if granted is None or not value.strip() else granted
            granted.update(value.split())
    return None if granted is None else frozenset(granted)


def mptcp_checks(setting: bool, kernel: KernelMptcp, uplinks: list[tuple[int, str]]) -> list[Check]:
    """Whether Multipath TCP connections can survive a failover here: the kernel's switch and limits, and
    each active uplink's endpoints (`uplinks`: index and interface). Never a failure: MPTCP is a bonus, and
    without it the daemon still moves every new connection; what is missing is said, with its fix."""
    if not setting:
        return [
            Check(
                SKIP, "Multipath TCP: NMFAILOVER_MPTCP=false: NetworkManager's own endpoints left as they are"
            )
        ]
    if kernel.enabled is None:
        return [Check(SKIP, "Multipath TCP: not in this kernel: a failover breaks every open connection")]
    if not kernel.enabled:
        return [
            Check(
                SKIP,
                "Multipath TCP: off in the kernel (net.mptcp.enabled=0): a failover breaks every open "
                "connection",
                "sysctl -w net.mptcp.enabled=1, and the same in a file in /etc/sysctl.d/ to keep it",
            )
        ]
    limits = (
        f"limits: subflows {_unknown(kernel.subflows)}, "
        f"add_addr_accepted {_unknown(kernel.add_addr_accepted)}"
    )
    checks = []
    if kernel.subflows is not None and kernel.subflows < 1:
        checks.append(
            Check(
                SKIP,
                f"Multipath TCP: {limits}: a connection gets no subflow through another uplink",
                "ip mptcp limits set subflows 2 (at every boot: the kernel forgets it)",
            )
        )
    else:
        checks.append(
            Check(
                OK,
                f"Multipath TCP on (net.mptcp.enabled=1, {limits}): MPTCP connections to servers that accept "
                "MPTCP survive a failover (mptcpize run PROGRAM makes a program use it)",
            )
        )
    for index, interface in uplinks:
        where = f"{interface} ({role_name(index)})"
        endpoints = kernel.on_device(interface)
        if not endpoints:
            checks.append(
                Check(
                    SKIP,
                    f"Multipath TCP: no endpoint on {where}: no subflow can use it",
                    "give its profile connection.mptcp-flags default (nmcli connection modify PROFILE "
                    "connection.mptcp-flags 0) and a default route",
                )
            )
            continue
        listed = ", ".join(f"{e.address} ({' '.join(sorted(e.flags)) or 'no flags'})" for e in endpoints)
        checks.append(Check(OK, f"Multipath TCP endpoints on {where}: {listed}"))
    return checks


def _unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def exec_start(unit_text: str) -> str | None:
    """The executable a unit's (last) ExecStart= runs."""
    lines = [m.group(1).strip() for m in re.finditer(r"^\s*ExecStart\s*=(.*)$", unit_text, re.MULTILINE)]
    command = next((line for line in reversed(lines) if line), None)
    if command is None:
        return None
    try:
        words = shlex.split(command.lstrip("-@:+!"))
    except ValueError:
        return None
    return words[0].replace("%%", "%").replace("$$", "$") if words else None


async def _collect(doctor: Doctor, out: TextIO) -> bool:
    failed = False
    async for check in doctor.checks():
        print(check.line(), file=out, flush=True)
        failed |= check.status == FAIL
    return failed


def run(
    root: Path = Path("/"),
    environ: Mapping[str, str] | None = None,
    systemctl: str = "systemctl",
    out: TextIO = sys.stdout,
) -> int:
    """Print every check; 0 if none failed, else 1."""
    return 1 if asyncio.run(_collect(Doctor(root, environ, systemctl), out)) else 0
