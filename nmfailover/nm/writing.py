"""Changing NetworkManager's state at run time: the applied connection of a device (Reapply, the saved
profile untouched), activation, and a profile's autoconnect-priority in memory."""

from __future__ import annotations

from collections.abc import Callable

from ..bus import Variant
from ..errors import NMError
from .edits import (
    ResolverRoutes,
    Restore,
    Settings,
    SourceRouting,
    dns_edit,
    ipv6_default_edit,
    knows_mptcp_flags,
    metered_edit,
    metrics_edit,
    mptcp_edit,
    resolver_routes_edit,
    source_routing_edit,
    strip_legacy,
    unwrap,
)
from .names import (
    APPLIED_CONNECTION_FLAGS,
    ERROR_VERSION_MISMATCH,
    IFACE_CONNECTION,
    IFACE_DEVICE,
    IFACE_NM,
    NM_PATH,
    Metered,
    ReapplyFlags,
    Update2Flags,
)
from .reading import StateReader
from .values import Dns


class StateWriter(StateReader):
    """Run-time changes: each Reapply reads the applied connection, edits it (edits.py) and sends it back."""

    async def set_route_metrics(
        self, device: str, metric4: int, metric6: int, mptcp_flags: int | None = None
    ) -> bool:
        """Change the device's applied route metrics at run time (Reapply); the saved profile is untouched.
        With `mptcp_flags`, its connection.mptcp-flags in the same Reapply (each Reapply restarts the
        device's IPv6, so the switch makes one, not two).

        Returns False when they already had these values (nothing is sent, so no `reapply` event fires).
        """
        edits = [metrics_edit(metric4, metric6)]
        if mptcp_flags is not None and knows_mptcp_flags(await self.version()):
            edits.append(mptcp_edit(mptcp_flags))
        return await self._reapply(
            device, lambda settings: [edit(settings) for edit in edits].count(True) > 0
        )

    async def set_metered(self, device: str, metered: Metered) -> bool:
        """Set connection.metered on the device's applied connection at run time (Reapply): NetworkManager's
        own Metered property, the one desktops read, follows it while this device holds the default route.
        The saved profile is untouched; False when it already had this value (nothing sent)."""
        return await self._reapply(device, metered_edit(metered))

    async def set_ipv6_default(self, device: str, allowed: bool, gateway: str | None = None) -> str | None:
        """Let the device's applied connection have an IPv6 default route or not (ipv6.never-default, at run
        time through Reapply; the saved profile is untouched).

        A never-default connection may have no gateway (NetworkManager drops it), so taking the route away
        returns the applied connection's own IPv6 gateway, if it had one, and allowing it again puts back
        `gateway`. A gateway learnt from router advertisements needs nothing: it comes back by itself."""
        dropped: list[str] = []
        await self._reapply(device, ipv6_default_edit(allowed, gateway, dropped))
        return dropped[0] if dropped else None

    async def set_source_routing(self, device: str, wanted: SourceRouting) -> bool:
        """Put `wanted`'s routes (route-data with a table) and routing-rules on the device's applied
        connection at run time (Reapply), replacing whatever of its table and rules was there and keeping
        everyone else's; SourceRouting(table, priority) takes ours off. The saved profile is untouched.
        False when the applied connection already had exactly these (nothing sent).

        NetworkManager installs them with the device's own routes and removes them again when they leave
        the applied connection; a later Reapply of the metrics sends them back with it, so they stay."""
        return await self._reapply(device, source_routing_edit(wanted))

    async def restore_applied(self, device: str, back: Restore) -> bool:
        """Everything of `back` in one Reapply: each Reapply restarts the device's IPv6 configuration, and
        several in a row on a busy machine can leave it without its IPv6 default route."""
        edits = [metrics_edit(back.metric4, back.metric6)]
        if back.source_routing is not None:
            edits.append(source_routing_edit(back.source_routing))
        if back.ipv6_back:
            edits.append(ipv6_default_edit(True, back.ipv6_gateway, []))
        if back.metered is not None:
            edits.append(metered_edit(back.metered))
        if back.dns is not None:
            edits.append(dns_edit(back.dns))
        if back.resolver_routes is not None:
            edits.append(resolver_routes_edit(back.resolver_routes))
        if back.mptcp_flags is not None:
            edits.append(mptcp_edit(back.mptcp_flags))
        return await self._reapply(
            device, lambda settings: [edit(settings) for edit in edits].count(True) > 0
        )

    async def set_dns(self, device: str, dns: Dns) -> bool:
        """Make the device's applied connection resolve with exactly `dns` at run time (Reapply): its
        ipv4.dns/ipv6.dns and dns-priority; NetworkManager rewrites resolv.conf, or tells systemd-resolved,
        at once. The saved profile is untouched; False when it already had these (nothing sent).

        Resolvers learnt from DHCP or router advertisements stay, behind these (ignore-auto-dns is left
        alone), so the device's IP4Config/IP6Config go on listing them. A server of a family the connection
        does not configure (method disabled, ignore, link-local, shared) is left out."""
        return await self._reapply(device, dns_edit(dns))

    async def set_resolver_routes(self, device: str, wanted: ResolverRoutes) -> bool:
        """Put `wanted`'s host routes on the device's applied connection at run time (Reapply), replacing
        ours (RESOLVER_ROUTE_METRIC) and keeping everyone else's; ResolverRoutes() takes ours off. The saved
        profile is untouched; False when it already had exactly these (nothing sent)."""
        return await self._reapply(device, resolver_routes_edit(wanted))

    async def _reapply(self, device: str, edit: Callable[[Settings], bool]) -> bool:
        """GetAppliedConnection, `edit` it in place (False: nothing to change), Reapply by its version id."""
        for attempt in (1, 2):
            settings, version_id = await self._nm(
                device, IFACE_DEVICE, "GetAppliedConnection", "u", [APPLIED_CONNECTION_FLAGS]
            )
            if not edit(settings):
                return False
            try:
                await self._nm(
                    device,
                    IFACE_DEVICE,
                    "Reapply",
                    "a{sa{sv}}tu",
                    [strip_legacy(settings), version_id, int(ReapplyFlags.NONE)],
                )
                return True
            except NMError as exc:
                # Someone else changed the device between our read and write: read again once.
                if exc.dbus_error != ERROR_VERSION_MISMATCH or attempt == 2:
                    raise
        return True  # pragma: no cover - the loop always returns or raises

    async def activate(self, uuid: str) -> None:
        """Activate the profile on whatever device it fits (ActivateConnection); returns once NetworkManager
        has taken it on, not once it is up (the events tell)."""
        path = await self._profile_path(uuid)
        await self._nm(NM_PATH, IFACE_NM, "ActivateConnection", "ooo", [path, "/", "/"])

    async def deactivate(self, uuid: str) -> bool:
        """Deactivate the profile where it is active (DeactivateConnection), which also keeps NetworkManager
        from activating it again by itself until someone does; False if it was not active."""
        for props in await self._active_connections():
            if props.get("Uuid") == uuid:
                await self._nm(NM_PATH, IFACE_NM, "DeactivateConnection", "o", [props["Path"]])
                return True
        return False

    async def set_autoconnect_priority(self, uuid: str, priority: int) -> bool:
        """Set connection.autoconnect-priority in memory only (nothing written to disk)."""
        path = await self._profile_path(uuid)
        settings = await self._settings(path)
        if unwrap(settings["connection"].get("autoconnect-priority", 0)) == priority:
            return False
        settings["connection"]["autoconnect-priority"] = Variant("i", priority)
        await self._nm(
            path,
            IFACE_CONNECTION,
            "Update2",
            "a{sa{sv}}ua{sv}",
            [strip_legacy(settings), int(Update2Flags.IN_MEMORY | Update2Flags.NO_REAPPLY), {}],
        )
        return True

    async def reapply_wireguard(self, device: str) -> None:
        """Reapply the WireGuard device's applied connection unchanged, so that NetworkManager sets every
        peer's endpoint on the link again: the kernel then drops the source address it had cached.

        NetworkManager 1.42 does this for an unmodified Reapply too (check_and_reapply_connection() always
        calls the device's reapply_connection(), whose link_config(REAPPLY) sends each peer with its
        endpoint); with no difference the applied connection, secrets included, is kept as it is."""
        await self._reapply(device, lambda settings: True)
