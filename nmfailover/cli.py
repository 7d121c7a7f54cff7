"""Command line: `nmfailover run` (the daemon) and `nmfailover check` (one probe round, a table, an exit code).

Exit codes: 0 success; 1 runtime failure (NetworkManager unreachable, preferred uplink unhealthy for
`check`); 2 bad configuration or usage. Configuration errors are reported before anything is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from loguru import logger

from . import __version__
from .config import ConfigError, Settings, load_settings
from .controller import Controller, role_name
from .log import setup_logging
from .bus import DBUS_LIBRARY
from .nm import NetworkManagerClient, NMError, NMUnavailable, Profile, ProfileError
from .probe import Link, probe_round

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nmfailover", description="Uplink failover for NetworkManager. Configured by "
                     "NMFAILOVER_* environment variables (see the README).")
    parser.add_argument("--version", action="version", version=f"nmfailover {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("run", help="run the failover daemon",
                        description="Probe every uplink and keep the most preferred healthy one as the "
                                    "default route. Stops on SIGTERM/SIGINT, restoring the profiles' metrics.")
    check = commands.add_parser("check", help="probe every uplink once and print the results",
                                description="Probe every uplink once. Exit 0 only if the most preferred "
                                            "uplink is healthy.")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    demo = commands.add_parser("demo", help="watch a failover in a sandbox (root; needs NetworkManager "
                               "installed, not running)",
                               description="Build a sandbox of a real NetworkManager with two simulated "
                                           "uplinks, run the daemon in it, cut the primary's upstream, heal "
                                           "it, print the measured times and remove everything. The "
                                           "machine's own interfaces, routes and resolver are not touched.")
    demo.add_argument("--hold-down", type=float, default=10.0, metavar="SECONDS",
                      help="failback hold-down for the demo (default: 10)")
    return parser


async def _connect(settings: Settings, client: NetworkManagerClient) -> list[Profile]:
    await client.connect()
    try:
        return await client.resolve(settings.uplinks)
    except ProfileError as exc:
        raise ConfigError("NMFAILOVER_UPLINKS", str(exc)) from exc


async def _run(settings: Settings) -> int:
    controller: Controller | None = None
    client = NetworkManagerClient(on_event=lambda what: controller.on_nm_event(what) if controller else None)
    try:
        profiles = await _connect(settings, client)
    except NMError as exc:
        logger.error("cannot start: {}", exc)
        return EXIT_FAILURE
    controller = Controller(settings, client, profiles, probe_round)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop)
    logger.info("nmfailover {} managing {} over {} ({})", __version__,
                ", ".join(f"{role_name(i)}={p.id}" for i, p in enumerate(profiles)), DBUS_LIBRARY,
                await client.version())
    try:
        await controller.run()
    finally:
        await client.close()
    logger.info("stopped")
    return EXIT_OK


async def _check(settings: Settings, as_json: bool) -> int:
    client = NetworkManagerClient()
    try:
        profiles = await _connect(settings, client)
        links = [await client.link_state(p.uuid) for p in profiles]
    except NMUnavailable as exc:
        print(f"nmfailover: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await client.close()
    rounds = await asyncio.gather(*(
        probe_round(Link(link.interface if link.activated else None, link.nameservers),
                    settings.probe_targets, settings.probe_timeout, settings.probe_quorum)
        for link in links))
    rows = []
    for index, (profile, link, result) in enumerate(zip(profiles, links, rounds)):
        for probe in result.results:
            rows.append({"uplink": role_name(index), "profile": profile.id, "device": link.interface or "-",
                         "target": probe.target.url, "result": "ok" if probe.ok else "FAIL",
                         "latency_ms": round(probe.latency * 1000), "reason": probe.reason.value,
                         "detail": probe.detail})
    verdicts = [{"uplink": role_name(i), "profile": p.id, "healthy": r.ok, "summary": r.summary}
                for i, (p, r) in enumerate(zip(profiles, rounds))]
    if as_json:
        print(json.dumps({"probes": rows, "uplinks": verdicts}, indent=2))
    else:
        columns = ("uplink", "device", "result", "latency_ms", "reason", "target", "detail")
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
        print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
        for row in rows:
            print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
        for verdict in verdicts:
            state = "healthy" if verdict["healthy"] else "UNHEALTHY"
            print(f"{verdict['uplink']} ({verdict['profile']}): {state}: {verdict['summary']}")
    return EXIT_OK if rounds[0].ok else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "demo":
            from .demo import run_demo  # the sandbox is not needed by the daemon itself

            return run_demo(args.hold_down)
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
            return asyncio.run(_run(settings))
        return asyncio.run(_check(settings, args.json))
    except ConfigError as exc:
        print(f"nmfailover: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
