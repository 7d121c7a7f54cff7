"""The command line's shape: its commands and options (build_parser) and its exit codes, apart from what
the commands do (cli.py), so that the man page and the shell completions (manpage.py) are made from the
same parser without importing the commands.

Exit codes: 0 success; 1 runtime failure (NetworkManager or the bus unreachable, preferred uplink unhealthy
for `check`, name already owned for `run`); 2 bad configuration or usage; 3 the daemon is not running;
4 access denied (by the bus policy, or by the daemon after asking polkit).
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .control import BUS_NAME, SECONDS_MAX
from .errors import NmfailoverError
from .follow import FOLLOW_INTERVAL
from .notice import FLAP_COUNT, FLAP_WINDOW

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_DENIED = 0, 1, 2, 3, 4
CLIENT_COMMANDS = ("status", "recheck", "test-failover", "prefer")


class UsageError(NmfailoverError):
    """A mistyped command line: argparse's message, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse would list every command; the nearest one is what a typo needs. One line, with the
        # usage folded in, as every usage error here is one line.
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            names = list(action.choices)
            close = difflib.get_close_matches(str(value), names, n=1)
            prefixed = [n for n in names if value and n.startswith(str(value))]
            if not close and len(prefixed) == 1:  # "install" for install-system-files
                close = prefixed
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            usage = " ".join(self.format_usage().split())
            raise UsageError(f"{self.prog}: unknown command {value!r}{hint} {usage}")
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nmfailover",
        description="Uplink failover for NetworkManager. Configured by "
        "NMFAILOVER_* environment variables (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"nmfailover {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser(
        "run",
        help="run the failover daemon",
        description="Probe every uplink and keep the most preferred healthy one as the "
        "default route. Stops on SIGTERM/SIGINT, restoring the profiles' metrics.",
    )
    check = commands.add_parser(
        "check",
        help="probe every uplink once and print the results",
        description="Probe every uplink once. Exit 0 only if the most preferred uplink is healthy.",
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    demo = commands.add_parser(
        "demo",
        help="watch a failover in a sandbox (root; needs NetworkManager installed, not running)",
        description="Build a sandbox of a real NetworkManager with two simulated "
        "uplinks, run the daemon in it, cut the primary's upstream, heal "
        "it, print the measured times and remove everything. The "
        "machine's own interfaces, routes and resolver are not touched.",
    )
    demo.add_argument(
        "--hold-down",
        type=_seconds_arg(True),
        default=10.0,
        metavar="SECONDS",
        help="failback hold-down for the demo (default: 10)",
    )

    daemon_note = (
        f" Talks to the running daemon over {BUS_NAME} on the system bus; exit 3 if it is not "
        "running, 4 if the bus policy denies the call."
    )
    status = commands.add_parser(
        "status",
        help="show the running daemon's uplinks and state",
        description="Show which uplink carries traffic, each uplink's health, "
        "last probe and counts, the last switch and what is pending." + daemon_note,
    )
    status.add_argument("--json", action="store_true", help="print the daemon's JSON status (see README)")
    status.add_argument(
        "--follow",
        action="store_true",
        help="print one JSON line now and one more each time it changes, for status bars (see README); "
        "waits while the daemon is not running",
    )
    status.add_argument(
        "--interval",
        type=_seconds_arg(False),
        default=None,
        metavar="SECONDS",
        help="with --follow: how often to look again besides the daemon's signals "
        f"(default: {FOLLOW_INTERVAL:g})",
    )
    recheck = commands.add_parser(
        "recheck",
        help="make the daemon probe now",
        description="Ask the daemon to probe now instead of at its next round: "
        "the uplink on INTERFACE, or every uplink." + daemon_note,
    )
    recheck.add_argument("--interface", default="", metavar="IF", help="only the uplink on this interface")
    recheck.add_argument("--reason", default="", help="why, for the daemon's log (default: none)")
    test = commands.add_parser(
        "test-failover",
        help="move traffic to the next uplink for a while",
        description="The failover test: traffic leaves the uplink carrying it for "
        "SECONDS without touching that uplink's link, then normal policy "
        "resumes by itself. Root or the D-Bus policy's group only." + daemon_note,
    )
    length = test.add_mutually_exclusive_group()
    length.add_argument(
        "--seconds",
        type=_seconds_arg(False),
        default=60.0,
        metavar="N",
        help=f"how long (default: 60; at most {SECONDS_MAX:g}: {SECONDS_MAX / 86400:g} days)",
    )
    length.add_argument("--end", action="store_true", help="end a running test now")
    prefer = commands.add_parser(
        "prefer",
        help="pin an uplink (or --clear the pin)",
        description="Keep traffic on UPLINK (a role like primary or backup, a "
        "profile id, UUID or interface) while it is healthy, until "
        "--clear or for --seconds. Root or the D-Bus policy's group "
        "only." + daemon_note,
    )
    prefer.add_argument("uplink", nargs="?", metavar="UPLINK")
    prefer.add_argument(
        "--seconds",
        type=_seconds_arg(True),
        default=0.0,
        metavar="N",
        help="drop the pin after N seconds (default: 0, until --clear; "
        f"at most {SECONDS_MAX:g}: {SECONDS_MAX / 86400:g} days)",
    )
    prefer.add_argument("--clear", action="store_true", help="drop the pin: normal policy resumes")
    notify = commands.add_parser(
        "notify",
        help="show every switch as a desktop notification (runs in your desktop session)",
        description="Listen for the daemon's Switched signal on the system bus and show one desktop "
        "notification per switch, each replacing the last; while the uplinks flap, one summary. A tray "
        "indicator (StatusNotifierItem) shows where traffic goes, with a menu to choose the uplink and test "
        "failover. Started by the shipped XDG autostart entry or systemd user unit; needs no settings.",
    )
    notify.add_argument(
        "--flap-count",
        type=_count_arg,
        default=FLAP_COUNT,
        metavar="N",
        help=f"more switches than N within --flap-window are summed up (default: {FLAP_COUNT})",
    )
    notify.add_argument(
        "--flap-window",
        type=_seconds_arg(False),
        default=FLAP_WINDOW,
        metavar="SECONDS",
        help=f"the window --flap-count looks back over (default: {FLAP_WINDOW:g})",
    )
    notify.add_argument(
        "--no-tray",
        action="store_true",
        help="show no tray indicator (StatusNotifierItem), only the notifications",
    )
    _add_setup_commands(commands)
    return parser


def _add_setup_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """install-system-files and doctor: setting a machine up, and checking it."""
    install = commands.add_parser(
        "install-system-files",
        help="put the unit, D-Bus policy, dispatcher hook and env file in place (pip/pipx installs)",
        description="Install what a pip or pipx installation lacks: the systemd unit (running this "
        "installation's nmfailover), the D-Bus policy, the NetworkManager dispatcher hook, the env file "
        "(never replaced once there), the polkit files, the man page and shell completions, and the desktop "
        "notice's user unit and autostart entry. Root only. Changes nothing "
        "that was edited since, unless --force.",
    )
    install.add_argument(
        "--root",
        type=_directory_arg,
        metavar="DIR",
        help="write under DIR instead of / (an image, a test); nothing is reloaded",
    )
    install.add_argument(
        "--non-root",
        action="store_true",
        help="also the polkit rule and the drop-in that run the service as the user nmfailover",
    )
    install.add_argument(
        "--kernel-wireguard",
        action="store_true",
        help="also the drop-in kernel-wireguard.conf, which gives the service CAP_NET_ADMIN: moving kernel "
        "WireGuard tunnels outside NetworkManager (wg-quick's) needs it",
    )
    install.add_argument("--force", action="store_true", help="replace files that were changed locally")
    install.add_argument(
        "--remove",
        action="store_true",
        help="remove the files it installed that are unchanged, and say what it leaves",
    )
    doctor = commands.add_parser(
        "doctor",
        help="check the installation and the machine, one line per check with a fix",
        description="Check the settings, NetworkManager, the D-Bus policy, the dispatcher hook, the "
        "unit, the configured profiles, and probe each uplink once. Changes nothing. Exit 0 only if "
        "every check passed.",
    )
    doctor.add_argument(
        "--root",
        type=_directory_arg,
        metavar="DIR",
        help="look for the system files under DIR (as install-system-files --root wrote them)",
    )


def _seconds_arg(zero_ok: bool) -> Callable[[str], float]:
    rule = "a number of 0 or more" if zero_ok else "a number greater than 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {rule}; got {text!r}")
        return value

    return parse


# The desktop agent's and install-system-files' modules are imported by their commands alone: the daemon,
# which starts through the command line too, never loads them.
def _count_arg(text: str) -> int:
    from .notify import count_arg

    return count_arg(text)


def _directory_arg(text: str) -> Path:
    from .system_files import directory_arg

    return directory_arg(text)
