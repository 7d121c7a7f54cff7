"""Command line: `nmfailover run` (the daemon), `nmfailover check` (one probe round, a table, an exit code)
and the clients of the running daemon's control interface (status, recheck, test-failover, prefer);
`install-system-files` and `doctor` set a pip/pipx installation up and check a machine (system_files.py,
doctor.py).

The commands and options are commandline.py's; its EXIT_* codes, and what makes each command end
with each, are docs.EXIT_STATUS (the man page's and the README's table). Configuration errors are
reported before anything is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .budget import format_size

# The command line's shape lives in commandline.py; what of it tests and scripts import from here stays here.
from .commandline import CLIENT_COMMANDS as CLIENT_COMMANDS
from .commandline import EXIT_DENIED as EXIT_DENIED
from .commandline import EXIT_FAILURE as EXIT_FAILURE
from .commandline import EXIT_NOT_RUNNING as EXIT_NOT_RUNNING
from .commandline import EXIT_OK as EXIT_OK
from .commandline import EXIT_USAGE as EXIT_USAGE
from .commandline import UsageError as UsageError
from .commandline import build_parser as build_parser
from .config import Settings, load_settings
from .control import BUS_NAME, call_daemon
from .daemon import connect, run_daemon
from .engine import find_uplinks, role_name
from .engine.actuator import ActuatorParams, metered_uplinks, metered_warning, on_demand_uplinks
from .errors import (
    ConfigError,
    ControlAccessDenied,
    ControlCallFailed,
    ControlError,
    DaemonNotRunning,
    NMUnavailable,
)
from .follow import FOLLOW_INTERVAL, follow_status
from .log import setup_logging
from .nm import NetworkManagerClient
from .notice import NoticeBoard
from .probe import Link, probe_round
from .status import BudgetStatus, Status, TunnelsStatus, UplinkStatus


async def _check(settings: Settings, as_json: bool) -> int:
    client = NetworkManagerClient()
    try:
        profiles = await connect(settings, client)
        choice = await find_uplinks(client, settings) if settings.auto_uplinks else None
        actuating = ActuatorParams.from_settings(settings)
        marked = metered_uplinks(actuating, profiles)  # a name that is no uplink: ConfigError, exit 2
        on_demand_uplinks(actuating, profiles)  # likewise
        if settings.wireguard_follow:
            from .tunnels import check_names

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


def print_status(status: Status) -> None:
    """The daemon's status as a person reads it: a few lines of state, then one row per uplink."""
    uplinks = status.uplinks
    carrying = status.carrying
    where = f"{carrying.role} ({carrying.device or carrying.profile})" if carrying else "none"
    print(f"traffic on: {where}; {status.switches} switch(es), last {_ago(status.last_switch_at)}")
    if status.forced_failover_remaining:
        print(f"failover test: {status.forced_failover_remaining:.0f} s left")
    if status.pinned:
        print(f"pinned to: {status.pinned}")
    if status.hold_down_remaining:
        print(f"failback hold-down: {status.hold_down_remaining:.0f} s left")
    _print_tunnels(status.tunnels)
    _print_budget(status.metered_budget)
    rows = [
        {
            "": "*" if u.carrying_traffic else "",
            "uplink": u.role,
            "profile": u.profile,
            "device": u.device or "-",
            "link": u.link,
            "health": u.health,
            "ipv6": u.ipv6_health or "-",
            "dns": u.dns_health or "-",
            "latency": "-" if u.latency_ms is None else f"{u.latency_ms:g} ms",
            "fail/ok": f"{u.consecutive_failures}/{u.consecutive_successes}",
            "loss, rtt p50/p95": _quality_cell(u),
            "probe bytes": _size(u.probe_bytes),
            "metered": _metered_cell(u.metered, u.metered_marked),
            "table": u.routing_table or "-",
            "last probe": u.reason or "-",
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
        if u.metered_warning:
            print(f"warning: {u.metered_warning}")
        if u.dns_moved_to:
            moved = ", ".join(u.dns_moved_to)
            print(f"{u.role}: its resolvers are dead; name resolution moved to {moved} (traffic stays)")
    _print_order(status)
    _print_source_routing(uplinks)


def _print_order(status: Status) -> None:
    """Why the uplinks stand in this order, and which connections are none, when they were found."""
    if not status.uplinks_found:
        return
    print()
    if len(status.uplinks) < 2:
        print("uplinks found: fewer than two, nothing to fail over to; waiting for another")
    for u in status.uplinks:
        print(f"{u.role} ({u.profile}): {u.order}")
    for left in status.not_uplinks:
        print(f"not an uplink: {left.profile} ({left.device or '-'}): {left.why}")


def _print_source_routing(uplinks: Sequence[UplinkStatus]) -> None:
    """Each uplink's rules and routes, as `ip rule` and `ip route show table N` would list them."""
    for u in uplinks:
        if u.routing_rules or u.routing_routes:
            print(f"{u.role} keeps its connections in table {u.routing_table}:")
            for line in (*u.routing_routes, *u.routing_rules):
                print(f"  {line}")


def _print_budget(budget: BudgetStatus | None) -> None:
    if not budget or (not budget.month_bytes and budget.outage is None):
        return  # nothing metered has carried traffic: nothing to say
    line = f"metered data this month: {format_size(budget.month_bytes)}"
    if budget.budget_bytes:
        line += f" of {format_size(budget.budget_bytes)} ({budget.used_pct:g} %)"
    outage = budget.outage
    if outage is not None:
        now = "this" if outage.ended_at is None else "last"
        line += f"; {now} outage on {outage.uplink}: {format_size(outage.bytes)}"
    print(line)


def _print_tunnels(tunnels: TunnelsStatus | None) -> None:
    if not tunnels or tunnels.switch_at is None:
        return
    moved = [f"{m.interface} ({m.endpoint} via {m.via}, by {m.by})" for m in tunnels.moved]
    print(f"WireGuard moved at the last switch: {', '.join(moved) or 'none'}")
    for interface, why in tunnels.failed.items():
        print(f"WireGuard {'tunnels' if interface == '*' else interface} not moved: {why}")


def _quality_cell(u: UplinkStatus) -> str:
    if u.rtt_p50_ms is None:
        return "-"
    return f"{u.loss_pct:g} %, {u.rtt_p50_ms:g}/{u.rtt_p95_ms:g} ms"


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
            print_status(Status.model_validate_json(text))
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


def _generated_file(kind: str) -> str:
    from .manpage import render  # only install-system-files needs it: no other command pays for its import

    return render(kind)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        if not _reader_gone():
            raise  # a socket's, not the output's
        # The output's reader went away (`| head`): the rest is dropped, with no traceback, and not exit 0,
        # as the output was cut. Python's own flush at exit must not fail either, hence /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILURE


def _reader_gone() -> bool:
    """Nobody reads stdout any more: the kernel reports an error on a pipe whose reading end is closed."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR is reported whether asked for or not
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no file descriptor (a test's capture): not a pipe
        return False


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "demo":
            from .lab.demo import run_demo  # the sandbox is no part of the daemon

            return run_demo(args.hold_down)
        if args.command == "install-system-files":
            if args.remove and (args.force or args.non_root or args.kernel_wireguard):
                raise UsageError(
                    "nmfailover install-system-files: --remove takes none of --force, --non-root and "
                    "--kernel-wireguard"
                )
            from . import system_files

            return system_files.run_command(
                args.root,
                remove_files=args.remove,
                non_root=args.non_root,
                force=args.force,
                kernel_wireguard=args.kernel_wireguard,
                generate=_generated_file,
            )
        if args.command == "doctor":
            # Settings are one of its checks: it reads them itself and reports what is wrong. Its lines
            # are the report; the library's debug logging would only bury them.
            setup_logging("WARNING")
            from .doctor import run as run_doctor

            return run_doctor(args.root or Path("/"))
        if args.command == "notify":
            # A user's session agent: the daemon's settings are none of its business.
            setup_logging("INFO")
            from .notify import run_agent

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
