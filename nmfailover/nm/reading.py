"""Reading NetworkManager's state: profiles, active connections, links, applied connections, WireGuard
devices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import NMError, NMUnavailable, ProfileError
from .edits import (
    PORT_KEYS,
    Settings,
    addressed,
    metered_of,
    metric_of,
    nameservers,
    profile_of,
    rule_tables,
    sources,
    unwrap,
)
from .names import (
    APPLIED_CONNECTION_FLAGS,
    ERROR_NO_SUCH_PROFILE,
    IFACE_ACTIVE,
    IFACE_CONNECTION,
    IFACE_DEVICE,
    IFACE_IP4,
    IFACE_IP6,
    IFACE_NM,
    IFACE_SETTINGS,
    IFACE_WIREGUARD,
    NM_PATH,
    SETTINGS_PATH,
    ActiveConnectionState,
    DeviceState,
    DeviceType,
    Metered,
)
from .session import NMSession
from .values import Candidate, LinkState, Metrics, Profile, WireGuardDevice


class StateReader(NMSession):
    """What NetworkManager has and does now, read on demand."""

    async def starting_up(self) -> bool:
        """True until NetworkManager has tried to activate every connection it can at its start."""
        return bool(await self._get(NM_PATH, IFACE_NM, "Startup"))

    async def version(self) -> str:
        return str(await self._get(NM_PATH, IFACE_NM, "Version"))

    # -- profiles ---------------------------------------------------------------------------------

    async def _profile_path(self, uuid: str) -> str:
        (path,) = await self._nm(SETTINGS_PATH, IFACE_SETTINGS, "GetConnectionByUuid", "s", [uuid])
        return str(path)

    async def has_profile(self, uuid: str) -> bool:
        try:
            await self._profile_path(uuid)
        except NMError as exc:
            if exc.dbus_error == ERROR_NO_SUCH_PROFILE:
                return False
            raise
        return True

    async def _settings(self, path: str) -> Settings:
        (settings,) = await self._nm(path, IFACE_CONNECTION, "GetSettings")
        return dict(settings)

    async def _all_profiles(self) -> list[Settings]:
        (paths,) = await self._nm(SETTINGS_PATH, IFACE_SETTINGS, "ListConnections")
        return [await self._settings(path) for path in paths]

    async def _interfaces_to_uuids(self) -> dict[str, list[str]]:
        """The profiles active on each interface right now."""
        active: dict[str, list[str]] = {}
        for props in await self._active_connections():
            for device in props.get("Devices", []):
                iface = await self._get(device, IFACE_DEVICE, "Interface")
                active.setdefault(str(iface), []).append(str(props["Uuid"]))
        return active

    async def resolve(self, specs: Sequence[str]) -> list[Profile]:
        """Each spec (profile id, UUID or interface name) to exactly one profile, or ProfileError."""
        profiles = await self._all_profiles()
        active = await self._interfaces_to_uuids()
        resolved: list[Profile] = []
        for spec in specs:
            by_uuid = [s for s in profiles if unwrap(s["connection"]["uuid"]) == spec]
            by_id = [s for s in profiles if unwrap(s["connection"]["id"]) == spec]
            by_iface = [s for s in profiles if unwrap(s["connection"].get("interface-name", "")) == spec]
            if not by_iface and spec in active:
                by_iface = [s for s in profiles if unwrap(s["connection"]["uuid"]) in active[spec]]
            elif len(by_iface) > 1 and spec in active:
                # Several profiles for one device: the one in use is what the user means.
                by_iface = [s for s in by_iface if unwrap(s["connection"]["uuid"]) in active[spec]]
            matches = by_uuid or by_id or by_iface
            if not matches:
                # The ids to choose from, capped: hundreds of saved Wi-Fi profiles still make one line.
                ids = sorted({str(unwrap(s["connection"]["id"])) for s in profiles})
                more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
                known = (
                    f"existing profiles: {', '.join(map(repr, ids[:10]))}{more}" if ids else "there are none"
                )
                raise ProfileError(
                    spec, f"no NetworkManager profile has this id, UUID or interface name; {known}"
                )
            if len(matches) > 1:
                names = ", ".join(repr(unwrap(s["connection"]["id"])) for s in matches)
                raise ProfileError(spec, f"matches several profiles ({names}); use a profile id or UUID")
            profile = profile_of(spec, matches[0])
            if profile.never_default:
                raise ProfileError(
                    spec,
                    f"profile {profile.id!r} has ipv4.never-default=yes, so it can "
                    "never carry the default route",
                )
            resolved.append(profile)
        seen: dict[str, str] = {}
        for profile in resolved:
            if profile.uuid in seen:
                raise ProfileError(
                    profile.spec,
                    f"is the same profile as {seen[profile.uuid]!r} ({profile.id}, {profile.uuid})",
                )
            seen[profile.uuid] = profile.spec
        return resolved

    async def active_candidates(self) -> list[Candidate]:
        """Every active connection with its device, for nmfailover.discovery to choose the uplinks from."""
        found: list[Candidate] = []
        for props in await self._active_connections():
            devices = props.get("Devices") or []
            if (
                ActiveConnectionState(props.get("State", ActiveConnectionState.UNKNOWN))
                >= ActiveConnectionState.DEACTIVATING
            ):
                continue  # on its way out; a re-activation of the same profile is listed beside it
            try:
                settings = await self._settings(str(props["Connection"]))
                device = await self._get_all(str(devices[0]), IFACE_DEVICE) if devices else {}
            except NMUnavailable:
                raise
            except NMError:
                continue  # gone between the listing and the read
            connection = settings["connection"]
            controller = any(unwrap(connection.get(key, "")) for key in PORT_KEYS)
            found.append(
                Candidate(
                    profile=profile_of(str(unwrap(connection["id"])), settings),
                    connection_type=str(unwrap(connection.get("type", ""))),
                    interface=str(device.get("IpInterface") or device.get("Interface") or ""),
                    device_type=DeviceType(device.get("DeviceType", DeviceType.UNKNOWN)),
                    driver=str(device.get("Driver", "")),
                    metered=Metered(device.get("Metered", Metered.UNKNOWN)),
                    port=bool(controller),
                    vpn=bool(props.get("Vpn", False)),
                    addressed=addressed(settings),
                )
            )
        return found

    async def saved_candidates(self, names: Sequence[str]) -> list[Candidate]:
        """The saved profiles `names` name (id, UUID or bound interface), active or not: on-demand uplinks
        are uplinks while they are down too."""
        found: list[Candidate] = []
        for settings in await self._all_profiles():
            connection = settings["connection"]
            bound = str(unwrap(connection.get("interface-name", "")))
            if not {str(unwrap(connection["id"])), str(unwrap(connection["uuid"])), bound} & set(names):
                continue
            found.append(
                Candidate(
                    profile=profile_of(str(unwrap(connection["id"])), settings),
                    connection_type=str(unwrap(connection.get("type", ""))),
                    interface=bound,
                    port=any(unwrap(connection.get(key, "")) for key in PORT_KEYS),
                    addressed=addressed(settings),
                )
            )
        return found

    # -- links --------------------------------------------------------------------------------------

    async def _active_connections(self) -> list[dict[str, Any]]:
        """Each active connection's properties, with its own object path under "Path"."""
        found = []
        for path in await self._get(NM_PATH, IFACE_NM, "ActiveConnections"):
            try:
                found.append({**await self._get_all(path, IFACE_ACTIVE), "Path": str(path)})
            except NMUnavailable:
                raise
            except NMError:
                continue  # deactivated between the listing and the read: it is simply not active any more
        return found

    async def _device_of(self, uuid: str) -> tuple[str, str] | None:
        """The device the profile is active on and its active connection's path (new at each activation)."""
        for props in await self._active_connections():
            if props.get("Uuid") == uuid and props.get("Devices"):
                return str(props["Devices"][0]), str(props["Path"])
        return None

    async def link_state(self, uuid: str) -> LinkState:
        """Where the profile is active now, and what a probe needs to use that link."""
        found = await self._device_of(uuid)
        if found is None:
            return LinkState(uuid=uuid)
        device, active = found
        props = await self._get_all(device, IFACE_DEVICE)
        ip4 = await self._get_all(str(props.get("Ip4Config", "/")), IFACE_IP4)
        ip6 = await self._get_all(str(props.get("Ip6Config", "/")), IFACE_IP6)
        return LinkState(
            uuid=uuid,
            device=device,
            active=active,
            interface=str(props.get("IpInterface") or props.get("Interface") or "") or None,
            state=DeviceState(props.get("State", DeviceState.UNKNOWN)),
            nameservers=nameservers(ip4, ip6),
            gateway4=str(ip4.get("Gateway") or "") or None,
            gateway6=str(ip6.get("Gateway") or "") or None,
            device_type=DeviceType(props.get("DeviceType", DeviceType.UNKNOWN)),
            driver=str(props.get("Driver", "")),
            metered=Metered(props.get("Metered", Metered.UNKNOWN)),
            sources4=sources(ip4, 4),
            sources6=sources(ip6, 6),
        )

    async def applied_metrics(self, device: str) -> Metrics:
        settings, _ = await self._nm(
            device, IFACE_DEVICE, "GetAppliedConnection", "u", [APPLIED_CONNECTION_FLAGS]
        )
        return Metrics(
            metric_of(settings, "ipv4"),
            metric_of(settings, "ipv6"),
            metered_of(settings),
            rule_tables=rule_tables(settings),
        )

    async def profile(self, uuid: str) -> Profile:
        return profile_of(uuid, await self._settings(await self._profile_path(uuid)))

    # -- WireGuard (tunnels.py) -----------------------------------------------------------------------

    async def wireguard_devices(self) -> list[WireGuardDevice]:
        """NetworkManager's activated WireGuard devices with the peers of their applied connections."""
        (paths,) = await self._nm(NM_PATH, IFACE_NM, "GetDevices")
        found = []
        for path in paths:
            try:
                props = await self._get_all(path, IFACE_DEVICE)
                if props.get("DeviceType") != DeviceType.WIREGUARD:
                    continue
                if props.get("State") != DeviceState.ACTIVATED:
                    continue
                settings, _ = await self._nm(
                    path, IFACE_DEVICE, "GetAppliedConnection", "u", [APPLIED_CONNECTION_FLAGS]
                )
                fwmark = int(await self._get(path, IFACE_WIREGUARD, "FwMark"))
            except NMUnavailable:
                raise
            except NMError:
                continue  # gone or deactivated between the listing and the read
            peers = unwrap(settings.get("wireguard", {}).get("peers", [])) or []
            found.append(
                WireGuardDevice(
                    path=str(path),
                    interface=str(props.get("IpInterface") or props.get("Interface") or ""),
                    fwmark=fwmark,
                    peers=tuple(
                        (str(unwrap(p.get("public-key", ""))), str(unwrap(p.get("endpoint", ""))))
                        for p in peers
                    ),
                )
            )
        return found
