"""The package's exceptions: one root, so a caller can tell our failures (expected, worded for a person) from
bugs (anything else, which must surface with a traceback)."""

from __future__ import annotations


class NmfailoverError(Exception):
    """Root of every failure nmfailover reports on purpose."""


class ConfigError(NmfailoverError):
    """A setting is wrong: names the variable (or argument) and the problem."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class NMError(NmfailoverError):
    """A NetworkManager call failed; `dbus_error` is the D-Bus error name when NetworkManager sent one."""

    def __init__(self, message: str, dbus_error: str | None = None) -> None:
        super().__init__(message)
        self.dbus_error = dbus_error


class NMUnavailable(NMError):
    """The bus or NetworkManager cannot be reached right now."""


class NMLinkChanged(NMError):
    """The device was deactivated or went away between reading it and changing it: no fault of ours or
    NetworkManager's, and the event that comes with it has the link read again."""


class NMAccessDenied(NMError):
    """NetworkManager (polkit) refused the call: a permission problem, never a missing profile."""


class ProfileError(NMError):
    """A configured uplink does not name a usable connection profile."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"{spec!r}: {problem}")
        self.spec = spec
        self.problem = problem


class ControlError(NmfailoverError):
    """The control interface cannot be reached or started (bus unreachable, name taken or not allowed)."""


class DaemonNotRunning(ControlError):
    """Nobody owns the control bus name."""


class ControlAccessDenied(ControlError):
    """The bus policy refused a control call."""


class ControlCallFailed(ControlError):
    """The daemon answered a control call with an error."""

    def __init__(self, dbus_error: str, text: str) -> None:
        super().__init__(text)
        self.dbus_error = dbus_error


class NoticeError(NmfailoverError):
    """The desktop agent's bus is unreachable or a call on it failed."""


class AgentRunning(NoticeError):
    """Another agent already serves this session."""


class NoticeCallFailed(NoticeError):
    """A call of the desktop agent's got an error reply: its D-Bus error name and its message."""

    def __init__(self, error_name: str, text: str) -> None:
        super().__init__(f"{error_name}: {text}")
        self.error_name = error_name
        self.text = text


class InvalidRequest(NmfailoverError):
    """An operator request the daemon refuses (unknown uplink, bad duration): the caller's mistake."""


class HookError(NmfailoverError):
    """A switch hook or the webhook could not be run or failed."""


class TaskGaveUp(NmfailoverError):
    """A supervised task kept crashing; the daemon ends so that its service manager restarts it."""
