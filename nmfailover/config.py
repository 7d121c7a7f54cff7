"""Settings from NMFAILOVER_* environment variables and an optional env file."""

import enum
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from nmfailover.probe import DEFAULT_TARGETS, Target, check_url, parse_target

from .budget import parse_size

# Re-exported (the redundant alias says so to mypy): callers catch config.ConfigError.
from .errors import ConfigError as ConfigError

PREFIX = "NMFAILOVER_"
ENV_FILE_VARIABLE = "NMFAILOVER_ENV_FILE"
DEFAULT_ENV_FILE = Path("/etc/nmfailover/nmfailover.env")
ENV_FILE_MEANING = "The env file to read; empty: none. A file named explicitly must exist."
DEFAULT_HOOKS_DIR = Path("/etc/nmfailover/hooks.d")
# What the daemon sets for switch hooks (hooks.py), not settings: a hook that runs `nmfailover check`
# passes them on, and that must not be refused as a typo.
EVENT_VARIABLES = frozenset(
    {
        "NMFAILOVER_STATE",
        "NMFAILOVER_ACTION",
        "NMFAILOVER_FROM",
        "NMFAILOVER_TO",
        "NMFAILOVER_FROM_DEVICE",
        "NMFAILOVER_DEVICE",
        "NMFAILOVER_GATEWAY4",
        "NMFAILOVER_GATEWAY6",
        "NMFAILOVER_REASON",
        "NMFAILOVER_AT",
    }
)
# virtual-failover's names; FALLBACK is optional there too.
LEGACY_UPLINK_VARIABLES = ("PRIMARY_CONNECTION", "BACKUP_CONNECTION", "FALLBACK_CONNECTION")
# NMFAILOVER_UPLINKS's value (or its absence) for uplinks found and ordered at run time.
AUTO = "auto"
# Found ones beyond this many are left alone: room for their metrics and tables is checked at start.
AUTO_MAX_UPLINKS = 8
MAX_METRIC = 4_294_967_295  # NetworkManager stores route metrics as uint32
MAX_TABLE = 4_294_967_295  # routing table ids are uint32 too
# The kernel's own tables: default, main and local (0 means "unspecified" and is refused as well).
RESERVED_TABLES = frozenset({253, 254, 255})
# Source rules take this priority and the next one, both before the main table's rule at 32766.
MAX_SOURCE_RULE_PRIORITY = 32764
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


_N = TypeVar("_N", int, float)


def _checked(convert: Callable[[str], _N], accept: Callable[[_N], bool], rule: str) -> BeforeValidator:
    # Parse ourselves so that a bad string and an out-of-range number get the same one-line message,
    # instead of pydantic's wording that differs per failure.
    def check(value: object) -> _N:
        try:
            number = convert(str(value).strip())
        except ValueError:
            number = None
        if number is None or not accept(number):
            raise ValueError(f"{rule}; got {value!r}")
        return number

    return BeforeValidator(check)


def _flag(value: object) -> object:
    # pydantic would also take on/off, t/f, y/n; keep to the documented spellings.
    if isinstance(value, bool):
        return value
    try:
        return _BOOLEANS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"must be one of 1, 0, true, false, yes, no; got {value!r}") from None


# `0 < x < inf` also rejects nan.
Seconds = Annotated[float, _checked(float, lambda x: 0 < x < float("inf"), "must be a number greater than 0")]
HoldDown = Annotated[float, _checked(float, lambda x: 0 <= x < float("inf"), "must be a number of 0 or more")]
Count = Annotated[int, _checked(int, lambda n: n >= 1, "must be a whole number of 1 or more")]
Metric = Annotated[
    int, _checked(int, lambda n: 0 <= n <= MAX_METRIC, f"must be a whole number from 0 to {MAX_METRIC}")
]
Flag = Annotated[bool, BeforeValidator(_flag)]


class ListenAddress(NamedTuple):
    """Where the metrics are served: a loopback IP address (IPv6 without brackets) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_LISTEN_EXAMPLE = "like 127.0.0.1:9469 or [::1]:9469"


def _listen_address(value: str) -> ListenAddress | None:
    text = value.strip()
    if not text:
        return None
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"must be ADDRESS:PORT, {_LISTEN_EXAMPLE}; got {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        address = None
    # A name such as localhost is refused rather than looked up: what it resolves to can change.
    if address is None or (address.version == 6) != bracketed:
        raise ValueError(
            f"must be an IP address and port, IPv6 in brackets, {_LISTEN_EXAMPLE}; got {value!r}"
        )
    if not address.is_loopback:
        raise ValueError(
            f"must be a loopback address, {_LISTEN_EXAMPLE}: the metrics are served without "
            f"authentication (scrape them through node_exporter or a proxy); got {value!r}"
        )
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else 0
    if not 1 <= port <= 65535:
        raise ValueError(f"must end in a port from 1 to 65535, {_LISTEN_EXAMPLE}; got {value!r}")
    return ListenAddress(str(address), port)


def _variable_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def _split(value: str, what: str) -> tuple[str, ...]:
    if not value.strip():
        raise ValueError(f"is empty; give a comma-separated list of {what}")
    items = tuple(item.strip() for item in value.split(","))
    if "" in items:
        raise ValueError(f"has an empty item: {value!r}")
    return items


class Settings(BaseSettings):
    """Validated settings; build them with load_settings(), which reads the environment and env file."""

    model_config = SettingsConfigDict(
        frozen=True,
        # Keyed by the full variable name, pydantic's error locations are exactly what the user has to fix.
        alias_generator=AliasGenerator(validation_alias=_variable_name),
    )

    # Each setting's meaning is its description: the commented env file, the README's table and the man
    # page's ENVIRONMENT section are generated from these (python -m nmfailover.docs). Backticks mark
    # literal text; examples[0], where given, is the env file's example line instead of the default.
    uplinks: tuple[str, ...] = Field(
        (),
        description="Unset, empty or `auto`: every active connection that can carry a default route, "
        "wired before Wi-Fi before a tethered phone before a modem, metered last, then by route metric "
        "(`nmfailover status` shows the order and why). Or comma-separated NetworkManager profiles (id, "
        "UUID or interface name), most preferred first, at least 2: `nmcli -f NAME,UUID,DEVICE connection "
        "show` lists them. virtual-failover's `PRIMARY_CONNECTION`, `BACKUP_CONNECTION` and "
        "`FALLBACK_CONNECTION` (optional) are accepted instead.",
        examples=["Fiber,Hotspot"],
    )
    probe_targets: tuple[Target, ...] = Field(
        DEFAULT_TARGETS,
        validation_alias="NMFAILOVER_PROBE_URLS",
        description="Comma-separated probe targets `URL [STATUS [BODY]]`: the HTTP status and a body "
        "substring a healthy answer must have. The default connectivity checks (Google, Cloudflare, "
        "Mozilla, GNOME) need only the URL; other URLs default to 204 for `.../generate_204`, else 200, "
        'e.g. `"https://example.net/health 200 ok"`. A redirect (captive portal) or a wrong body counts '
        "as a failure.",
    )
    probe_timeout: Seconds = Field(
        1.0,
        description="The longest a probe (DNS + connect + TLS + answer) may take, in seconds; not longer "
        "than `NMFAILOVER_ACTIVE_INTERVAL` or `NMFAILOVER_STANDBY_INTERVAL`.",
    )
    probe_timeout_min: Seconds = Field(
        0.25,
        description="The shortest, in seconds: each probe's timeout follows that target's own answer times "
        "through the uplink (smoothed round-trip time + 4 x its variation, as TCP does) between this floor "
        "and `NMFAILOVER_PROBE_TIMEOUT`, and a doubt is confirmed with the full timeout.",
    )
    busy_rx_rate: Annotated[int, _checked(int, lambda n: n >= 0, "must be a whole number of 0 or more")] = (
        Field(
            32768,
            description="Busy is not dead: a round whose probes time out while the uplink keeps receiving at "
            "least this many bytes per second (your own download filling the router's queue) counts as slow, "
            "not failed. `0` turns this off (e.g. on a LAN flooded with multicast).",
        )
    )
    probe_quorum: Count = Field(1, description="Targets that must answer correctly for a round to be good.")
    active_interval: Seconds = Field(
        1.0,
        validation_alias=AliasChoices("NMFAILOVER_ACTIVE_INTERVAL", "PRIMARY_CHECK_INTERVAL_IN_SECONDS"),
        description="Seconds from the start of one round to the next on the uplink carrying traffic and "
        "on those preferred over it.",
    )
    standby_interval: Seconds = Field(
        30.0,
        validation_alias=AliasChoices("NMFAILOVER_STANDBY_INTERVAL", "BACKUP_CHECK_INTERVAL_IN_SECONDS"),
        description="Seconds between rounds on the uplinks less preferred than the one carrying traffic, "
        "which are often metered and so probed less often.",
    )
    suspect_interval: Seconds = Field(
        0.5,
        description="Seconds between rounds while an uplink's last round disagreed with its state; "
        "shorter than `NMFAILOVER_PROBE_TIMEOUT`, rounds run back to back.",
    )
    heartbeat: Flag = Field(
        True,
        description="Heartbeats: a healthy uplink's rounds are a single ICMP echo (84 bytes on the wire, a "
        "seventh of an HTTP probe) to the address a probe target answered from; a missed one is confirmed "
        "at once by bursts of echoes whose answers are counted. Targets that never answer echoes are "
        "probed by HTTP only. `false`: HTTP rounds only.",
    )
    proof_interval: Seconds = Field(
        300.0,
        description="Seconds between HTTP rounds (a real lookup, a new connection, no captive portal) "
        "that prove every layer of the uplink carrying traffic; between proofs the cheap DNS and HTTP "
        "checks cover it. Not shorter than `NMFAILOVER_ACTIVE_INTERVAL`.",
    )
    standby_proof_interval: Seconds = Field(
        300.0,
        description="The same for the standby uplinks, often metered; the one traffic would move to is "
        "checked the moment the current one is in doubt. Not shorter than `NMFAILOVER_STANDBY_INTERVAL`.",
    )
    echo_burst: Count = Field(
        8,
        description="Echoes in each burst that confirms a missed heartbeat: none answered is a dead path; "
        "some answered feed the loss test of `NMFAILOVER_LOSS_TOLERATED` and `NMFAILOVER_LOSS_HEAVY`, whose "
        "further bursts, while it is undecided, are three times this size.",
    )
    loss_excuses: Annotated[int, _checked(int, lambda n: n >= 0, "must be a whole number of 0 or more")] = (
        Field(
            8,
            description="Failed HTTP rounds in a row, all timeouts, that count as loss rather than failure "
            "while an echo burst shows loss (a burst with every echo answered means HTTP itself does not "
            "answer: no excuse); `0`: none.",
        )
    )
    loss_tolerated: Annotated[
        float, _checked(float, lambda x: 0 <= x < 100, "must be a percentage of 0 or more, below 100")
    ] = Field(
        28.0,
        description="Percent of echoes a usable path may lose (15 % each way loses 28 % of round trips): "
        "bursts go on until a sequential test (Wald's) tells this loss from the heavy one, about a dozen "
        "to fifty echoes. Below `NMFAILOVER_LOSS_HEAVY`.",
    )
    loss_heavy: Annotated[
        float, _checked(float, lambda x: 0 < x < 100, "must be a percentage above 0, below 100")
    ] = Field(
        60.0,
        description="Percent of lost echoes that makes an uplink unusable (60 % one way; each way is "
        "84 %): such a test fails the uplink, at a false-alarm rate of one in a million tests.",
    )
    dns_check_interval: Seconds = Field(
        15.0,
        description="Seconds between DNS queries (about 160 bytes) to the uplink's own resolvers, bound to "
        "its device, on the uplink carrying traffic and those preferred to it.",
    )
    http_check_interval: Seconds = Field(
        15.0,
        description="Seconds between requests on a kept-alive HTTP connection (no lookup, no handshake) to "
        "the address a proof reached; any failure (refused, no answer, a redirect or login page) calls a "
        "proof at once.",
    )
    traffic_check_interval: Seconds = Field(
        3.0,
        description="The pace of the DNS and HTTP checks, in seconds, while your own traffic goes through "
        "the uplink: bytes are spent where there is traffic.",
    )
    passive: Flag = Field(
        True,
        description="Watch your own traffic through each uplink (connection attempts answered, refused or "
        "unanswered, DNS queries answered or not, sending while receiving nothing) and check the uplink "
        "the moment it shows trouble; costs no probe traffic.",
    )
    passive_syn_patience: Seconds = Field(
        0.4,
        description="Seconds after which one of your connection attempts through an uplink without an "
        "answer makes it check its path at once (counted as a missed heartbeat, confirmed by a burst).",
    )
    passive_dns_patience: Seconds = Field(
        1.0,
        description="Seconds after which one of your lookups through an uplink without an answer makes it "
        "check its resolvers at once.",
    )
    dns_failover: Flag = Field(
        True,
        description="Dead resolvers behind a live path: traffic stays on the uplink and working resolvers "
        "are put in front for it through NetworkManager at run time, given back when its own answer "
        "again; `false`: such an uplink counts as down.",
    )
    dns_servers: tuple[str, ...] = Field(
        (),
        description="Comma-separated resolver addresses to put in front of an uplink whose own resolvers "
        "are dead; none: the other uplinks' own resolvers.",
    )
    ipv6_interval: Seconds = Field(
        20.0,
        description="Seconds between the IPv6 heartbeats that judge a dual-stack uplink's IPv6 path on "
        "its own.",
    )
    fail_count: Count = Field(
        2,
        description="Consecutive failed rounds before an uplink is down (a vanished device is down at once).",
    )
    rise_count: Count = Field(3, description="Consecutive good rounds before a down uplink is up again.")
    failback_hold_down: HoldDown = Field(
        30.0, description="Seconds a more preferred uplink must stay up before traffic moves back to it."
    )
    failback_hold_down_max: HoldDown = Field(
        960.0,
        description="Flap damping: each further failure of an uplink within `NMFAILOVER_FLAP_WINDOW` "
        "doubles its hold-down, up to this many seconds, so a primary that dies every few minutes is not "
        "taken back every time (`status` shows each uplink's hold-down and why).",
    )
    flap_window: Seconds = Field(3600.0, description="Seconds a failure counts toward flap damping.")
    brownout_window: Seconds = Field(
        20.0,
        description="Seconds over which loss and answer times are judged for a brownout (`status` shows "
        "`loss_pct`, `rtt_p50_ms`, `rtt_p95_ms`).",
    )
    brownout_loss: Annotated[
        float, _checked(float, lambda x: 0 < x <= 100, "must be a percentage above 0, at most 100")
    ] = Field(
        50.0,
        description="Percent of lost answers over the brownout window that makes an uplink `degraded`: "
        "traffic leaves it if a better uplink is healthy, and returns only after a hold-down without "
        "degradation; light loss never moves traffic.",
    )
    brownout_latency: Annotated[
        float, _checked(float, lambda x: 1 < x < float("inf"), "must be a number above 1")
    ] = Field(
        5.0,
        description="A median answer time this many times the uplink's usual one (and at least 100 ms more) "
        "also makes it `degraded`; answers measured while your own traffic fills the line do not count.",
    )
    metric_base: Metric = Field(
        100, description="Route metric (IPv4 and IPv6) of the uplink carrying traffic."
    )
    # Its upper bound depends on the base and the number of uplinks (_check_relations).
    metric_step: Count = Field(
        100, description="The uplink ranked k gets the route metric `NMFAILOVER_METRIC_BASE` + k x this."
    )
    manage_autoconnect_priority: Flag = Field(
        True, description="Also rank `connection.autoconnect-priority` (in memory only, nothing saved)."
    )
    # Which uplink a name stands for (role, profile id, UUID, interface) is known only once NetworkManager
    # has resolved the profiles, so engine/actuator.py refuses the names that are none of them.
    metered: tuple[str, ...] = Field(
        (),
        description="Uplinks to mark metered while the daemon runs (`connection.metered=yes` at run time, "
        "nothing saved), named as in `NMFAILOVER_UPLINKS` or by role, e.g. `backup`: the desktop, apt and "
        "Flatpak then hold back big downloads while traffic is on it.",
    )
    on_demand: tuple[str, ...] = Field(
        (),
        description="Uplinks kept down while a more preferred one is healthy (a 4G stick that should not "
        "burn data or battery while the fiber works) and activated through NetworkManager when none is; "
        "named as in `NMFAILOVER_METERED`.",
    )
    on_demand_linger: HoldDown = Field(
        30.0,
        description="Seconds an on-demand uplink stays up after traffic left it (connections still on it "
        "finish first), 0 or more.",
    )
    metered_budget: int | None = Field(
        None,
        description="A monthly data budget for the metered uplinks (NetworkManager says metered, or named "
        "in `NMFAILOVER_METERED`): a size like `5GiB`, `500MB` or `2000000` (bytes; units B, kB, MB, GB, "
        "TB, KiB, MiB, GiB, TiB). The bytes each carries while it carries traffic are counted per outage "
        "and per calendar month in /var/lib/nmfailover, and shown by `status` and the metrics; without a "
        "budget they are counted, never warned about.",
    )
    metered_budget_warn: tuple[int, ...] = Field(
        (75, 95),
        description="Rising percentages of that budget at which a warning is logged (and shown by `status` "
        "and the metrics); empty: never.",
    )
    source_routing: Flag = Field(
        True,
        description="Connections outlive switches: each uplink's applied connection gets a routing table of "
        "its own (at run time, nothing saved) with its default route, and rules so that a connection keeps "
        "leaving through the uplink whose address it uses; new connections follow the main default route. "
        "`false`: off.",
    )
    source_routing_table: Annotated[
        int, _checked(int, lambda n: 1 <= n <= MAX_TABLE, f"must be a whole number from 1 to {MAX_TABLE}")
    ] = Field(
        7100,
        description="The first uplink's routing table; the uplink ranked k uses this + k. The range must "
        "avoid the kernel's tables 253-255.",
    )
    source_routing_priority: Annotated[
        int,
        _checked(int, lambda n: 1 <= n <= MAX_SOURCE_RULE_PRIORITY, f"must be a whole number from 1 to "
                 f"{MAX_SOURCE_RULE_PRIORITY}"),
    ] = Field(
        30100,
        description="Priority of the rules that keep the main table's specific routes (LAN, VPN) for an "
        "uplink's own traffic; its rule into its own table takes the next one. From 1 to 32764: before "
        "the main table's rule (32766).",
    )  # fmt: skip
    # Read with the kernel's net.mptcp.enabled at start (mptcp.py); it does nothing while that is off.
    mptcp: Flag = Field(
        True,
        description="Multipath TCP: every uplink's addresses stay MPTCP endpoints, and those of the uplinks "
        "not carrying traffic are `backup` ones (no data while the carrying one works), switched with every "
        "failover and failback at run time; MPTCP connections then survive a failover. Only while the "
        "kernel's `net.mptcp.enabled` is 1. `false`: off (NetworkManager's own endpoints stay as they are).",
    )
    log_level: str = Field("INFO", description="One of " + ", ".join(LOG_LEVELS) + ".")
    hooks_dir: Path | None = Field(
        DEFAULT_HOOKS_DIR,
        description="Switch hooks: the executables run after every switch (see the README). The default "
        "may be missing (no hooks), a directory named explicitly must exist; empty turns hooks off. They run "
        "in the service's sandbox: read-only system, no capability but CAP_NET_RAW (and CAP_NET_ADMIN with "
        "the drop-in `kernel-wireguard.conf`; see nmfailover.service).",
    )
    hook_timeout: Seconds = Field(
        10.0, description="Seconds each hook may run; then its process group is killed."
    )
    failback_guard: Path | None = Field(
        None, description="Absolute path of an executable asked before every failback (see the README)."
    )
    failback_guard_timeout: Seconds = Field(
        2.0,
        description="Seconds the failback guard may take; a timeout vetoes the failback. Short: the daemon "
        "decides nothing else meanwhile.",
    )
    webhook_url: str | None = Field(
        None, description="`http://` or `https://` URL every switch is POSTed to as JSON (see the README)."
    )
    # ("auto",) is every WireGuard interface found at the switch, () is off. Whether a named one exists is
    # known only on the machine at start (tunnels.check_names), not here.
    wireguard_follow: tuple[str, ...] = Field(
        ("auto",),
        description="WireGuard interfaces whose peers follow every switch (their endpoints set again, so "
        "the tunnel leaves through the new uplink): `auto` (every WireGuard interface), `off`, or names "
        "such as `wg0,wg1`; a name that is not a WireGuard interface at start is refused. Interfaces "
        "NetworkManager manages are moved by NetworkManager; the others with `wg`, which needs CAP_NET_ADMIN "
        "for a kernel interface: the service has it only with the drop-in `kernel-wireguard.conf` (see the "
        "README).",
    )
    # Both off by default: the metrics name the uplinks and their devices, and are served without
    # authentication, hence loopback only.
    metrics_listen: ListenAddress | None = Field(
        None,
        description="`ADDRESS:PORT` to serve Prometheus metrics on over HTTP, loopback only, e.g. "
        "`127.0.0.1:9469` or `[::1]:9469` (see the README's Metrics).",
    )
    metrics_textfile: Path | None = Field(
        None,
        description="Absolute path of a node_exporter textfile (`*.prom`, in an existing directory the "
        "service may write) to write the metrics to, e.g. "
        "`/var/lib/prometheus/node-exporter/nmfailover.prom`.",
    )
    metrics_textfile_interval: Seconds = Field(
        15.0,
        description="Seconds between rewrites of the metrics textfile; it is also rewritten right after "
        "every switch.",
    )

    _legacy_uplinks: bool = PrivateAttr(default=False)

    @property
    def timeout_floor(self) -> float:
        """The shortest a probe's timeout gets, however fast the link answers."""
        return min(self.probe_timeout_min, self.probe_timeout)

    @property
    def auto_uplinks(self) -> bool:
        """The uplinks are the active connections that can carry a default route, found at run time."""
        return not self.uplinks

    @property
    def max_uplinks(self) -> int:
        return AUTO_MAX_UPLINKS if self.auto_uplinks else len(self.uplinks)

    @property
    def legacy_uplink_variables(self) -> bool:
        """True when the uplinks came from PRIMARY/BACKUP/FALLBACK_CONNECTION."""
        return self._legacy_uplinks

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() hands over the exact mapping to use; reading os.environ here as well would let
        # the process environment leak into tests and bypass the unknown-variable check.
        return (init_settings,)

    @field_validator("uplinks", mode="before")
    @classmethod
    def _split_uplinks(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", AUTO):
            return ()
        return _split(value, "profiles, most preferred first, or auto") if isinstance(value, str) else value

    @field_validator("uplinks")
    @classmethod
    def _check_uplinks(cls, uplinks: tuple[str, ...]) -> tuple[str, ...]:
        if len(uplinks) == 1:
            names = ", ".join(repr(name) for name in uplinks)
            raise ValueError(f"needs at least 2 profiles, or auto; got {len(uplinks)} ({names})")
        for index, name in enumerate(uplinks):
            if name in uplinks[:index]:
                raise ValueError(f"{name!r} is listed twice")
        return uplinks

    @field_validator("metered", "on_demand", mode="before")
    @classmethod
    def _split_uplink_names(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return ()  # the default: no uplink is marked
        names = _split(value, "uplinks (as in NMFAILOVER_UPLINKS, or primary, backup...)")
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"{name!r} is listed twice")
        return names

    @field_validator("metered_budget", mode="before")
    @classmethod
    def _check_metered_budget(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return parse_size(value) if value.strip() else None

    @field_validator("metered_budget_warn", mode="before")
    @classmethod
    def _check_metered_budget_warn(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return ()  # count, never warn
        shares = []
        for item in _split(value, "percentages from 1 to 100"):
            if not (item.isascii() and item.isdigit()) or not 1 <= int(item) <= 100:
                raise ValueError(f"must be whole percentages from 1 to 100, like 75,95; got {item!r}")
            shares.append(int(item))
        if shares != sorted(set(shares)):
            raise ValueError(f"must rise from one percentage to the next, like 75,95; got {value!r}")
        return tuple(shares)

    @field_validator("dns_servers", mode="before")
    @classmethod
    def _parse_dns_servers(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return ()  # the default: the other uplinks' own resolvers
        servers = _split(value, "resolver IP addresses")
        for server in servers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(f"{server!r} is not an IP address") from None
        return servers

    @field_validator("probe_targets", mode="before")
    @classmethod
    def _parse_targets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(parse_target(spec) for spec in _split(value, "URLs"))
        return value

    @field_validator("hooks_dir", mode="before")
    @classmethod
    def _check_hooks_dir(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return None
            if not Path(value).is_dir():
                raise ValueError(f"no such directory: {value!r}")
        return value

    @field_validator("failback_guard", mode="before")
    @classmethod
    def _check_guard(cls, value: object) -> object:
        path = _absolute_path(value)
        if path is not None and (not path.is_file() or not os.access(path, os.X_OK)):
            raise ValueError(f"must be an executable file; got {value!r}")
        return path if isinstance(value, str) else value

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _check_webhook(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return None
            value = value.strip()
            check_url(value)
            # urlsplit quietly drops tabs and newlines and accepts any host text: refuse what no host is.
            hostname = urlsplit(value).hostname or ""
            if any(c.isspace() or not c.isprintable() for c in value) or not _HOST.fullmatch(hostname):
                raise ValueError(f"has characters no URL host or path may hold; got {value!r}")
        return value

    @field_validator("wireguard_follow", mode="before")
    @classmethod
    def _parse_wireguard_follow(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.lower() == "auto":
            return ("auto",)
        if not text or text.lower() == "off":
            return ()
        names = _split(value, "WireGuard interfaces, or auto or off")
        for index, name in enumerate(names):
            if name.lower() in ("auto", "off"):
                raise ValueError(f"{name!r} cannot be combined with interface names; got {value!r}")
            # The kernel's own rule (dev_valid_name): at most 15 bytes, no '/', ':' or white space.
            if (
                len(name.encode()) > 15
                or name in (".", "..")
                or any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
            ):
                raise ValueError(f"{name!r} is not a valid interface name")
            if name in names[:index]:
                raise ValueError(f"{name!r} is listed twice")
        return names

    @field_validator("metrics_listen", mode="before")
    @classmethod
    def _check_metrics_listen(cls, value: object) -> object:
        return _listen_address(value) if isinstance(value, str) else value

    @field_validator("metrics_textfile", mode="before")
    @classmethod
    def _check_metrics_textfile(cls, value: object) -> object:
        path = _absolute_path(value)
        if path is not None:
            if path.suffix != ".prom":
                # node_exporter's textfile collector reads *.prom and nothing else.
                raise ValueError(f"must end in .prom; got {value!r}")
            if not path.parent.is_dir():
                raise ValueError(f"no such directory: {str(path.parent)!r}")
            if path.is_dir():
                raise ValueError(f"is a directory; name a file in it; got {value!r}")
        return path if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_level(cls, value: object) -> str:
        level = str(value).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}; got {value!r}")
        return level

    @model_validator(mode="after")
    def _check_relations(self) -> Self:
        # ConfigError, not ValueError: pydantic passes other exceptions through untouched, and a ValueError
        # here would lose the variable name (its location would be the whole model).
        for name, interval in (
            ("NMFAILOVER_ACTIVE_INTERVAL", self.active_interval),
            ("NMFAILOVER_STANDBY_INTERVAL", self.standby_interval),
        ):
            if self.probe_timeout > interval:
                raise ConfigError(
                    "NMFAILOVER_PROBE_TIMEOUT",
                    f"must not be longer than {name} ({interval} s); got {self.probe_timeout}",
                )
        for name, proof, base, interval in (
            (
                "NMFAILOVER_PROOF_INTERVAL",
                self.proof_interval,
                "NMFAILOVER_ACTIVE_INTERVAL",
                self.active_interval,
            ),
            (
                "NMFAILOVER_STANDBY_PROOF_INTERVAL",
                self.standby_proof_interval,
                "NMFAILOVER_STANDBY_INTERVAL",
                self.standby_interval,
            ),
        ):
            if proof < interval:
                raise ConfigError(name, f"must not be shorter than {base} ({interval} s); got {proof}")
        if self.failback_hold_down_max < self.failback_hold_down:
            raise ConfigError(
                "NMFAILOVER_FAILBACK_HOLD_DOWN_MAX",
                f"must not be shorter than NMFAILOVER_FAILBACK_HOLD_DOWN ({self.failback_hold_down} s); "
                f"got {self.failback_hold_down_max}",
            )
        if self.loss_tolerated >= self.loss_heavy:
            raise ConfigError(
                "NMFAILOVER_LOSS_TOLERATED",
                f"must be below NMFAILOVER_LOSS_HEAVY ({self.loss_heavy} %); got {self.loss_tolerated}",
            )
        if self.suspect_interval > self.active_interval:
            raise ConfigError(
                "NMFAILOVER_SUSPECT_INTERVAL",
                f"must not be longer than NMFAILOVER_ACTIVE_INTERVAL ({self.active_interval} s); "
                f"got {self.suspect_interval}",
            )
        if self.probe_quorum > len(self.probe_targets):
            raise ConfigError(
                "NMFAILOVER_PROBE_QUORUM",
                f"must not exceed the number of probe targets ({len(self.probe_targets)}); "
                f"got {self.probe_quorum}",
            )
        count = self.max_uplinks
        highest = self.metric_base + (count - 1) * self.metric_step
        if highest > MAX_METRIC:
            raise ConfigError(
                "NMFAILOVER_METRIC_BASE",
                f"leaves no room for {count} uplinks NMFAILOVER_METRIC_STEP ({self.metric_step}) "
                f"apart: the last would get {highest}, above {MAX_METRIC}; got {self.metric_base}",
            )
        tables = range(self.source_routing_table, self.source_routing_table + count)
        if tables[-1] > MAX_TABLE or RESERVED_TABLES & set(tables):
            raise ConfigError(
                "NMFAILOVER_SOURCE_ROUTING_TABLE",
                f"the {count} uplinks would use tables {tables[0]} to {tables[-1]}, which must "
                f"avoid the kernel's default, main and local tables (253-255) and stay at most {MAX_TABLE}; "
                f"got {self.source_routing_table}",
            )
        return self


def _absolute_path(value: object) -> Path | None:
    """A path setting given as text: None when empty (the feature is off), else it must be absolute."""
    if not isinstance(value, str) or not value.strip():
        return None
    if not Path(value).is_absolute():
        raise ValueError(f"must be an absolute path; got {value!r}")
    return Path(value)


def _known_variables() -> frozenset[str]:
    names = {ENV_FILE_VARIABLE, *LEGACY_UPLINK_VARIABLES}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.update(choice for choice in choices if isinstance(choice, str))
    return frozenset(names)


# The env file is read twice: by systemd (EnvironmentFile=- in nmfailover.service) into the daemon's
# environment, and by load_settings() for `nmfailover check` and runs outside systemd. Both must get the
# same values, so this is systemd's grammar (parse_env_file_internal() in src/basic/env-file.c, the same in
# 252, Debian 12's, as today but for one case below; tests/test_config.py checks its tables against the
# real one), not the shell's. Not pydantic-settings' env_file either: python-dotenv, under it, reads shell
# syntax systemd does not (`export`, `# comments` after a value), expands ${VAR} and skips a bad line with
# a mere warning. What is read:
# - A line ends at \n (CRLF too). Blank lines and lines whose first non-blank character is # or ; are
#   skipped. Spaces and tabs around NAME, and after =, are dropped.
# - NAME is letters, digits and _, not starting with a digit. Of two lines for one NAME, the later wins.
# - An unquoted value runs to the line end, trailing blanks dropped; quotes, # and $ in it are kept as
#   they are. \ keeps the next character (\\ is one \, "\ " a kept space); \ at the line end joins the
#   next line. Nothing is expanded.
# - '...' keeps everything up to the next '. "..." keeps everything up to the next unescaped "; in it \
#   escapes " \ ` $, joins lines before a line end, and stays before anything else. Pieces join up:
#   A="a b"c is "a bc", and blanks right after a closing quote are dropped.
# The subset: whatever systemd would quietly skip, or read in a way the file's author hardly meant, is
# refused with its line number instead. That is a line without =, an invalid NAME (`export NAME=...`, a
# byte order mark, a space in NAME), a quote not closed on its own line (systemd would swallow the
# following lines into the value, and takes a quote still open at the end as closed), a comment ending in
# \ (252 takes the next line as comment too, 254 and later do not), a carriage return other than in CRLF
# (systemd ends the line there), and a NUL or invalid UTF-8 (systemd skips the whole file). No setting
# can hold a line break, so a value spanning lines other than by \ continuation is no loss.
_WHITESPACE = " \t\n\r"
_NEWLINE = "\n\r"  # systemd ends a line at either; a lone \r is refused, so \r only comes before \n here
_COMMENT_START = "#;"
_DOUBLE_QUOTE_ESCAPES = '"\\`$'  # what a \ inside "..." escapes (systemd's SHELL_NEED_ESCAPE)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # ASCII only, as systemd's env_name_is_valid()


class _State(enum.Enum):
    PRE_KEY = enum.auto()
    KEY = enum.auto()
    PRE_VALUE = enum.auto()
    VALUE = enum.auto()
    VALUE_ESCAPE = enum.auto()
    SINGLE_QUOTE = enum.auto()
    DOUBLE_QUOTE = enum.auto()
    DOUBLE_QUOTE_ESCAPE = enum.auto()
    COMMENT = enum.auto()
    COMMENT_ESCAPE = enum.auto()


class EnvFileError(ValueError):
    """One line of an env file that systemd would read differently or not at all."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


def _line_at(text: str, line: int) -> str:
    return text.split("\n")[line - 1].strip(_WHITESPACE)


def _checked_name(key: list[str], end: int | None, line: int) -> str:
    name = "".join(key[:end])
    if _NAME.fullmatch(name):
        return name
    words = name.split()
    if len(words) == 2 and words[0] == "export" and _NAME.fullmatch(words[1]):
        problem = f"'export' is shell syntax systemd does not understand; write {words[1]}=value"
    elif line == 1 and name.startswith("\ufeff"):  # editors on Windows may add one
        problem = "the file starts with a byte order mark, which systemd does not skip; save it without one"
    else:
        problem = f"{name!r} is not a variable name (letters, digits and _, not starting with a digit)"
    raise EnvFileError(line, problem)


def parse_env_file(text: str) -> dict[str, str]:
    """NAME -> value as systemd's EnvironmentFile= reads `text`; EnvFileError where it would not."""
    for index, char in enumerate(text):
        if char == "\0":
            problem = "has a NUL character (systemd would skip the whole file)"
        elif char == "\r" and not text.startswith("\n", index + 1):
            problem = "has a carriage return not followed by a line feed, where systemd ends the line"
        else:
            continue
        raise EnvFileError(text.count("\n", 0, index) + 1, problem)

    values: dict[str, str] = {}
    state = _State.PRE_KEY
    key: list[str] = []
    value: list[str] = []
    key_end: int | None = None  # where trailing whitespace in the key starts
    value_end: int | None = None  # where unescaped trailing whitespace in an unquoted value starts
    line = key_line = quote_line = 1

    def unclosed(quote: str) -> EnvFileError:
        where = "" if quote_line == line else f" (opened on line {quote_line})"
        return EnvFileError(line, f"{quote} not closed on its line{where}")

    for char in text:
        match state:
            case _State.PRE_KEY:
                if char in _COMMENT_START:
                    state = _State.COMMENT
                elif char not in _WHITESPACE:
                    state, key, key_end, key_line = _State.KEY, [char], None, line
            case _State.KEY:
                if char in _NEWLINE:
                    raise EnvFileError(line, f"expected NAME=value, got {_line_at(text, line)!r}")
                if char == "=":
                    state, value, value_end = _State.PRE_VALUE, [], None
                else:
                    if char not in _WHITESPACE:
                        key_end = None
                    elif key_end is None:
                        key_end = len(key)
                    key.append(char)
            case _State.PRE_VALUE:
                if char in _NEWLINE:
                    state = _State.PRE_KEY
                    values[_checked_name(key, key_end, key_line)] = "".join(value)
                elif char == "'":
                    state, quote_line = _State.SINGLE_QUOTE, line
                elif char == '"':
                    state, quote_line = _State.DOUBLE_QUOTE, line
                elif char == "\\":
                    state = _State.VALUE_ESCAPE
                elif char not in _WHITESPACE:
                    state = _State.VALUE
                    value.append(char)
            case _State.VALUE:
                if char in _NEWLINE:
                    state = _State.PRE_KEY
                    values[_checked_name(key, key_end, key_line)] = "".join(value[:value_end])
                elif char == "\\":
                    state, value_end = _State.VALUE_ESCAPE, None
                else:
                    if char not in _WHITESPACE:
                        value_end = None
                    elif value_end is None:
                        value_end = len(value)
                    value.append(char)
            case _State.VALUE_ESCAPE:
                state = _State.VALUE
                if char not in _NEWLINE:  # \ before a line end joins the lines
                    value.append(char)
            case _State.SINGLE_QUOTE:
                if char in _NEWLINE:
                    raise unclosed("single quote (')")
                if char == "'":
                    state = _State.PRE_VALUE
                else:
                    value.append(char)
            case _State.DOUBLE_QUOTE:
                if char in _NEWLINE:
                    raise unclosed('double quote (")')
                if char == '"':
                    state = _State.PRE_VALUE
                elif char == "\\":
                    state = _State.DOUBLE_QUOTE_ESCAPE
                else:
                    value.append(char)
            case _State.DOUBLE_QUOTE_ESCAPE:
                state = _State.DOUBLE_QUOTE
                if char in _DOUBLE_QUOTE_ESCAPES:
                    value.append(char)
                elif char != "\n":  # \ before \r stays, and the \n after it then ends the line unclosed
                    value += ("\\", char)
            case _State.COMMENT:
                if char == "\\":
                    state = _State.COMMENT_ESCAPE
                elif char in _NEWLINE:
                    state = _State.PRE_KEY
            case _State.COMMENT_ESCAPE:
                if char == "\n":
                    raise EnvFileError(
                        line,
                        "comment ends in a backslash, so systemd would take the next line as comment too",
                    )
                state = _State.COMMENT
        if char == "\n":
            line += 1

    # At the end of the text, as at a line end; systemd also takes an open quote as closed, we do not.
    match state:
        case _State.KEY:
            raise EnvFileError(line, f"expected NAME=value, got {_line_at(text, line)!r}")
        case _State.SINGLE_QUOTE:
            raise unclosed("single quote (')")
        case _State.DOUBLE_QUOTE | _State.DOUBLE_QUOTE_ESCAPE:
            raise unclosed('double quote (")')
        case _State.PRE_VALUE | _State.VALUE_ESCAPE:
            values[_checked_name(key, key_end, key_line)] = "".join(value)
        case _State.VALUE:
            values[_checked_name(key, key_end, key_line)] = "".join(value[:value_end])
    return values


def _read_env_file(environ: Mapping[str, str]) -> dict[str, str]:
    named = environ.get(ENV_FILE_VARIABLE)
    if named == "":  # lets an operator (or a test) turn the default file off
        return {}
    path = DEFAULT_ENV_FILE if named is None else Path(named)
    try:
        data = path.read_bytes()  # bytes: read_text() would turn a lone \r into a line end unseen
    except FileNotFoundError:
        if named is None:
            return {}
        raise ConfigError(ENV_FILE_VARIABLE, f"no such file: {path}") from None
    except OSError as error:
        raise ConfigError(ENV_FILE_VARIABLE, f"cannot read {path}: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            ENV_FILE_VARIABLE, f"{path} line {line}: not UTF-8 text (systemd would skip the whole file)"
        ) from None
    try:
        return parse_env_file(text)
    except EnvFileError as error:
        raise ConfigError(ENV_FILE_VARIABLE, f"{path} line {error.line}: {error.problem}") from None


def _uplinks(env: Mapping[str, str]) -> str | tuple[str, ...]:
    legacy = [name for name in LEGACY_UPLINK_VARIABLES if name in env]
    if "NMFAILOVER_UPLINKS" in env:
        if legacy:
            raise ConfigError("NMFAILOVER_UPLINKS", f"give either it or {', '.join(legacy)}, not both")
        return env["NMFAILOVER_UPLINKS"]
    if not legacy:
        return AUTO
    profiles: dict[str, str] = {}  # profile -> the variable that named it
    for name in LEGACY_UPLINK_VARIABLES:
        profile = env.get(name, "").strip()
        if not profile:
            if name == "FALLBACK_CONNECTION":  # virtual-failover setups often leave it empty
                continue
            raise ConfigError(name, "not set or empty (needed when NMFAILOVER_UPLINKS is not set)")
        if profile in profiles:
            raise ConfigError(name, f"{profile!r} is already {profiles[profile]}")
        profiles[profile] = name
    return tuple(profiles)


_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[?[0-9a-f:.]+\]?", re.IGNORECASE)


def uplink_variable(settings: Settings, spec: str) -> str:
    """The variable the user wrote `spec` in: NMFAILOVER_UPLINKS, or PRIMARY/BACKUP/FALLBACK_CONNECTION."""
    if settings.legacy_uplink_variables and spec in settings.uplinks:
        return LEGACY_UPLINK_VARIABLES[settings.uplinks.index(spec)]
    return "NMFAILOVER_UPLINKS"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `environ` (default os.environ) over the env file; every problem is a ConfigError."""
    env = dict(os.environ if environ is None else environ)
    merged = {**_read_env_file(env), **env}
    known = _known_variables()
    for name in sorted(merged):
        if name.startswith(PREFIX) and name not in known and name not in EVENT_VARIABLES:
            listing = ", ".join(sorted(v for v in known if v.startswith(PREFIX)))
            raise ConfigError(name, f"unknown variable; known: {listing}")
    values: dict[str, Any] = {name: merged[name] for name in known if name in merged}
    for name in (ENV_FILE_VARIABLE, *LEGACY_UPLINK_VARIABLES):
        values.pop(name, None)
    values["NMFAILOVER_UPLINKS"] = _uplinks(merged)
    try:
        settings = Settings(**values)
        # FALLBACK_CONNECTION may be empty, so the legacy names line up with the uplinks in order.
        settings._legacy_uplinks = "NMFAILOVER_UPLINKS" not in merged and bool(settings.uplinks)
        return settings
    except ValidationError as error:
        raise _config_error(error) from None


def _config_error(error: ValidationError) -> ConfigError:
    first = error.errors()[0]
    variable = str(first["loc"][0]) if first["loc"] else "configuration"
    cause = first.get("ctx", {}).get("error")
    # Our validators raise ValueError with the finished sentence; pydantic would prefix "Value error, ".
    problem = str(cause) if first["type"] == "value_error" and cause is not None else first["msg"]
    return ConfigError(variable, problem)
