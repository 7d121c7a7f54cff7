"""The status document: what the daemon's Status() method answers (JSON), defined once.

The engine's operator builds it (engine/operator.py), the control interface sends it as JSON, and every
reader parses it back into these models: `nmfailover status`, the metrics, the budget keeper,
`status --follow`, the desktop notice agent and its tray. docs/status.md is generated from the models
(`python -m nmfailover.status > docs/status.md`); a test fails when the two drift apart.

A field with a default may be missing from the answer of a daemon of an older version (one started before
an upgrade), so a reader still understands it; fields a reader does not know are ignored for the same
reason, the other way round.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo


class _Document(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class NotUplink(_Document):
    """An active connection that is not an uplink, and why (only when the uplinks are found at run time)."""

    profile: str = Field(description="its profile id")
    device: str | None = Field(description="its interface")
    why: str = Field(description="why it is not an uplink")


class LastSwitch(_Document):
    """What the last switch did, by roles; its time is `last_switch_at`."""

    action: str = Field(description="failover, failback, pin, avoid (failover test) or initial")
    from_role: str | None = Field(
        validation_alias=AliasChoices("from", "from_role"),
        serialization_alias="from",
        description="the role traffic left; null at start-up",
    )
    to: str = Field(description="the role traffic moved to")
    reason: str = Field(description="the policy's reason")


class TunnelMove(_Document):
    """A WireGuard peer moved to the new uplink at the last switch."""

    interface: str = Field(description="the WireGuard interface")
    peer: str = Field(description="the peer's public key")
    endpoint: str = Field(description="the peer's endpoint, HOST:PORT")
    via: str = Field(description="the uplink's interface it now leaves through")
    by: str = Field(description="who moved it: NetworkManager or wg")


class TunnelsStatus(_Document):
    """The WireGuard tunnels moved at the last switch (NMFAILOVER_WIREGUARD_FOLLOW)."""

    follow: str | tuple[str, ...] = Field(description='"auto", or the interfaces named')
    switch_at: float | None = Field(description="when the last switch moved them (seconds since the epoch)")
    moved: tuple[TunnelMove, ...] = Field(description="the peers moved")
    failed: dict[str, str] = Field(description='interface ("*": all of them) -> why it was not moved')


class OutageStatus(_Document):
    """A stretch of time a metered uplink carried traffic."""

    uplink: str = Field(description="the metered uplink's profile id")
    started_at: float = Field(description="seconds since the epoch")
    ended_at: float | None = Field(description="seconds since the epoch; null while it lasts")
    bytes: int = Field(description="bytes it carried meanwhile")


class BudgetStatus(_Document):
    """The metered uplinks' bytes this month and the budget (NMFAILOVER_METERED_BUDGET)."""

    month: str = Field(description="the calendar month counted, YYYY-MM")
    month_bytes: int = Field(description="bytes the metered uplinks carried this month")
    month_bytes_by_uplink: dict[str, int] = Field(description="the same per profile id")
    budget_bytes: int | None = Field(description="the monthly budget; null: none set")
    used_pct: float | None = Field(description="share of the budget used; null without a budget")
    warned_pct: int = Field(description="the highest warning threshold passed this month (0: none)")
    outage: OutageStatus | None = Field(description="the current outage, or the last one; null: none yet")


class UplinkStatus(_Document):
    """One uplink, most preferred first."""

    role: str = Field(description="primary, backup, tertiary, ...: its place in the order")
    profile: str = Field(description="its NetworkManager profile id")
    uuid: str = Field(description="its profile's UUID")
    device: str | None = Field(default=None, description="its interface; null while it has none")
    kind: str = Field(
        default="wired", description="wired, wireless or cellular: which icon a desktop shows for it"
    )
    link: str = Field(description="its device's state as NetworkManager names it")
    health: str = Field(description="up, down, portal, unknown, degraded (a brownout) or suspect (in doubt)")
    degraded: str | None = Field(default=None, description="why it is degraded, or null")
    loss_pct: float = Field(default=0.0, description="share of probes unanswered over the brownout window")
    rtt_p50_ms: float | None = Field(default=None, description="median answer time over that window")
    rtt_p95_ms: float | None = Field(default=None, description="95th percentile answer time over that window")
    consecutive_failures: int = Field(description="failed probe rounds in a row")
    consecutive_successes: int = Field(description="good probe rounds in a row")
    latency_ms: float | None = Field(description="the fastest answer of its last round; null: none")
    reason: str | None = Field(description="what its last round found; null before the first")
    carrying_traffic: bool = Field(description="it holds the default route")
    rtt_ms: dict[str, float] = Field(default_factory=dict, description="smoothed answer time per target")
    probe_timeout_ms: int | None = Field(default=None, description="what its last round allowed each answer")
    probe_bytes: int = Field(
        default=0,
        description="bytes its probes sent and received, above UDP/TCP (the wire adds 40-60 a packet)",
    )
    failed_rounds: int = Field(default=0, description="failed probe rounds since the daemon started")
    heartbeat_to: str | None = Field(
        default=None, description="where its heartbeats go; null: its last round was HTTP"
    )
    busy_rx_bytes: int | None = Field(
        default=None, description="bytes received while its last round timed out on a busy link, or null"
    )
    hold_down: float = Field(default=0.0, description="what a failback to it would wait for now (seconds)")
    hold_down_reason: str = Field(default="", description="and why")
    metered: str | None = Field(
        default=None, description="the device's Metered as NetworkManager reports it; null while inactive"
    )
    metered_marked: bool = Field(default=False, description="NMFAILOVER_METERED names it")
    metered_warning: str | None = Field(
        default=None, description="why it ought to be in NMFAILOVER_METERED, or null"
    )
    routing_table: int | None = Field(
        default=None, description="its own routing table; null: source routing off"
    )
    routing_rules: tuple[str, ...] = Field(
        default=(), description="its rules NetworkManager confirmed, as `ip rule`"
    )
    routing_routes: tuple[str, ...] = Field(default=(), description="the routes of its table, as `ip route`")
    order: str = Field(default="", description="why it stands where it does in the order")
    ipv6_health: str | None = Field(
        default=None, description="its IPv6 path on its own; null: no IPv6, or not judged yet"
    )
    ipv6_default_route: bool = Field(
        default=True,
        description="false: taken away while its IPv6 is down and the one carrying traffic has none",
    )
    dns_health: str | None = Field(default=None, description="its own resolvers: ok, failing or dead")
    dns_moved_to: tuple[str, ...] = Field(
        default=(),
        description="where its lookups go while its own resolvers are dead: others' resolvers, or named ones",
    )


class Status(_Document):
    """The daemon's Status(): times are seconds since the epoch, durations seconds."""

    preferred: str | None = Field(description="the role of the uplink carrying traffic; null: none")
    last_switch_at: float | None = Field(description="when traffic last switched; null: never")
    last_switch: LastSwitch | None = Field(
        default=None, description="what the last switch did; null: none yet"
    )
    switches: int = Field(description="switches since the daemon started")
    hold_down_remaining: float = Field(description="seconds before the decision may change by itself")
    forced_failover_remaining: float = Field(description="seconds left of the failover test")
    pinned: str | None = Field(description="the role pinned by `nmfailover prefer`; null: none")
    task_restarts: dict[str, int] = Field(description="restarts of each supervised loop after a crash")
    uplinks_found: bool = Field(
        default=False, description="the uplinks are found at run time (false: NMFAILOVER_UPLINKS names them)"
    )
    not_uplinks: tuple[NotUplink, ...] = Field(
        default=(), description="active connections that are not uplinks, when they are found"
    )
    tunnels: TunnelsStatus | None = Field(
        default=None, description="null: NMFAILOVER_WIREGUARD_FOLLOW is off"
    )
    metered_budget: BudgetStatus | None = Field(
        default=None, description="the metered uplinks' bytes; null only from an older daemon"
    )
    uplinks: tuple[UplinkStatus, ...] = Field(description="the uplinks, most preferred first")

    def to_json(self) -> str:
        """The JSON text Status() answers."""
        return json.dumps(self.model_dump(mode="json"))

    @property
    def carrying(self) -> UplinkStatus | None:
        """The uplink carrying traffic, or None."""
        return next((u for u in self.uplinks if u.carrying_traffic), None)


MODELS: tuple[type[BaseModel], ...] = (
    Status,
    UplinkStatus,
    LastSwitch,
    NotUplink,
    TunnelsStatus,
    TunnelMove,
    BudgetStatus,
    OutageStatus,
)


def reference() -> str:
    """docs/status.md: every field of the document, from the models."""
    lines = [
        "# The status document",
        "",
        "What `nmfailover status --json` prints and the daemon's D-Bus method `Status()` answers (JSON).",
        "Generated from nmfailover/status.py by `python -m nmfailover.status > docs/status.md`; do not edit.",
        "",
        "A field with a default may be missing from a daemon of an older version; readers ignore fields",
        "they do not know.",
    ]
    for model in MODELS:
        lines += [
            "",
            f"## {model.__name__}",
            "",
            _docstring(model),
            "",
            "| field | type | default | meaning |",
        ]
        lines.append("|---|---|---|---|")
        for name, info in model.model_fields.items():
            lines.append(
                f"| `{info.serialization_alias or name}` | {_type_name(info.annotation)} | {_default(info)} "
                f"| {info.description or ''} |"
            )
    return "\n".join(lines) + "\n"


def _docstring(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    return f"`{json.dumps(info.get_default(call_default_factory=True, validated_data={}))}`"


def _type_name(annotation: Any) -> str:
    """JSON's names: a tuple is a list, a model is an object of that section."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"object of {_type_name(args[1])}"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    return names.get(annotation, str(annotation))


if __name__ == "__main__":
    sys.stdout.write(reference())
