"""The control interface: `net.nmfailover.Failover1` on the system bus, and the client the CLI uses.

Plain D-Bus messages (no ServiceInterface decorators, whose annotations differ between dbus-fast and
dbus-next), like nm.py. Who may call what is first the bus's business (packaging/dbus/): the daemon never
sees a call the policy denied. The policy lets anyone send the calls a person at the desktop may make
(pin an uplink, the failover test); for those the daemon decides (access()): root, its own user and the
group "nmfailover" may, anyone else only if polkit says so (packaging/polkit/: the active local session).

Methods (interface net.nmfailover.Failover1, object /net/nmfailover/Failover1):
  Status() -> s                   Operator.status() as JSON text (nmfailover.status, docs/status.md)
  Recheck(s interface, s reason) -> u   probe now; returns how many uplinks will be probed
  ForceFailover(d seconds)        move traffic off the current uplink for a while (the "failover test")
                                  at most SECONDS_MAX (a week), as Prefer's seconds
  EndForce()
  Prefer(s uplink, d seconds)     pin an uplink; 0 seconds = until ClearPreference
  ClearPreference()
Signal Switched(s from, s to, s reason, s details): profile ids, and the SwitchEvent as JSON (plus what the
daemon adds through switch_details: the metered budget).
Signal DnsMoved(s profile, as servers, s reason): an uplink's name resolution moved to `servers` while its
traffic stays (its resolvers are dead behind a live path), or given back to its own (servers empty).
A bad argument gets the error net.nmfailover.Failover1.Error.InvalidArgs with a one-line message; anything
else that goes wrong is a bug: logged with its traceback and answered with ...Error.Failed.
"""

from __future__ import annotations

import asyncio
import functools
import grp
import json
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from .bus import (
    ERROR_ACCESS_DENIED,
    ERROR_NAME_HAS_NO_OWNER,
    ERROR_SERVICE_UNKNOWN,
    ERROR_UNKNOWN_METHOD,
    IDLE_BEAT,
    IFACE_INTROSPECTABLE,
    IFACE_PEER,
    IFACE_PROPERTIES,
    REQUEST_NAME_ALREADY_OWNER,
    REQUEST_NAME_DO_NOT_QUEUE,
    REQUEST_NAME_PRIMARY_OWNER,
    BusType,
    Connection,
    Message,
    MessageFlag,
    MessageType,
    Variant,
    Words,
    bus_connect_error,
    connect_with_backoff,
)
from .engine import DnsMoved, Operator, SwitchEvent
from .engine.supervisor import Liveness
from .errors import ControlAccessDenied, ControlCallFailed, ControlError, DaemonNotRunning, InvalidRequest

BUS_NAME = "net.nmfailover.Failover1"
OBJECT_PATH = "/net/nmfailover/Failover1"
INTERFACE = "net.nmfailover.Failover1"
ERROR_INVALID_ARGS = f"{INTERFACE}.Error.InvalidArgs"
ERROR_FAILED = f"{INTERFACE}.Error.Failed"
CALL_TIMEOUT = 5.0
# The longest failover test or timed pin: a week covers any plan a person makes, and keeps "s left" in the
# status a number one can read (a pin for good is Prefer(uplink, 0)).
SECONDS_MAX = 7 * 24 * 3600.0

_DOCTYPE = (
    '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
)
INTROSPECTION = (
    _DOCTYPE
    + f"""<node>
  <interface name="{INTERFACE}">
    <method name="Status"><arg name="status_json" type="s" direction="out"/></method>
    <method name="Recheck">
      <arg name="interface" type="s" direction="in"/>
      <arg name="reason" type="s" direction="in"/>
      <arg name="uplinks" type="u" direction="out"/>
    </method>
    <method name="ForceFailover"><arg name="seconds" type="d" direction="in"/></method>
    <method name="EndForce"/>
    <method name="Prefer">
      <arg name="uplink" type="s" direction="in"/>
      <arg name="seconds" type="d" direction="in"/>
    </method>
    <method name="ClearPreference"/>
    <signal name="Switched">
      <arg name="from" type="s"/>
      <arg name="to" type="s"/>
      <arg name="reason" type="s"/>
      <arg name="details_json" type="s"/>
    </signal>
    <signal name="DnsMoved">
      <arg name="profile" type="s"/>
      <arg name="servers" type="as"/>
      <arg name="reason" type="s"/>
    </signal>
  </interface>
  <interface name="{IFACE_INTROSPECTABLE}">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="{IFACE_PEER}">
    <method name="Ping"/>
  </interface>
  <interface name="{IFACE_PROPERTIES}">
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="props" type="a{{sv}}" direction="out"/>
    </method>
  </interface>
</node>
"""
)
# The calls a person at the desktop may make through polkit, by action id (packaging/polkit/).
POLKIT_ACTIONS = {
    "Prefer": "net.nmfailover.prefer",
    "ClearPreference": "net.nmfailover.prefer",
    "ForceFailover": "net.nmfailover.test-failover",
    "EndForce": "net.nmfailover.test-failover",
}
GROUP = "nmfailover"
_POLKIT = (
    "org.freedesktop.PolicyKit1",
    "/org/freedesktop/PolicyKit1/Authority",
    "org.freedesktop.PolicyKit1.Authority",
)


@dataclass(frozen=True)
class Caller:
    """Who sent a call, as the bus says (GetConnectionCredentials)."""

    uid: int
    gids: frozenset[int]


def access(member: str, caller: Caller, daemon_uid: int, group_gid: int | None) -> str | None:
    """The polkit action to ask about before `member` runs for `caller`, or None: no question (a call
    without an action got past the bus policy, so the policy let it in)."""
    action = POLKIT_ACTIONS.get(member)
    if action is None or caller.uid in (0, daemon_uid):
        return None
    if group_gid is not None and group_gid in caller.gids:
        return None
    return action


# So that `busctl tree` and d-feet can walk down to the object.
_PARENTS = {"/": "net", "/net": "nmfailover", "/net/nmfailover": "Failover1"}


class ControlService:
    """Owns BUS_NAME on its own system bus connection and answers calls with the operator's API."""

    def __init__(self) -> None:
        self.owned = asyncio.Event()  # set while the name is ours: what readiness waits for
        self._operator: Operator | None = None
        self._bus: Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # More for the Switched signal's details than the switch itself knows (the daemon plugs it in).
        self.switch_details: Callable[[], dict[str, Any]] = dict
        self._methods: dict[
            str, tuple[str, Callable[[Operator, list[Any]], Awaitable[tuple[str, list[Any]]]]]
        ] = {
            "Status": ("", _status),
            "Recheck": ("ss", _recheck),
            "ForceFailover": ("d", _force_failover),
            "EndForce": ("", _end_force),
            "Prefer": ("sd", _prefer),
            "ClearPreference": ("", _clear_preference),
        }

    # -- connection ---------------------------------------------------------------------------------

    async def start(self, operator: Operator) -> None:
        """Connect and own the name; ControlError with a one-line reason if that is impossible."""
        self._operator = operator
        bus = await Connection.open(CONTROL_WORDS, CALL_TIMEOUT)
        # The handler goes in before the name is ours, so no call can arrive unanswered.
        bus.add_message_handler(self._on_message)
        try:
            await self._own_name(bus)
        except BaseException:
            bus.close()
            raise
        self._bus = bus
        self.owned.set()
        logger.info("control interface: {} on the system bus", BUS_NAME)

    async def _own_name(self, bus: Connection) -> None:
        try:
            (result,) = await bus.call_bus("RequestName", "su", [BUS_NAME, REQUEST_NAME_DO_NOT_QUEUE])
        except ControlAccessDenied as exc:
            raise ControlError(
                f"not allowed to own {BUS_NAME} on the system bus ({exc}); install "
                f"packaging/dbus/{BUS_NAME}.conf as /etc/dbus-1/system.d/{BUS_NAME}.conf"
            ) from None
        except ControlCallFailed as exc:
            raise ControlError(f"cannot own {BUS_NAME} on the system bus: {exc}") from None
        if result not in (REQUEST_NAME_PRIMARY_OWNER, REQUEST_NAME_ALREADY_OWNER):
            raise ControlError(
                f"{BUS_NAME} is already owned on the system bus{await _owner_pid(bus)}: "
                "is another nmfailover running?"
            )

    async def close(self) -> None:
        self.owned.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    async def keep_connected(self, live: Liveness) -> None:
        """Reconnect and take the name back after the bus connection is lost (a restarted dbus-daemon)."""
        while True:
            if self._bus is not None:
                await self._bus.until_lost(live.beat, IDLE_BEAT)
                logger.warning("control interface lost the system bus; reconnecting")
                self.owned.clear()
                self._bus = None
            operator = self._operator
            if operator is None:
                return
            await connect_with_backoff(
                functools.partial(self.start, operator),
                ControlError,
                _log_failed_start,
                beat=live.beat,
                after_loss=True,
            )

    # -- signals ------------------------------------------------------------------------------------

    async def on_switch(self, event: SwitchEvent) -> None:
        """A switch listener: broadcast the Switched signal."""
        details = json.dumps(event.as_dict() | self.switch_details())
        await self._signal("Switched", "ssss", [event.from_profile, event.to_profile, event.reason, details])

    async def on_dns(self, moved: DnsMoved) -> None:
        """A DNS listener: broadcast the DnsMoved signal."""
        await self._signal("DnsMoved", "sass", [moved.profile, list(moved.servers), moved.reason])

    async def _signal(self, member: str, signature: str, body: list[Any]) -> None:
        if self._bus is None:
            return
        await self._bus.emit(
            Message(
                message_type=MessageType.SIGNAL,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member=member,
                signature=signature,
                body=body,
            )
        )

    # -- calls --------------------------------------------------------------------------------------

    def _on_message(self, msg: Any) -> bool:
        if msg.message_type != MessageType.METHOD_CALL:
            return False
        if (
            msg.path in _PARENTS
            and msg.member == "Introspect"
            and msg.interface in (None, IFACE_INTROSPECTABLE)
        ):
            child = _DOCTYPE + f'<node>\n  <node name="{_PARENTS[msg.path]}"/>\n</node>\n'
            self._reply(msg, Message.new_method_return(msg, "s", [child]))
            return True
        if msg.path != OBJECT_PATH:
            return False  # the library answers UnknownObject / UnknownMethod
        # Operator calls await the engine's lock; answering from a task keeps the bus reader free meanwhile.
        task = asyncio.ensure_future(self._dispatch(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _dispatch(self, msg: Any) -> None:
        try:
            reply = await self._answer(msg)
        except InvalidRequest as exc:
            reply = Message.new_error(msg, ERROR_INVALID_ARGS, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in a call must never take the daemon down
            logger.opt(exception=exc).error("control: {} failed: {!r}", msg.member, exc)
            reply = Message.new_error(
                msg, ERROR_FAILED, f"internal error in {msg.member}: {type(exc).__name__}"
            )
        self._reply(msg, reply)

    async def _answer(self, msg: Any) -> Any:
        interface, member, signature = msg.interface, msg.member, msg.signature
        if interface in (None, IFACE_INTROSPECTABLE) and member == "Introspect" and signature == "":
            return Message.new_method_return(msg, "s", [INTROSPECTION])
        if interface in (None, IFACE_PEER) and member == "Ping" and signature == "":
            return Message.new_method_return(msg)
        if interface == IFACE_PROPERTIES and member == "GetAll" and signature == "s":
            return Message.new_method_return(msg, "a{sv}", [{}])
        method = self._methods.get(member) if interface in (None, INTERFACE) else None
        if method is None or self._operator is None:
            return Message.new_error(
                msg,
                ERROR_UNKNOWN_METHOD,
                f"no method {interface or ''}.{member} on {OBJECT_PATH}",
            )
        expected, handler = method
        if signature != expected:
            raise InvalidRequest(f"{member} takes arguments ({expected}), got ({signature})")
        refusal = await self._refusal(msg) if member in POLKIT_ACTIONS else None
        if refusal is not None:
            logger.info("control: {} refused to {}: {}", member, msg.sender, refusal)
            return Message.new_error(msg, ERROR_ACCESS_DENIED, refusal)
        logger.debug("control: {}{} from {}", member, tuple(msg.body), msg.sender)
        out_signature, body = await handler(self._operator, list(msg.body))
        return Message.new_method_return(msg, out_signature, body)

    async def _refusal(self, msg: Any) -> str | None:
        """Why `msg`'s sender may not make this call, or None when it may."""
        bus = self._bus
        if bus is None:
            return "the bus does not say who is calling: the connection is gone"
        try:
            (credentials,) = await bus.call_bus("GetConnectionCredentials", "s", [msg.sender])
            caller = Caller(
                int(credentials["UnixUserID"].value),
                frozenset(int(g) for g in credentials["UnixGroupIDs"].value)
                if "UnixGroupIDs" in credentials
                else frozenset(),
            )
        except (ControlError, KeyError) as exc:
            return f"the bus does not say who is calling: {exc}"
        try:
            group_gid: int | None = grp.getgrnam(GROUP).gr_gid
        except KeyError:
            group_gid = None
        action = access(msg.member, caller, os.getuid(), group_gid)
        if action is None:
            return None
        subject = ["system-bus-name", {"name": Variant("s", msg.sender)}]
        try:
            ((authorized, challenge, _),) = await bus.call(
                *_POLKIT, "CheckAuthorization", "(sa{sv})sa{ss}us", [subject, action, {}, 0, ""]
            )
        except DaemonNotRunning:
            return f"only root and the group {GROUP} may: polkit is not running to ask about {action}"
        except ControlError as exc:
            return f"polkit did not answer about {action}: {exc}"
        if authorized:
            return None
        how = "needs authentication" if challenge else "is not allowed"
        return f"uid {caller.uid} {how} for {action} (polkit); root and the group {GROUP} may"

    def _reply(self, call: Any, reply: Any) -> None:
        if call.flags & MessageFlag.NO_REPLY_EXPECTED or self._bus is None:
            return
        self._bus.send(reply)


async def _status(operator: Operator, _: list[Any]) -> tuple[str, list[Any]]:
    return "s", [operator.status().to_json()]


async def _recheck(operator: Operator, args: list[Any]) -> tuple[str, list[Any]]:
    interface, reason = args
    return "u", [await operator.recheck(interface, reason)]


def _at_most_a_week(seconds: float) -> float:
    # Only the ceiling: what is not finite or below 0 the operator refuses with its own words.
    if math.isfinite(seconds) and seconds > SECONDS_MAX:
        raise InvalidRequest(
            f"seconds must be at most {SECONDS_MAX:g} ({SECONDS_MAX / 86400:g} days); got {seconds}"
        )
    return seconds


async def _force_failover(operator: Operator, args: list[Any]) -> tuple[str, list[Any]]:
    await operator.force_failover(_at_most_a_week(args[0]))
    return "", []


async def _end_force(operator: Operator, _: list[Any]) -> tuple[str, list[Any]]:
    await operator.end_force()
    return "", []


async def _prefer(operator: Operator, args: list[Any]) -> tuple[str, list[Any]]:
    uplink, seconds = args
    await operator.prefer(uplink, _at_most_a_week(seconds))
    return "", []


async def _clear_preference(operator: Operator, _: list[Any]) -> tuple[str, list[Any]]:
    await operator.clear_preference()
    return "", []


def _log_failed_start(exc: ControlError, attempt: int, _delay: float) -> None:
    # Logged at every attempt: a name held by someone else needs a person.
    logger.error("control interface: {} (attempt {})", exc, attempt)


class ControlWords(Words):
    """The control interface's failures, for the service and its clients."""

    def unreachable(self, bus_type: BusType, exc: BaseException) -> ControlError:
        return ControlError(bus_connect_error(exc))

    def no_answer(self, member: str, timeout: float) -> ControlError:
        return ControlError(f"{member}: no answer within {timeout:g} s")

    def lost(self, member: str, exc: BaseException | None) -> ControlError:
        return ControlError(f"{member}: bus connection lost" + ("" if exc is None else f": {exc}"))

    def refused(self, member: str, error_name: str, text: str) -> ControlError:
        text = text or error_name
        if error_name in (ERROR_SERVICE_UNKNOWN, ERROR_NAME_HAS_NO_OWNER):
            return DaemonNotRunning(text)
        if error_name == ERROR_ACCESS_DENIED:
            return ControlAccessDenied(text)
        return ControlCallFailed(error_name, text)


CONTROL_WORDS = ControlWords()


async def _owner_pid(bus: Connection) -> str:
    """' (pid N)' for the current owner of BUS_NAME, or '' if the bus will not say."""
    try:
        (owner,) = await bus.call_bus("GetNameOwner", "s", [BUS_NAME])
        (pid,) = await bus.call_bus("GetConnectionUnixProcessID", "s", [owner])
        return f" (pid {pid})"
    except (ControlError, ValueError):
        return ""


async def call_daemon(
    member: str, signature: str = "", body: Sequence[Any] = (), timeout: float = CALL_TIMEOUT
) -> list[Any]:
    """Call a method of the running daemon (the CLI's side): the reply body, or DaemonNotRunning,
    ControlAccessDenied, ControlCallFailed or ControlError (bus unreachable, no answer in time)."""
    bus = await Connection.open(CONTROL_WORDS, timeout)
    try:
        return await bus.call(BUS_NAME, OBJECT_PATH, INTERFACE, member, signature, body)
    finally:
        bus.close()
