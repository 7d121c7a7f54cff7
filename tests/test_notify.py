"""`nmfailover notify` end to end: the agent, run as nobody, on a real session bus with a recording
notification server, and a real "system" bus configured like Debian's with the shipped policy, on which the
test plays the daemon (owning its name, answering Status) and emits Switched signals: for what a recorder
sees exactly (ids chained, hints) and what no real daemon can be made to do on cue (impostors, restarts).
What a person sees under a real notification server and the real daemon: tests/test_desktop.py."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import pytest

from nmfailover import cli as nmfailover_cli
from nmfailover.bus import Message, MessageBus, MessageType
from nmfailover.control import BUS_NAME, INTERFACE, OBJECT_PATH
from nmfailover.engine.state import SwitchEvent, UplinkView
from nmfailover.notify import AGENT_NAME
from tests import status_samples

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "packaging" / "dbus" / "net.nmfailover.Failover1.conf"
NOBODY = 65534
NOTIFICATIONS = "org.freedesktop.Notifications"
T = TypeVar("T")

# Everyone may connect (the agent runs as nobody, the fake server as root) and own names.
SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""

# Debian's system bus default policy (/usr/share/dbus-1/system.conf) plus the shipped policy file: what a
# desktop user's agent meets on a real machine.
SYSTEM_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""

UPLINKS = (
    UplinkView("primary", "Fiber", "wana", "192.0.2.1", "", ()),
    UplinkView("backup", "Hotspot", "wanb", "192.0.2.65", "", ()),
)


def _require_root() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "needs root (the agent runs as nobody, the test owns the daemon's name)"
    elif shutil.which("dbus-daemon") is None:
        problem = "needs dbus-daemon (apt package dbus)"
    if problem is None:
        return
    # CI runs as root with dbus installed: a skip there would hide a broken setup.
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


# -- buses ------------------------------------------------------------------------------------------------


class BusDaemon:
    """A private dbus-daemon listening on `socket`; stop() and start() again for a restarted bus."""

    def __init__(self, config_text: str, workdir: Path, name: str) -> None:
        self.socket = workdir / f"{name}.socket"
        self.address = f"unix:path={self.socket}"
        self._config = workdir / f"{name}.conf"
        self._config.write_text(
            config_text.format(socket=escape(str(self.socket)), policy=escape(str(POLICY)))
        )
        self._log = workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                ["dbus-daemon", f"--config-file={self._config}", "--nofork", "--nopidfile"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_for(f"dbus-daemon on {self.socket}", self.socket.exists, 10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None


class BusThread:
    """An event loop on a thread of its own for the test's bus clients, so that the test itself may block."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self._cancel_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @staticmethod
    async def _cancel_tasks() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _connect(address: str) -> Any:
    bus: Any = await MessageBus(bus_address=address).connect()
    # The test stops buses under its clients: their end is expected, and not worth a warning at exit.
    ended = asyncio.ensure_future(bus.wait_for_disconnect())
    ended.add_done_callback(lambda f: f.cancelled() or f.exception())
    return bus


async def _call(bus: Any, member: str, signature: str = "", body: list[Any] | None = None) -> list[Any]:
    message = Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member=member,
        signature=signature,
        body=body or [],
    )
    reply = await bus.call(message)
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return list(reply.body)


class FakeNotifications:
    """org.freedesktop.Notifications on the session bus: records every Notify and answers with a new id
    each time (as a server does when the notification to replace was closed meanwhile), so that only an
    agent passing on the id it got last chains them right."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.calls: list[dict[str, Any]] = []
        self._next_id = 100
        self._bus: Any = None

    async def start(self) -> None:
        self._bus = await _connect(self.address)
        self._bus.add_message_handler(self._on_message)
        assert await _call(self._bus, "RequestName", "su", [NOTIFICATIONS, 4]) == [1]

    def _on_message(self, msg: Any) -> Any:
        if msg.message_type != MessageType.METHOD_CALL or msg.interface != NOTIFICATIONS:
            return False
        if msg.member == "GetCapabilities":
            return Message.new_method_return(msg, "as", [["body", "body-markup"]])
        if msg.member == "Notify" and msg.signature == "susssasa{sv}i":
            app_name, replaces_id, icon, summary, body, actions, hints, timeout = msg.body
            self._next_id += 1
            self.calls.append(
                {
                    "app_name": app_name,
                    "replaces_id": replaces_id,
                    "app_icon": icon,
                    "summary": summary,
                    "body": body,
                    "actions": actions,
                    "hints": {key: value.value for key, value in hints.items()},
                    "expire_timeout": timeout,
                    "returned_id": self._next_id,
                }
            )
            return Message.new_method_return(msg, "u", [self._next_id])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", msg.member)


class FakeDaemon:
    """The test's stand-in for `nmfailover run` on the system bus: owns its name and emits Switched."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.bus: Any = None
        self.carrying = "primary"

    async def start(self, own: bool = True) -> FakeDaemon:
        self.bus = await _connect(self.address)
        self.bus.add_message_handler(self._on_message)
        if own:
            assert await _call(self.bus, "RequestName", "su", [BUS_NAME, 4]) == [1]
        return self

    def _on_message(self, msg: Any) -> Any:
        if msg.message_type != MessageType.METHOD_CALL or msg.member != "Status":
            return False
        # The backup is metered.
        status = status_samples.status(
            *(
                status_samples.uplink(
                    u.role,
                    u.profile,
                    device=u.interface,
                    metered="yes" if u.role == "backup" else "no",
                    carrying_traffic=u.role == self.carrying,
                )
                for u in UPLINKS
            )
        )
        return Message.new_method_return(msg, "s", [status.to_json()])

    async def switched(self, action: str, to: str, reason: str, destination: str | None = None) -> None:
        if destination is None:
            self.carrying = to
        new = next(u for u in UPLINKS if u.role == to)
        old = next((u for u in UPLINKS if u.role != to), None) if action != "initial" else None
        event = SwitchEvent(
            action=action,
            state=new.role.upper(),
            from_profile=old.profile if old else "",
            to_profile=new.profile,
            from_device=old.interface if old else "",
            device=new.interface,
            gateway4=new.gateway4,
            gateway6="",
            reason=reason,
            at=time.time(),
            uplinks=UPLINKS,
        )
        # As ControlService.on_switch sends it.
        await self.bus.send(
            Message(
                message_type=MessageType.SIGNAL,
                destination=destination,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member="Switched",
                signature="ssss",
                body=[event.from_profile, event.to_profile, event.reason, json.dumps(event.as_dict())],
            )
        )

    async def dns_moved(self, profile: str, servers: list[str], reason: str) -> None:
        # As ControlService.on_dns sends it.
        await self.bus.send(
            Message(
                message_type=MessageType.SIGNAL,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member="DnsMoved",
                signature="sass",
                body=[profile, servers, reason],
            )
        )

    async def unique_name_of(self, uid: int) -> str:
        (names,) = await _call(self.bus, "ListNames")
        for name in names:
            if name.startswith(":") and await _call(self.bus, "GetConnectionUnixUser", "s", [name]) == [uid]:
                return str(name)
        raise LookupError(f"no connection of uid {uid}")

    async def stop(self) -> None:
        self.bus.disconnect()
        await self.bus.wait_for_disconnect()


# -- the agent --------------------------------------------------------------------------------------------


class Agent:
    """`nmfailover notify` in a forked child as nobody (the interpreter may live where nobody cannot read,
    so no exec); its log in a file."""

    def __init__(self, session: str, system: str, log: Path, *args: str) -> None:
        self.log = log
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 99
            try:
                sys.stdout = sys.stderr = open(log_fd, "w", buffering=1)  # noqa: SIM115
                os.environ.update(DBUS_SESSION_BUS_ADDRESS=session, DBUS_SYSTEM_BUS_ADDRESS=system)
                os.environ.pop("JOURNAL_STREAM", None)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                code = nmfailover_cli.main(["notify", *args])
            except BaseException:
                traceback.print_exc()
                raise
            finally:
                sys.stdout.flush()
                os._exit(code)
        os.close(log_fd)
        self.pid = pid
        self.returncode: int | None = None

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 15) -> None:
        def seen() -> bool:
            if self.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.returncode}:\n{self.text()}")
            return len(re.findall(pattern, self.text())) >= count

        wait_for(f"agent log {pattern!r} x{count}", seen, timeout)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 10) -> int:
        wait_for("the agent to exit", lambda: self.poll() is not None, timeout)
        assert self.returncode is not None
        return self.returncode

    def stop(self) -> int:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


class World:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.session = BusDaemon(SESSION_CONFIG, workdir, "session")
        self.system = BusDaemon(SYSTEM_CONFIG, workdir, "system")
        self.agents: list[Agent] = []
        self.thread: BusThread | None = None
        self.notifications = FakeNotifications(self.session.address)

    def agent(self, *args: str) -> Agent:
        # Forked before the test's bus thread starts: a child of a threaded process gets only the forking
        # thread, and must not depend on the others.
        agent = Agent(
            self.session.address, self.system.address, self.workdir / f"agent{len(self.agents)}.log", *args
        )
        self.agents.append(agent)
        return agent

    def start_clients(self) -> BusThread:
        self.thread = BusThread()
        self.thread.run(self.notifications.start())
        return self.thread

    def daemon(self, own: bool = True) -> FakeDaemon:
        assert self.thread is not None
        return self.thread.run(FakeDaemon(self.system.address).start(own))

    def close(self) -> None:
        for agent in self.agents:
            agent.kill()
            print(f"--- {agent.log.name}\n{agent.text()}", file=sys.stderr)
        if self.thread is not None:
            self.thread.close()
        self.system.stop()
        self.session.stop()


@pytest.fixture
def world() -> Iterator[World]:
    _require_root()
    # Not pytest's tmp_path: its parent is private to root, and nobody must reach the bus sockets.
    workdir = Path(tempfile.mkdtemp(prefix="nmfailover-notify-"))
    workdir.chmod(0o755)
    world = World(workdir)
    try:
        yield world
    finally:
        world.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _notices(world: World, count: int) -> None:
    wait_for(f"{count} Notify call(s)", lambda: len(world.notifications.calls) >= count)


def _calls(world: World, count: int) -> list[dict[str, Any]]:
    _notices(world, count)
    time.sleep(0.3)  # one more would show up by now
    calls = list(world.notifications.calls)
    print(json.dumps(calls, indent=1))
    assert len(calls) == count, calls
    return calls


def _chained(calls: list[dict[str, Any]]) -> list[int]:
    return [call["replaces_id"] for call in calls]


# -- tests ------------------------------------------------------------------------------------------------


def test_one_notice_per_switch_each_replacing_the_last_and_flapping_summed_up(world: World) -> None:
    agent = world.agent()
    agent.wait_log(r"listening for switches on the system bus \(daemon not running\)")
    second = world.agent()  # the same session again (autostart and the user unit both enabled)
    assert second.wait() == 0
    assert f"another agent owns {AGENT_NAME} on the session bus; nothing to do" in second.text()
    thread = world.start_clients()

    daemon = world.daemon()
    agent.wait_log(r"the daemon started")
    # Someone else on the system bus, sending as the daemon would: to everyone, and to the agent alone,
    # which no match rule of the bus filters. Neither may reach the desktop.
    impostor = world.daemon(own=False)
    thread.run(impostor.switched("failover", "backup", "primary (wana) is down; moving to backup (wanb)"))
    agent_name = thread.run(impostor.unique_name_of(NOBODY))
    thread.run(impostor.switched("failover", "backup", "spoofed", destination=agent_name))
    agent.wait_log(r"ignored a Switched signal from :\S+, which does not own net\.nmfailover\.Failover1")
    # The daemon starting on the primary: nothing moved, nothing to say.
    thread.run(daemon.switched("initial", "primary", "starting on primary (wana)"))

    reasons = [
        ("failover", "backup", "primary (wana) is down; moving to backup (wanb)"),
        ("failback", "primary", "primary (wana) healthy for 30s; moving back"),
        ("failover", "backup", "primary (wana) is down; moving to backup (wanb)"),
        ("failback", "primary", "primary (wana) healthy for 30s; moving back"),
        ("failover", "backup", "primary (wana) is behind a captive portal; moving to backup (wanb)"),
    ]
    for number, (action, to, reason) in enumerate(reasons, 1):
        thread.run(daemon.switched(action, to, reason))
        _notices(world, number)
    calls = _calls(world, len(reasons))

    metered = "Hotspot is metered: large downloads and updates may cost you."
    assert [(c["summary"], c["body"], c["hints"]["urgency"], c["app_icon"]) for c in calls] == [
        ("Fiber failed: now on Hotspot", f"Fiber is down; moving to Hotspot. {metered}", 1, "network-error"),
        ("Back on Fiber", "Fiber healthy for 30s; moving back.", 0, "network-transmit-receive"),
        ("Fiber failed: now on Hotspot", f"Fiber is down; moving to Hotspot. {metered}", 1, "network-error"),
        (
            "Connection unstable: now on Fiber",
            "Traffic moved 4 times in the last minute. Last: Fiber healthy for 30s; moving back.",
            2,
            "network-error",
        ),
        (
            "Connection unstable: now on Hotspot",
            "Traffic moved 5 times in the last minute. Last: Fiber is behind a captive portal; moving to "
            f"Hotspot. {metered}",
            2,
            "network-error",
        ),
    ]
    # Each replaces the one before: 0 first, then always the id the server returned last.
    assert _chained(calls) == [0, *(c["returned_id"] for c in calls[:-1])]
    # No buttons: this server does not say it shows actions.
    assert {
        (c["app_name"], c["expire_timeout"], c["hints"]["category"], len(c["actions"])) for c in calls
    } == {("nmfailover", -1, "network", 0)}
    # The broadcast by the impostor never reached the agent: the bus matched on the name's owner.
    assert agent.text().count("ignored a Switched signal") == 1
    assert agent.stop() == 0


def test_moving_name_resolution_is_told_and_never_counts_as_flapping(world: World) -> None:
    agent = world.agent("--flap-count", "1")
    agent.wait_log(r"listening for switches on the system bus \(daemon not running\)")
    thread = world.start_clients()
    daemon = world.daemon()
    agent.wait_log(r"the daemon started")
    thread.run(daemon.dns_moved("Fiber", ["198.51.100.53"], "its resolvers fail while its path answers"))
    _notices(world, 1)
    thread.run(daemon.dns_moved("Fiber", [], "its resolvers answer again"))
    _notices(world, 2)
    thread.run(daemon.switched("failover", "backup", "primary (wana) is down; moving to backup (wanb)"))
    calls = _calls(world, 3)
    assert [(c["summary"], c["body"]) for c in calls] == [
        (
            "Lookups moved off Fiber",
            "Fiber's name servers do not answer, its line does: names are looked up through 198.51.100.53 "
            "while traffic stays on Fiber.",
        ),
        (
            "Fiber's name servers answer again",
            "Names are looked up through Fiber's own name servers again.",
        ),
        # One switch after two moves of DNS is no flapping, even at a flap count of one.
        (
            "Fiber failed: now on Hotspot",
            "Fiber is down; moving to Hotspot. Hotspot is metered: large downloads and updates may cost you.",
        ),
    ]
    assert _chained(calls) == [0, *(c["returned_id"] for c in calls[:-1])]
    assert agent.stop() == 0


def test_survives_the_daemon_restarting_and_the_system_bus_restarting(world: World) -> None:
    agent = world.agent("--flap-count", "100")
    thread = world.start_clients()
    agent.wait_log(r"listening for switches on the system bus \(daemon not running\)")

    first = world.daemon()
    agent.wait_log(r"the daemon started")
    # A profile name is text, never markup, on a server that reads markup in bodies.
    thread.run(first.switched("failover", "backup", "primary (wana) is down; moving to <R&D> backup (wanb)"))
    _notices(world, 1)

    thread.run(first.stop())
    agent.wait_log(r"the daemon stopped")
    restarted = world.daemon()
    agent.wait_log(r"the daemon started", count=2)
    thread.run(restarted.switched("failback", "primary", "primary (wana) healthy for 30s; moving back"))
    _notices(world, 2)

    world.system.stop()
    agent.wait_log(r"lost the system bus; reconnecting")
    world.system.start()
    agent.wait_log(r"listening for switches on the system bus \(daemon not running\)", count=2)
    third = world.daemon()
    agent.wait_log(r"the daemon started", count=3)
    thread.run(third.switched("pin", "backup", "backup (wanb) is pinned and healthy"))
    calls = _calls(world, 3)

    metered = "Hotspot is metered: large downloads and updates may cost you."
    assert [(c["summary"], c["body"]) for c in calls] == [
        ("Fiber failed: now on Hotspot", f"Fiber is down; moving to &lt;R&amp;D&gt; Hotspot. {metered}"),
        ("Back on Fiber", "Fiber healthy for 30s; moving back."),
        ("Now on Hotspot, as chosen", f"Hotspot is pinned and healthy. {metered}"),
    ]
    assert _chained(calls) == [0, calls[0]["returned_id"], calls[1]["returned_id"]]

    # The session bus going away is the session ending: the agent ends too, and says why.
    world.session.stop()
    assert agent.wait() == 1
    assert "lost the session bus" in agent.text()


# -- how it is started ------------------------------------------------------------------------------------


def test_shipped_launchers_start_the_agent_like_the_service_starts_the_daemon() -> None:
    packaging = ROOT / "packaging"
    service = (packaging / "nmfailover.service").read_text()
    (daemon_binary,) = re.findall(r"^ExecStart=(\S+) run$", service, re.MULTILINE)
    unit = (packaging / "nmfailover-notify.service").read_text()
    assert re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE) == [f"{daemon_binary} notify"]
    for line in (
        "PartOf=graphical-session.target",
        "WantedBy=graphical-session.target",
        "Restart=on-failure",
    ):
        assert re.search(rf"^{re.escape(line)}$", unit, re.MULTILINE), line

    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    entry.read(packaging / "nmfailover-notify.desktop")
    desktop = entry["Desktop Entry"]
    assert (desktop["Type"], desktop["Exec"], desktop["Terminal"]) == (
        "Application",
        f"{daemon_binary} notify",
        "false",
    )
    args = nmfailover_cli.build_parser().parse_args(desktop["Exec"].split()[1:])
    assert (args.command, args.flap_count, args.flap_window) == ("notify", 3, 60.0)
    if shutil.which("desktop-file-validate"):
        subprocess.run(["desktop-file-validate", str(packaging / "nmfailover-notify.desktop")], check=True)
