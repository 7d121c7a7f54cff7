"""Command line: `nmfailover run` (the daemon), `nmfailover check` (one probe round, a table, an exit code)
and the clients of the running daemon's control interface (status, recheck, test-failover, prefer);
`install-system-files` and `doctor` set a pip/pipx installation up and check a machine (system_files.py,
doctor.py).

Exit codes: 0 success; 1 runtime failure (NetworkManager or the bus unreachable, preferred uplink unhealthy
for `check`, name already owned for `run`); 2 bad configuration or usage; 3 the daemon is not running;
4 access denied (by the bus policy, or by the daemon after asking polkit). Configuration errors are
reported before anything is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, system_files
from .budget import format_size
from .config import Settings, load_settings
from .control import BUS_NAME, SECONDS_MAX, call_daemon
from .daemon import connect, run_daemon
from .doctor import run as run_doctor
from .engine import find_uplinks, role_name
from .engine.actuator import metered_uplinks, metered_warning, on_demand_uplinks
from .errors import (
    ConfigError,
    ControlAccessDenied,
    ControlCallFailed,
    ControlError,
    DaemonNotRunning,
    NmfailoverError,
    NMUnavailable,
)
from .follow import FOLLOW_INTERVAL, follow_status
from .log import setup_logging
from .nm import NetworkManagerClient
from .notice import FLAP_COUNT, FLAP_WINDOW, NoticeBoard
from .notify import count_arg, run_agent
from .probe import Link, probe_round
from .tunnels import check_names

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
        type=count_arg,
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
        "(never replaced once there), the man page and shell completions. Root only. Changes nothing "
        "that was edited since, unless --force.",
    )
    install.add_argument(
        "--root",
        type=system_files.directory_arg,
        metavar="DIR",
        help="write under DIR instead of / (an image, a test); nothing is reloaded",
    )
    install.add_argument(
        "--non-root",
        action="store_true",
        help="also the polkit rule and the drop-in that run the service as the user nmfailover",
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
        type=system_files.directory_arg,
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


async def _check(settings: Settings, as_json: bool) -> int:
    client = NetworkManagerClient()
    try:
        profiles = await connect(settings, client)
        choice = await find_uplinks(client, settings) if settings.auto_uplinks else None
        marked = metered_uplinks(settings, profiles)  # a name that is no uplink: ConfigError, exit 2
        on_demand_uplinks(settings, profiles)  # likewise
        await check_names(settings, client)  # likewise a WireGuard interface that is not here
        links = [await client.link_state(p.uuid) for p in profiles]
    except NMUnavailable as exc:
        print(f"nmfailover: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await client.close()
    rounds = await asyncio.gather(
        *(
            probe_round(
                Link(link.interface if link.activated else None, link.nameservers),
                settings.probe_targets,
                settings.probe_timeout,
                settings.probe_quorum,
            )
            for link in links
        )
    )
    rows = []
    for index, (profile, link, result) in enumerate(zip(profiles, links, rounds, strict=True)):
        for probe in result.results:
            rows.append(
                {
                    "uplink": role_name(index),
                    "profile": profile.id,
                    "device": link.interface or "-",
                    "target": probe.target.url,
                    "result": "ok" if probe.ok else "FAIL",
                    "latency_ms": round(probe.latency * 1000),
                    "reason": probe.reason.value,
                    "detail": probe.detail,
                }
            )
    verdicts = [
        {
            "uplink": role_name(i),
            "profile": p.id,
            "healthy": r.ok,
            "summary": r.summary,
            # As NetworkManager reports the device now: check changes nothing, so not yet what `run` marks.
            "metered": link.metered_name,
            "metered_marked": i in marked,
            "metered_warning": metered_warning(i, link, i in marked),
            "order": choice.why(p.uuid) if choice is not None else "named in NMFAILOVER_UPLINKS",
        }
        for i, (p, link, r) in enumerate(zip(profiles, links, rounds, strict=True))
    ]
    left = [
        {"profile": x.candidate.profile.id, "device": x.candidate.interface, "why": x.why}
        for x in (choice.left if choice is not None else ())
    ]
    if as_json:
        print(json.dumps({"probes": rows, "uplinks": verdicts, "not_uplinks": left}, indent=2))
    else:
        columns = ("uplink", "device", "result", "latency_ms", "reason", "target", "detail")
        widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
        print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
        for row in rows:
            print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
        for verdict in verdicts:
            state = "healthy" if verdict["healthy"] else "UNHEALTHY"
            print(
                f"{verdict['uplink']} ({verdict['profile']}): {state}: {verdict['summary']} "
                f"[{verdict['order']}]"
            )
        for x in left:
            print(f"not an uplink: {x['profile']} ({x['device'] or '-'}): {x['why']}")
        if len(verdicts) < 2:
            print("fewer than two uplinks: nothing to fail over to")
        for verdict in verdicts:
            if verdict["metered_warning"]:
                print(f"warning: {verdict['metered_warning']}")
    return EXIT_OK if rounds and rounds[0].ok else EXIT_FAILURE


def _ago(at: float | None) -> str:
    if at is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{stamp} ({max(0.0, time.time() - at):.0f} s ago)"


def print_status(status: dict[str, Any]) -> None:
    """The daemon's status as a person reads it: a few lines of state, then one row per uplink."""
    uplinks = status["uplinks"]
    carrying = next((u for u in uplinks if u["carrying_traffic"]), None)
    where = f"{carrying['role']} ({carrying['device'] or carrying['profile']})" if carrying else "none"
    print(f"traffic on: {where}; {status['switches']} switch(es), last {_ago(status['last_switch_at'])}")
    if status["forced_failover_remaining"]:
        print(f"failover test: {status['forced_failover_remaining']:.0f} s left")
    if status["pinned"]:
        print(f"pinned to: {status['pinned']}")
    if status["hold_down_remaining"]:
        print(f"failback hold-down: {status['hold_down_remaining']:.0f} s left")
    _print_tunnels(status.get("tunnels"))  # .get: a daemon started before an upgrade has none
    _print_budget(status.get("metered_budget"))
    rows = [
        {
            "": "*" if u["carrying_traffic"] else "",
            "uplink": u["role"],
            "profile": u["profile"],
            "device": u["device"] or "-",
            "link": u["link"],
            "health": u["health"],
            "ipv6": u.get("ipv6_health") or "-",
            "dns": u.get("dns_health") or "-",
            "latency": "-" if u["latency_ms"] is None else f"{u['latency_ms']:g} ms",
            "fail/ok": f"{u['consecutive_failures']}/{u['consecutive_successes']}",
            "loss, rtt p50/p95": _quality_cell(u),
            "probe bytes": _size(u.get("probe_bytes", 0)),
            # .get: a daemon started before an upgrade answers without these until it is restarted.
            "metered": _metered_cell(u.get("metered"), u.get("metered_marked", False)),
            "table": u.get("routing_table") or "-",
            "last probe": u["reason"] or "-",
        }
        for u in uplinks
    ]
    columns = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print()
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
    for u in uplinks:
        if u.get("metered_warning"):
            print(f"warning: {u['metered_warning']}")
        if u.get("dns_moved_to"):
            moved = ", ".join(u["dns_moved_to"])
            print(f"{u['role']}: its resolvers are dead; name resolution moved to {moved} (traffic stays)")
    _print_order(status)
    _print_source_routing(uplinks)


def _print_order(status: dict[str, Any]) -> None:
    """Why the uplinks stand in this order, and which connections are none, when they were found."""
    if not status.get("uplinks_found"):  # .get: a daemon started before an upgrade names its uplinks
        return
    print()
    if len(status["uplinks"]) < 2:
        print("uplinks found: fewer than two, nothing to fail over to; waiting for another")
    for u in status["uplinks"]:
        print(f"{u['role']} ({u['profile']}): {u['order']}")
    for left in status["not_uplinks"]:
        print(f"not an uplink: {left['profile']} ({left['device'] or '-'}): {left['why']}")


def _print_source_routing(uplinks: list[dict[str, Any]]) -> None:
    """Each uplink's rules and routes, as `ip rule` and `ip route show table N` would list them."""
    for u in uplinks:
        if u.get("routing_rules") or u.get("routing_routes"):
            print(f"{u['role']} keeps its connections in table {u['routing_table']}:")
            for line in (*u.get("routing_routes", []), *u.get("routing_rules", [])):
                print(f"  {line}")


def _print_budget(budget: dict[str, Any] | None) -> None:
    if not budget or (not budget["month_bytes"] and budget["outage"] is None):
        return  # nothing metered has carried traffic: nothing to say
    line = f"metered data this month: {format_size(budget['month_bytes'])}"
    if budget["budget_bytes"]:
        line += f" of {format_size(budget['budget_bytes'])} ({budget['used_pct']:g} %)"
    outage = budget["outage"]
    if outage is not None:
        now = "this" if outage["ended_at"] is None else "last"
        line += f"; {now} outage on {outage['uplink']}: {format_size(outage['bytes'])}"
    print(line)


def _print_tunnels(tunnels: dict[str, Any] | None) -> None:
    if not tunnels or tunnels["switch_at"] is None:
        return
    moved = [f"{m['interface']} ({m['endpoint']} via {m['via']}, by {m['by']})" for m in tunnels["moved"]]
    print(f"WireGuard moved at the last switch: {', '.join(moved) or 'none'}")
    for interface, why in tunnels["failed"].items():
        print(f"WireGuard {'tunnels' if interface == '*' else interface} not moved: {why}")


def _quality_cell(u: dict[str, Any]) -> str:
    if u.get("rtt_p50_ms") is None:
        return "-"
    return f"{u['loss_pct']:g} %, {u['rtt_p50_ms']:g}/{u['rtt_p95_ms']:g} ms"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    return f"{count / 1024:.1f} KiB" if count < 1024**2 else f"{count / 1024**2:.1f} MiB"


def _metered_cell(metered: str | None, marked: bool) -> str:
    if metered is None:
        return "-"
    return f"{metered} (nmfailover)" if marked else metered


async def _client(args: argparse.Namespace) -> int:
    if args.command == "status":
        (text,) = await call_daemon("Status")
        if args.json:
            print(json.dumps(json.loads(text), indent=2))
        else:
            print_status(json.loads(text))
    elif args.command == "recheck":
        (count,) = await call_daemon("Recheck", "ss", [args.interface, args.reason])
        print(f"re-checking {count} uplink(s)")
    elif args.command == "test-failover":
        if args.end:
            await call_daemon("EndForce")
            print("failover test ended; normal policy resumes")
        else:
            await call_daemon("ForceFailover", "d", [args.seconds])
            print(f"failover test: traffic avoids the current uplink for {args.seconds:g} s")
    elif args.clear:
        await call_daemon("ClearPreference")
        print("preference cleared; normal policy resumes")
    else:
        await call_daemon("Prefer", "sd", [args.uplink, args.seconds])
        until = f" for {args.seconds:g} s" if args.seconds else " until `nmfailover prefer --clear`"
        print(f"pinned to {args.uplink} while it is healthy{until}")
    return EXIT_OK


def _run_client(args: argparse.Namespace) -> int:
    if args.command == "prefer" and (
        args.clear == (args.uplink is not None) or (args.clear and args.seconds)
    ):
        raise UsageError("nmfailover prefer: give either UPLINK [--seconds N] or --clear")
    if args.command == "status" and args.interval is not None and not args.follow:
        raise UsageError("nmfailover status: --interval needs --follow")
    if args.command == "status" and args.follow:
        return asyncio.run(follow_status(args.interval or FOLLOW_INTERVAL))
    try:
        return asyncio.run(_client(args))
    except DaemonNotRunning:
        print(f"nmfailover: the daemon is not running (no {BUS_NAME} on the system bus)", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ControlAccessDenied as exc:
        print(
            f"nmfailover: access denied (root, the nmfailover group, or polkit for the desktop): {exc}",
            file=sys.stderr,
        )
        return EXIT_DENIED
    except ControlCallFailed as exc:
        print(f"nmfailover: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.dbus_error.endswith(".InvalidArgs") else EXIT_FAILURE
    except ControlError as exc:
        print(f"nmfailover: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "demo":
            from .lab.demo import run_demo  # the sandbox is no part of the daemon

            return run_demo(args.hold_down)
        if args.command == "install-system-files":
            if args.remove and (args.force or args.non_root):
                raise UsageError(
                    "nmfailover install-system-files: --remove takes neither --force nor --non-root"
                )
            return system_files.run_command(
                args.root, remove_files=args.remove, non_root=args.non_root, force=args.force
            )
        if args.command == "doctor":
            # Settings are one of its checks: it reads them itself and reports what is wrong. Its lines
            # are the report; the library's debug logging would only bury them.
            setup_logging("WARNING")
            return run_doctor(args.root or Path("/"))
        if args.command == "notify":
            # A user's session agent: the daemon's settings are none of its business.
            setup_logging("INFO")
            return asyncio.run(
                run_agent(NoticeBoard(args.flap_count, args.flap_window), tray=not args.no_tray)
            )
        if args.command in CLIENT_COMMANDS:
            # A client needs no settings: it must work from any shell, and from a hook.
            return _run_client(args)
        settings = load_settings()
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"nmfailover: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level)
    try:
        if args.command == "run":
            return asyncio.run(run_daemon(settings))
        return asyncio.run(_check(settings, args.json))
    except ConfigError as exc:
        print(f"nmfailover: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
