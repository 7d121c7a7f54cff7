"""`nmfailover run`: wire NetworkManager, the probes, the engine, the control interface, hooks and systemd
together, and turn the outcome into an exit code."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

from loguru import logger

from . import __version__, sdnotify
from .budget import BudgetKeeper
from .bus import DBUS_LIBRARY
from .config import Settings, uplink_variable
from .control import ControlService
from .echo import echo_available, echo_round
from .engine import Engine, EngineParams, Operator, SwitchEvent, SwitchListener, find_uplinks, role_name
from .engine.evidence import TrafficEvidence
from .engine.probing import Echoer, Prober
from .errors import ConfigError, ControlError, NMError, ProfileError, TaskGaveUp
from .hooks import SwitchHooks, Webhook
from .nm import NetworkManagerClient, Profile
from .probe import KeptAliveChecks, dns_round, probe_round

EXIT_OK, EXIT_FAILURE = 0, 1
CONTROL_MAX_SILENCE = 30.0


async def connect(settings: Settings, client: NetworkManagerClient) -> list[Profile]:
    """Connect and resolve the configured uplinks, or find them (auto); a named profile that does not exist
    is a ConfigError."""
    await client.connect()
    if settings.auto_uplinks:
        return [r.profile for r in (await find_uplinks(client, settings)).uplinks]
    try:
        return await client.resolve(settings.uplinks)
    except ProfileError as exc:
        raise ConfigError(uplink_variable(settings, exc.spec), str(exc)) from exc


def _heartbeats(settings: Settings, echo: Echoer) -> Echoer | None:
    if not settings.heartbeat:
        return None
    why = echo_available()
    if why is not None:
        logger.warning("no ICMP heartbeats, probing by HTTP only (more traffic): {}", why)
        return None
    return echo


def _traffic_evidence(settings: Settings) -> TrafficEvidence | None:
    if not settings.passive:
        return None
    return TrafficEvidence(settings.passive_syn_patience, settings.passive_dns_patience)


async def run_daemon(settings: Settings, prober: Prober = probe_round, echo: Echoer = echo_round) -> int:
    engine: Engine | None = None
    client = NetworkManagerClient(on_event=lambda event: engine.on_nm_event(event) if engine else None)
    tunnels = None
    if settings.wireguard_follow:
        # Imported only when tunnels are followed, as the metrics only when exported: the daemon loads no
        # code its configuration does not use (tests/test_imports.py).
        from .tunnels import Tunnels, check_names

        tunnels = Tunnels(settings.wireguard_follow, client)
    try:
        profiles = await connect(settings, client)
        if tunnels is not None:
            await check_names(settings, client, tunnels)  # an unknown interface: ConfigError, exit 2
    except NMError as exc:
        logger.error("cannot start: {}", exc)
        await client.close()
        return EXIT_FAILURE
    control = ControlService()
    hooks = SwitchHooks(settings)
    budget = BudgetKeeper(lambda: operator.status(), settings.metered_budget, settings.metered_budget_warn)
    # First: the Switched signal carries what the metered uplink carried up to this switch.
    control.switch_details = lambda: {"metered_budget": budget.status().model_dump(mode="json")}
    listeners: list[SwitchListener] = [budget.on_switch, control.on_switch, hooks.on_switch, _report_switch]
    if settings.webhook_url:
        listeners.append(Webhook(settings.webhook_url).on_switch)
    if tunnels is not None:
        listeners.append(tunnels.on_switch)
    metrics = None
    if settings.metrics_listen is not None or settings.metrics_textfile is not None:
        # Imported only when asked for: a daemon that exports nothing does not load prometheus_client.
        from .metrics import Metrics

        metrics = Metrics(lambda: operator.status())
        listeners.append(metrics.on_switch)
    kept_alive = KeptAliveChecks()
    engine = Engine(
        EngineParams.from_settings(settings),
        client,
        profiles,
        prober,
        listeners=listeners,
        dns_listeners=[control.on_dns],
        failback_guard=hooks.failback_guard if settings.failback_guard is not None else None,
        echo=_heartbeats(settings, echo),
        dns_check=dns_round,
        http_check=kept_alive,
        evidence=_traffic_evidence(settings),
    )
    operator = Operator(
        engine,
        tunnels=tunnels.status if tunnels is not None else lambda: None,
        metered_budget=budget.status,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    logger.info(
        "nmfailover {} managing {} over {} ({})",
        __version__,
        "the active connections that can carry a default route (NMFAILOVER_UPLINKS unset or auto)"
        if settings.auto_uplinks
        else ", ".join(f"{role_name(i)}={p.id}" for i, p in enumerate(profiles)),
        DBUS_LIBRARY,
        await client.version(),
    )
    try:
        # Before anything changes: a second instance must stop here, not fight the first over metrics.
        await control.start(operator)
    except ControlError as exc:
        logger.error("cannot start: {}", exc)
        await client.close()
        return EXIT_FAILURE
    supervisor = engine.supervisor
    jobs = {
        "control-bus": lambda: control.keep_connected(
            supervisor.liveness("control-bus", CONTROL_MAX_SILENCE)
        ),
        "systemd": lambda: systemd(engine, control.owned, sdnotify.watchdog_interval()),
        "metered-budget": budget.run,
    }
    if metrics is not None:
        jobs.update(metrics.jobs(settings))
    try:
        await engine.run(jobs)
    except TaskGaveUp as exc:
        logger.critical("{}", exc)
        return EXIT_FAILURE
    finally:
        sdnotify.notify("STOPPING=1")
        await kept_alive.aclose()
        await control.close()
        await client.close()
    logger.info("stopped")
    return EXIT_OK


async def systemd(engine: Engine, owned: asyncio.Event, watchdog: float | None) -> None:
    """READY=1 once the bus name is owned and the first round is decided; then the watchdog, petted only
    while every supervised loop makes progress (a hung loop gets the daemon restarted, not just a hung
    event loop)."""
    await engine.ready.wait()
    await owned.wait()
    current = engine.current
    where = engine.uplinks[current].role if current is not None else "no healthy uplink yet"
    sdnotify.notify("READY=1", f"STATUS=traffic on {where}")
    if watchdog is None:
        await asyncio.Event().wait()  # nothing more to tell systemd
        return
    reported: Sequence[str] = []
    while True:
        stuck = engine.supervisor.stuck()
        if not stuck:
            sdnotify.notify("WATCHDOG=1")
        elif stuck != reported:
            logger.error("no progress from {}: not petting the systemd watchdog", ", ".join(stuck))
        reported = stuck
        await asyncio.sleep(watchdog / 2)


async def _report_switch(event: SwitchEvent) -> None:
    sdnotify.notify(
        f"STATUS=traffic on {event.state.lower()} ({event.device}) since {event.action}: {event.reason}"
    )
