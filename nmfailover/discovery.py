"""Which active connections are uplinks, and in which order a person would prefer them (pure: no I/O).

Without NMFAILOVER_UPLINKS every active connection that can carry the default route is an uplink: wired
before Wi-Fi before a tethered phone before a mobile modem, anything metered (by its profile, by
NetworkManager's guess, or because it is a phone's tethering) after everything that is not, then by the
profile's own route metric, then by name so that the order never depends on the order NetworkManager
lists them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .nm import Candidate, Metered, Profile, Tethering, phone_or_modem


class Kind(IntEnum):
    """What kind of way out, in the order a person prefers them."""

    WIRED = 0
    WIFI = 1
    TETHERED = 2  # a phone over USB or Bluetooth
    MOBILE = 3  # a mobile broadband modem


# NetworkManager's connection types that carry a default route of their own; everything else (VPNs,
# WireGuard, tunnels, loopback, dummies, Wi-Fi P2P...) rides on an uplink or leads nowhere.
_KINDS = {
    "802-3-ethernet": Kind.WIRED,
    "pppoe": Kind.WIRED,
    "adsl": Kind.WIRED,
    "bond": Kind.WIRED,
    "team": Kind.WIRED,
    "bridge": Kind.WIRED,
    "vlan": Kind.WIRED,
    "infiniband": Kind.WIRED,
    "802-11-wireless": Kind.WIFI,
    "bluetooth": Kind.TETHERED,
    "gsm": Kind.MOBILE,
    "cdma": Kind.MOBILE,
}


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    kind: Kind
    metered: bool
    why: str  # why it stands where it does, for status, check and doctor

    @property
    def profile(self) -> Profile:
        return self.candidate.profile


@dataclass(frozen=True)
class Left:
    """An active connection that is not an uplink, and why."""

    candidate: Candidate
    why: str


def kind_of(candidate: Candidate) -> Kind | str:
    """Its kind, or why it cannot be an uplink."""
    if candidate.vpn:
        return "a VPN rides on an uplink"
    if candidate.port:
        return "a port of a bridge, bond or team: its controller is the uplink"
    if candidate.profile.never_default:
        return "ipv4.never-default=yes: it never carries the default route"
    if not candidate.addressed:
        return "neither IPv4 nor IPv6 configured: it carries no route at all"
    kind = _KINDS.get(candidate.connection_type)
    if kind is None:
        return f"a {candidate.connection_type} connection carries no default route of its own"
    match phone_or_modem(candidate.device_type, candidate.driver):
        case Tethering.MODEM:
            return Kind.MOBILE
        case Tethering.BLUETOOTH:
            return Kind.TETHERED
        case Tethering.USB if kind is Kind.WIRED:
            return Kind.TETHERED
    return kind


def rank(candidates: list[Candidate] | tuple[Candidate, ...]) -> tuple[tuple[Ranked, ...], tuple[Left, ...]]:
    """The uplinks, most preferred first, and the connections left out with the reason."""
    ranked: list[Ranked] = []
    left: list[Left] = []
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.profile.uuid in seen:
            continue  # one profile is one uplink, even while NetworkManager lists it twice
        seen.add(candidate.profile.uuid)
        kind = kind_of(candidate)
        if isinstance(kind, str):
            left.append(Left(candidate, kind))
            continue
        metered_by = _metered_by(candidate, kind)
        metric = candidate.profile.metric4
        why = ", ".join(
            part
            for part in (
                kind.name.lower(),
                f"metered ({metered_by})" if metered_by else "",
                f"route metric {metric}" if metric >= 0 else "",
            )
            if part
        )
        ranked.append(Ranked(candidate, kind, bool(metered_by), why))
    ranked.sort(
        key=lambda r: (
            r.metered,
            r.kind,
            # A profile without a metric of its own (-1) gets the one NetworkManager gives its kind of device,
            # which is above any a person writes down for a preferred wired link.
            r.profile.metric4 if r.profile.metric4 >= 0 else 1 << 32,
            r.profile.id,
            r.profile.uuid,
        )
    )
    return tuple(ranked), tuple(left)


def _metered_by(candidate: Candidate, kind: Kind) -> str:
    if candidate.profile.metered == Metered.YES or candidate.metered == Metered.YES:
        return "its profile says so"
    if kind in (Kind.TETHERED, Kind.MOBILE):
        return "a phone or modem"
    if candidate.metered == Metered.GUESS_YES:
        return "NetworkManager's guess"
    return ""


@dataclass(frozen=True)
class Choice:
    uplinks: tuple[Ranked, ...]
    left: tuple[Left, ...]

    def why(self, uuid: str) -> str:
        return next((r.why for r in self.uplinks if r.profile.uuid == uuid), "")


def choose(candidates: list[Candidate] | tuple[Candidate, ...], limit: int) -> Choice:
    """The uplinks among the active connections, at most `limit` of them, and the rest with the reason."""
    ranked, left = rank(candidates)
    extra = tuple(Left(r.candidate, f"beyond the first {limit} uplinks") for r in ranked[limit:])
    return Choice(ranked[:limit], left + extra)
