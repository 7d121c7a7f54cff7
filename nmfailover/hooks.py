"""What a switch sets off outside the daemon: the hook scripts, the failback guard and the webhook.

Hook scripts (NMFAILOVER_HOOKS_DIR) run after every switch, one at a time in name order, each for at most
NMFAILOVER_HOOK_TIMEOUT seconds (then its process group is killed), with AstLinux's arguments:

    $1 STATE        role of the uplink now carrying traffic: PRIMARY, BACKUP, FALLBACK, UPLINK4...
    $2 primary_if   $3 primary_gw   (the most preferred uplink; IPv4 gateway)
    $4 secondary_if $5 secondary_gw $6 secondary_gw_ipv6
                    (the other uplink of this switch: the new one unless that is the primary, else the one
                    traffic left; the backup when there is none, e.g. at start-up)

and the environment of the daemon (less its NMFAILOVER_* settings and systemd's notify socket) plus
NMFAILOVER_STATE, _ACTION, _FROM, _TO (profile ids), _FROM_DEVICE, _DEVICE, _GATEWAY4, _GATEWAY6 (of the
new uplink), _REASON and _AT (ISO 8601). Empty values are empty strings, never missing arguments.

The failback guard (NMFAILOVER_FAILBACK_GUARD) is asked before traffic moves back to a more preferred
uplink, with $1 FAILBACK and the same other arguments and environment (STATE: the uplink it would move to):
exit 0 allows, anything else or a timeout vetoes for now; the daemon asks again a round later.

A file is skipped, with a warning, unless it is a regular executable file owned by root (or the daemon's
user) and not writable by group or others: the rules NetworkManager's dispatcher applies.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from .config import Settings
from .engine import SwitchEvent, UplinkView
from .probe import Link, post_json

MAX_OUTPUT = 4096  # bytes of a hook's output that reach the log
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A hook must not think it is the service (systemd-notify) nor read the daemon's own settings.
_HIDDEN = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def untrusted(path: Path) -> str | None:
    """Why `path` must not be run, or None."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return "writable by group or others"
    if not st.st_mode & 0o111:
        return "not executable"
    return None


def hook_args(state: str, event: SwitchEvent) -> list[str]:
    """AstLinux's six arguments (see the module docstring)."""
    uplinks = event.uplinks
    primary = uplinks[0]
    new, old = event.uplink(event.to_profile), event.uplink(event.from_profile)
    secondary: UplinkView
    if new is not None and new != primary:
        secondary = new
    elif old is not None and old != primary:
        secondary = old
    else:
        secondary = uplinks[1]
    return [
        state,
        primary.interface,
        primary.gateway4,
        secondary.interface,
        secondary.gateway4,
        secondary.gateway6,
    ]


def hook_env(event: SwitchEvent) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NMFAILOVER_") and k not in _HIDDEN}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.update(
        {
            "NMFAILOVER_STATE": event.state,
            "NMFAILOVER_ACTION": event.action,
            "NMFAILOVER_FROM": event.from_profile,
            "NMFAILOVER_TO": event.to_profile,
            "NMFAILOVER_FROM_DEVICE": event.from_device,
            "NMFAILOVER_DEVICE": event.device,
            "NMFAILOVER_GATEWAY4": event.gateway4,
            "NMFAILOVER_GATEWAY6": event.gateway6,
            "NMFAILOVER_REASON": event.reason,
            "NMFAILOVER_AT": iso(event.at),
        }
    )
    return env


async def execute(
    path: Path, argv: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[int | None, str]:
    """Run path; (exit status or None on timeout, its output). The whole process group dies at the timeout."""
    # Output goes to a file, not a pipe: a background child that keeps a pipe open would make a finished
    # hook look hung.
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            str(path),
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,
        )
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            code = None
        except asyncio.CancelledError:  # the daemon is stopping: nothing of the hook may outlive it
            _kill_group(proc.pid)
            raise
        output.seek(0)
        text = output.read(MAX_OUTPUT).decode(errors="replace")
    return code, text


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _log_output(name: str, text: str, level: str = "INFO") -> None:
    for line in text.splitlines()[:20]:
        logger.log(level, "hook {}: {}", name, line)


class SwitchHooks:
    """The hook directory and the failback guard."""

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.hooks_dir
        self.timeout = settings.hook_timeout
        self.guard = settings.failback_guard
        self.guard_timeout = settings.failback_guard_timeout
        self._order = asyncio.Lock()

    def hooks(self) -> list[Path]:
        if self.directory is None:
            return []
        try:
            entries = sorted(self.directory.iterdir(), key=lambda p: p.name)
        except FileNotFoundError:
            return []
        except OSError as exc:
            logger.warning("cannot read the hooks directory {}: {}", self.directory, exc.strerror)
            return []
        found = []
        for path in entries:
            # Editor and package-manager leftovers, like run-parts and the dispatcher ignore them.
            if path.name.startswith(".") or path.name.endswith("~") or ".dpkg-" in path.name or path.is_dir():
                continue
            problem = untrusted(path)
            if problem is not None:
                logger.warning("hook {} skipped: {}", path, problem)
                continue
            found.append(path)
        return found

    async def on_switch(self, event: SwitchEvent) -> None:
        """A switch listener."""
        # A later switch's hooks wait for the earlier one's: a tunnel restarted for the failover must not
        # finish after the one for the failback.
        async with self._order:
            for path in self.hooks():
                await self._run(path, event)

    async def _run(self, path: Path, event: SwitchEvent) -> None:
        started = time.monotonic()
        try:
            code, text = await execute(path, hook_args(event.state, event), hook_env(event), self.timeout)
        except OSError as exc:
            logger.warning("hook {} could not run: {}", path, exc)
            return
        took = time.monotonic() - started
        if code is None:
            _log_output(path.name, text, "WARNING")
            logger.warning(
                "hook {} timed out after {:g} s; killed it and its process group", path, self.timeout
            )
        elif code != 0:
            _log_output(path.name, text, "WARNING")
            logger.warning("hook {} failed with exit status {} after {:.1f} s", path, code, took)
        else:
            _log_output(path.name, text)
            logger.info("hook {} done in {:.1f} s", path, took)

    async def failback_guard(self, event: SwitchEvent) -> bool:
        """The engine's failback guard: True allows the failback."""
        path = self.guard
        if path is None:
            return True
        # A broken guard must not pin traffic to a (maybe metered) backup for good.
        problem = untrusted(path)
        if problem is not None:
            logger.warning("failback guard {} not run ({}); allowing the failback", path, problem)
            return True
        try:
            code, text = await execute(
                path, hook_args("FAILBACK", event), hook_env(event), self.guard_timeout
            )
        except OSError as exc:
            logger.warning("failback guard {} could not run ({}); allowing the failback", path, exc)
            return True
        _log_output(path.name, text)
        if code is None:
            logger.warning(
                "failback guard {} timed out after {:g} s; that vetoes the failback for now",
                path,
                self.guard_timeout,
            )
            return False
        if code != 0:
            logger.info("failback guard {} exited {}: failback to {} vetoed", path, code, event.to_profile)
        return code == 0


class Webhook:
    """POST each switch as JSON, through the uplink the switch moved to, with a short timeout and retries."""

    def __init__(self, url: str, timeout: float = 2.0, delays: Sequence[float] = (1.0, 2.0, 4.0)) -> None:
        self.url = url
        self.timeout = timeout
        self.delays = delays  # before each retry

    def body(self, event: SwitchEvent) -> bytes:
        return json.dumps(
            {
                "event": "switch",
                "action": event.action,
                "state": event.state,
                "from": event.from_profile,
                "to": event.to_profile,
                "from_device": event.from_device,
                "device": event.device,
                "reason": event.reason,
                "host": socket.gethostname(),
                "at": iso(event.at),
                "sent_at": iso(time.time()),
            }
        ).encode()

    async def on_switch(self, event: SwitchEvent) -> None:
        """A switch listener; the engine runs it in the background, so retries never hold up a switch."""
        new = event.uplink(event.to_profile)
        link = Link(event.device or None, new.nameservers if new is not None else ())
        problem = ""
        attempts = len(self.delays) + 1
        for attempt in range(attempts):
            if attempt:
                logger.info(
                    "webhook attempt {} failed: {}; retrying in {:g} s",
                    attempt,
                    problem,
                    self.delays[attempt - 1],
                )
                await asyncio.sleep(self.delays[attempt - 1])
            try:
                status = await post_json(link, self.url, self.body(event), self.timeout)
            except Exception as exc:  # noqa: BLE001 - every failure is a retry, never the daemon's end
                problem = f"{_describe(exc, self.timeout)} (via {link.interface})"
                continue
            if 200 <= status < 300:
                logger.info("webhook: HTTP {} from {} (via {})", status, self.url, link.interface)
                return
            problem = f"HTTP {status} from {self.url}"
            if 400 <= status < 500 and status not in (408, 429):
                break  # the receiver refuses this request; asking again changes nothing
        logger.warning("webhook {} failed: {} (after {} attempt(s))", self.url, problem, attempt + 1)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    detail: Any = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
    return " ".join(str(detail).split())
