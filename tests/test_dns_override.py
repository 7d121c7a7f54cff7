"""Moving DNS, not the traffic: when an uplink's resolvers fail while its path works, lookups go to working
resolvers through NetworkManager at run time (Actuator.override_dns), and come back to its own.

The lab tests resolve names as applications do (glibc through the resolv.conf NetworkManager writes, and
through systemd-resolved's stub where it can be run) with two uplinks and a real NetworkManager.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nmfailover.bus import Variant
from nmfailover.config import load_settings
from nmfailover.engine.actuator import DNS_PRIORITY_MOVED, Actuator, ActuatorParams, DnsOverride
from nmfailover.engine.state import Uplink
from nmfailover.errors import NMError
from nmfailover.lab.sandbox import NMLab
from nmfailover.nm import (
    MAIN_TABLE,
    RESOLVER_ROUTE_METRIC,
    DeviceState,
    Dns,
    LinkState,
    NetworkManagerClient,
    Profile,
    ResolverRoutes,
    Restore,
)
from nmfailover.nm.edits import dns_edit, dns_of, resolver_routes_edit

PRIMARY_RESOLVER, BACKUP_RESOLVER = "203.0.113.53", "203.0.113.54"
NAMED_RESOLVER = "203.0.113.99"  # "one the user names": reachable through the primary's path
# A lookup of glibc's defaults waits 5 s for each resolver in resolv.conf: one that answers within this
# met a resolver that answered at once.
PROMPT = 1.0
SLOW = 4.0  # a lookup that takes this long (or fails) met the dead resolver first


# -- pure: the edits of an applied connection -----------------------------------------------------------


def _v(signature: str, value: Any) -> Variant:
    return Variant(signature, value)


def test_dns_goes_to_each_family_in_the_form_the_connection_came_in() -> None:
    settings: dict[str, dict[str, Any]] = {
        "ipv4": {"method": _v("s", "manual"), "dns-data": _v("as", [PRIMARY_RESOLVER])},
        # NetworkManager leaves out an empty list, and before 1.42 it knew only the legacy binary "dns".
        "ipv6": {"method": _v("s", "auto")},
    }
    wanted = Dns((BACKUP_RESOLVER, "2001:db8::53", PRIMARY_RESOLVER), DNS_PRIORITY_MOVED, DNS_PRIORITY_MOVED)
    assert dns_edit(wanted)(settings)
    assert settings["ipv4"]["dns-data"].value == [BACKUP_RESOLVER, PRIMARY_RESOLVER]
    assert settings["ipv6"]["dns"].value == [bytes.fromhex("20010db8" + "0" * 20 + "0053")]
    assert (
        settings["ipv4"]["dns-priority"].value == settings["ipv6"]["dns-priority"].value == DNS_PRIORITY_MOVED
    )
    assert dns_of(settings) == Dns((BACKUP_RESOLVER, PRIMARY_RESOLVER, "2001:db8::53"), 10_000, 10_000)
    assert not dns_edit(wanted)(settings)  # already so: no Reapply


def test_the_legacy_ipv4_form_is_read_and_a_family_without_dns_gets_none() -> None:
    # 203.0.113.53 as NetworkManager sends it: the address in network order read as a native uint32.
    legacy = int.from_bytes(bytes([203, 0, 113, 53]), sys.byteorder)
    settings: dict[str, dict[str, Any]] = {
        "ipv4": {"method": _v("s", "auto"), "dns": _v("au", [legacy])},
        "ipv6": {"method": _v("s", "disabled")},  # NetworkManager refuses ipv6.dns here
    }
    assert dns_of(settings) == Dns((PRIMARY_RESOLVER,))
    assert dns_edit(Dns(("2001:db8::53", PRIMARY_RESOLVER)))(settings) is False
    assert "dns" not in settings["ipv6"]


def test_resolver_routes_replace_ours_and_keep_everyone_elses() -> None:
    theirs = {"dest": _v("s", "198.51.100.7"), "prefix": _v("u", 32), "next-hop": _v("s", "192.0.2.65")}
    source_table = {**theirs, "dest": _v("s", "0.0.0.0"), "prefix": _v("u", 0), "table": _v("u", 1000)}
    settings: dict[str, dict[str, Any]] = {"ipv4": {"route-data": _v("aa{sv}", [theirs, source_table])}}
    wanted = ResolverRoutes((BACKUP_RESOLVER, "2001:db8::54"), "192.0.2.65", None)  # no IPv6 gateway
    assert resolver_routes_edit(wanted)(settings)
    routes = settings["ipv4"]["route-data"].value
    assert routes[:2] == [theirs, source_table]
    assert [
        (r["dest"].value, r["prefix"].value, r["next-hop"].value, r["metric"].value) for r in routes[2:]
    ] == [(BACKUP_RESOLVER, 32, "192.0.2.65", RESOLVER_ROUTE_METRIC)]
    assert routes[2]["table"].value == MAIN_TABLE
    assert not resolver_routes_edit(wanted)(settings)
    assert resolver_routes_edit(ResolverRoutes())(settings)
    assert settings["ipv4"]["route-data"].value == [theirs, source_table]


# -- pure: the actuator's bookkeeping (the lab tests below prove NetworkManager's side) ----------------


OWN = {"p": Dns((PRIMARY_RESOLVER,)), "b": Dns((BACKUP_RESOLVER,), 50, 0)}


class AppliedDns:
    """Records what the actuator asks NetworkManager for; `fail` makes set_dns fail like a vanished device."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Dns | ResolverRoutes | Restore]] = []
        self.fail = False

    async def profile(self, uuid: str) -> Profile:
        return Profile(uuid, uuid, uuid, None, -1, -1, 0, False, dns=OWN[uuid])

    async def has_profile(self, uuid: str) -> bool:
        return True

    async def link_state(self, uuid: str) -> LinkState:
        return LINKS[uuid]

    async def set_dns(self, device: str, dns: Dns) -> bool:
        if self.fail:
            raise NMError("Object does not exist at path", "org.freedesktop.DBus.Error.UnknownMethod")
        self.sent.append((device, dns))
        return True

    async def set_resolver_routes(self, device: str, wanted: ResolverRoutes) -> bool:
        self.sent.append((device, wanted))
        return True

    async def restore_applied(self, device: str, back: Restore) -> bool:
        self.sent.append((device, back))
        return True

    def take(self) -> list[tuple[str, Dns | ResolverRoutes | Restore]]:
        sent, self.sent = self.sent, []
        return sent


LINKS = {
    "p": LinkState(
        "p", "/dev/a", "wana", DeviceState.ACTIVATED, nameservers=(PRIMARY_RESOLVER,), gateway4="192.0.2.1"
    ),
    "b": LinkState(
        "b", "/dev/b", "wanb", DeviceState.ACTIVATED, nameservers=(BACKUP_RESOLVER,), gateway4="192.0.2.65"
    ),
}


@pytest.fixture
def nm() -> AppliedDns:
    return AppliedDns()


@pytest.fixture
def actuator(nm: AppliedDns) -> Actuator:
    settings = load_settings({"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "p,b"})
    uplinks = [Uplink(i, Profile(u, u, u, None, -1, -1, 0, False), LINKS[u]) for i, u in enumerate("pb")]
    return Actuator(ActuatorParams.from_settings(settings), nm, uplinks)  # type: ignore[arg-type]  # only the DNS part is used


async def test_lookups_move_to_the_backups_resolvers_routed_through_it_first(
    nm: AppliedDns, actuator: Actuator
) -> None:
    assert await actuator.override_dns(0, (BACKUP_RESOLVER,))
    pinned = ResolverRoutes((BACKUP_RESOLVER,), "192.0.2.65", None)
    # The route first: the moment resolv.conf lists the backup's resolver, queries to it must reach it.
    assert nm.take() == [
        ("/dev/b", pinned),
        ("/dev/a", Dns((PRIMARY_RESOLVER,), DNS_PRIORITY_MOVED, 0)),  # it has no IPv6 resolver
    ]
    assert actuator.dns_status(0) == DnsOverride(moved_to=(BACKUP_RESOLVER,))
    assert actuator.dns_status(1) == DnsOverride(routed=(BACKUP_RESOLVER,))
    assert not await actuator.override_dns(0, (BACKUP_RESOLVER,))  # idempotent: nothing sent
    assert nm.take() == []

    assert await actuator.override_dns(0, None)
    # Its own back first (its profile's, priority included), the route after.
    assert nm.take() == [("/dev/a", OWN["p"]), ("/dev/b", ResolverRoutes())]
    assert actuator.dns_status(0) == actuator.dns_status(1) == DnsOverride()
    assert not await actuator.override_dns(0, None)


async def test_servers_the_user_names_go_in_front_of_its_own(nm: AppliedDns, actuator: Actuator) -> None:
    assert await actuator.override_dns(0, (NAMED_RESOLVER,))
    assert nm.take() == [("/dev/a", Dns((NAMED_RESOLVER, PRIMARY_RESOLVER)))]  # no route: its path works
    status = actuator.dns_status(0)
    assert status.overridden and status.in_front == (NAMED_RESOLVER,)
    # NetworkManager now lists the named one first; the uplink's own are what says when to give back.
    assert status.own((NAMED_RESOLVER, PRIMARY_RESOLVER)) == (PRIMARY_RESOLVER,)


async def test_stop_gives_the_resolvers_and_routes_back_in_the_one_restore(
    nm: AppliedDns, actuator: Actuator
) -> None:
    await actuator.override_dns(0, (BACKUP_RESOLVER,))
    nm.take()
    await actuator.restore()
    backs = {device: back for device, back in nm.take() if isinstance(back, Restore)}
    assert (backs["/dev/a"].dns, backs["/dev/a"].resolver_routes) == (OWN["p"], None)
    assert (backs["/dev/b"].dns, backs["/dev/b"].resolver_routes) == (None, ResolverRoutes())
    assert actuator.dns_status(0) == actuator.dns_status(1) == DnsOverride()

    await actuator.restore()  # nothing of ours left: a stop touches no one's resolvers
    assert all(isinstance(b, Restore) and b.dns is None and b.resolver_routes is None for _, b in nm.take())


async def test_a_failure_is_logged_and_the_next_call_tries_again(nm: AppliedDns, actuator: Actuator) -> None:
    nm.fail = True
    assert not await actuator.override_dns(0, (NAMED_RESOLVER,))
    assert actuator.dns_status(0) == DnsOverride()
    nm.fail = False
    assert await actuator.override_dns(0, (NAMED_RESOLVER,))
    assert actuator.dns_status(0).in_front == (NAMED_RESOLVER,)


async def test_a_new_applied_connection_gets_the_override_again(nm: AppliedDns, actuator: Actuator) -> None:
    await actuator.override_dns(0, (BACKUP_RESOLVER,))
    nm.take()
    actuator.forget_dns(1)  # the backup was activated anew: its route is gone
    assert await actuator.apply_dns()
    assert nm.take() == [("/dev/b", ResolverRoutes((BACKUP_RESOLVER,), "192.0.2.65", None))]


# -- lab: a real NetworkManager, glibc through the resolv.conf it writes ----------------------------------


@pytest.fixture
async def client(nmlab: NMLab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NetworkManagerClient]:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nmlab.bus_address)
    nm = NetworkManagerClient()
    await nm.connect()
    yield nm
    await nm.close()


async def _lab_actuator(client: NetworkManagerClient) -> Actuator:
    settings = load_settings({"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "primary,backup"})
    profiles = await client.resolve(["primary", "backup"])
    uplinks = [Uplink(i, p, await client.link_state(p.uuid)) for i, p in enumerate(profiles)]
    return Actuator(ActuatorParams.from_settings(settings), client, uplinks)


def _machine_resolv_conf() -> tuple[bytes, int]:
    return Path("/etc/resolv.conf").read_bytes(), os.stat("/etc/resolv.conf").st_ino


def _routes(lab: NMLab) -> list[str]:
    return sorted(
        line.strip()
        for family in ("-4", "-6")
        for line in lab.host("ip", family, "route").stdout.splitlines()
    )


async def _resolv_conf_becomes(lab: NMLab, expected: str, timeout: float = 5) -> float:
    """Seconds until NetworkManager's resolv.conf reads `expected`."""
    started = time.monotonic()
    while lab.nm_resolv_conf.read_text() != expected:
        assert time.monotonic() - started < timeout, lab.nm_resolv_conf.read_text()
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def _nameservers(*servers: str) -> str:
    return "# Generated by NetworkManager\n" + "".join(f"nameserver {s}\n" for s in servers)


async def test_a_lookup_works_again_at_once_with_no_route_changed(
    nmlab: NMLab, client: NetworkManagerClient
) -> None:
    machine = _machine_resolv_conf()
    primary, backup = nmlab.upstreams
    before = _nameservers(PRIMARY_RESOLVER, BACKUP_RESOLVER)
    await _resolv_conf_becomes(nmlab, before)
    assert nmlab._nm is not None
    seen_by_nm = Path(f"/proc/{nmlab._nm.pid}/root")
    assert (seen_by_nm / "run/NetworkManager/resolv.conf").read_text() == before
    assert (seen_by_nm / "etc/resolv.conf").stat().st_ino != machine[1]  # out of its reach
    actuator = await _lab_actuator(client)
    routes, on_disk = _routes(nmlab), nmlab.profiles_on_disk()
    assert nmlab.lookup("target1.test", timeout=5)[0]

    primary.break_dns()  # its resolver silent; its path and HTTP fine
    dead, dead_seconds = nmlab.lookup("target2.test", timeout=SLOW + 2)
    assert not dead or dead_seconds >= SLOW, "the dead resolver must make lookups slow or fail"

    started = time.monotonic()
    assert await actuator.override_dns(0, actuator.uplinks[1].link.nameservers)
    reapplied = time.monotonic() - started
    written = await _resolv_conf_becomes(nmlab, _nameservers(BACKUP_RESOLVER, PRIMARY_RESOLVER))
    answered, seconds = nmlab.lookup("target3.test", timeout=SLOW + 2)
    assert answered and seconds < PROMPT, (answered, seconds)
    name, _, source = backup.dns_log()[-1].split("\t")
    assert (name, source) == ("target3.test.", backup.address4)  # asked through the backup's link
    pin = f"{BACKUP_RESOLVER} via {backup.gateway4} dev {backup.iface} proto static metric {RESOLVER_ROUTE_METRIC}"
    assert _routes(nmlab) == sorted([*routes, pin])  # the traffic stays: nothing else changed
    assert nmlab.default_routes(4)[0][0] == primary.iface
    assert actuator.dns_status(0) == DnsOverride(moved_to=(BACKUP_RESOLVER,))
    assert not await actuator.override_dns(0, (BACKUP_RESOLVER,))
    print(
        f"\nlookup with the primary's resolver dead: {'answered' if dead else 'failed'} after {dead_seconds:.2f} s;"
        f" override_dns (profile read, two Reapplies) {reapplied * 1000:.0f} ms, resolv.conf rewritten"
        f" {written * 1000:.0f} ms later; then a lookup {seconds * 1000:.0f} ms"
    )

    # A name the user gives instead: in front of the primary's own, reached through the primary's path.
    state = nmlab.workdir / "named-resolver"
    state.mkdir()
    subprocess.run(
        ["ip", "-n", primary.netns, "address", "add", f"{NAMED_RESOLVER}/32", "dev", "lo"], check=True
    )
    named = subprocess.Popen(
        ["ip", "netns", "exec", primary.netns, sys.executable, "-m", "nmfailover.lab.upstream",
         "--state-dir", str(state), "--resolver", NAMED_RESOLVER, "--http-port", "8053"],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
    )  # fmt: skip
    try:
        while not (state / "ready").exists():
            assert named.poll() is None
            await asyncio.sleep(0.05)
        assert await actuator.override_dns(0, (NAMED_RESOLVER,))
        await _resolv_conf_becomes(nmlab, _nameservers(NAMED_RESOLVER, PRIMARY_RESOLVER, BACKUP_RESOLVER))
        answered, seconds = nmlab.lookup("target1.test", timeout=SLOW + 2)
        assert answered and seconds < PROMPT, (answered, seconds)
        assert _routes(nmlab) == routes
    finally:
        named.terminate()
        named.wait()

    assert await actuator.override_dns(0, None)
    await _resolv_conf_becomes(nmlab, before)
    assert _routes(nmlab) == routes

    # A stop gives everything back too, in its one Reapply per device.
    await actuator.override_dns(0, (BACKUP_RESOLVER,))
    await _resolv_conf_becomes(nmlab, _nameservers(BACKUP_RESOLVER, PRIMARY_RESOLVER))
    await actuator.restore()
    await _resolv_conf_becomes(nmlab, before)
    assert _routes(nmlab) == routes
    assert nmlab.profiles_on_disk() == on_disk  # nothing written to disk
    assert _machine_resolv_conf() == machine


async def test_a_vanished_device_fails_cleanly(nmlab: NMLab, client: NetworkManagerClient) -> None:
    actuator = await _lab_actuator(client)
    backup_device = actuator.uplinks[1].link.device
    assert backup_device is not None
    nmlab.host("ip", "link", "del", nmlab.upstreams[1].iface)
    await asyncio.sleep(0.5)
    with pytest.raises(NMError):
        await client.set_resolver_routes(backup_device, ResolverRoutes((BACKUP_RESOLVER,), "192.0.2.65"))
    with pytest.raises(NMError):
        await client.set_dns(backup_device, Dns((BACKUP_RESOLVER,)))
    # The actuator still thinks the backup is there: it logs, returns False, changes nothing.
    assert not await actuator.override_dns(0, (BACKUP_RESOLVER,))
    assert actuator.dns_status(0) == actuator.dns_status(1) == DnsOverride()


# -- lab: systemd-resolved, run from its Debian package inside the lab, never installed ----------------------

_RESOLVED_CACHE = Path("/var/cache/nmfailover-lab/systemd-resolved")
# Private /run (the lab's: its bus socket, and resolved's files), passwd and group where the
# "systemd-resolve" user resolved drops to is root (the lab's bus knows no other user), and an empty
# resolv.conf, so the machine's resolver never becomes one of resolved's.
_RESOLVED_WRAPPER = (
    'mount --bind "$1" /run && mount --bind "$2" /etc/passwd && mount --bind "$3" /etc/group'
    ' && mount --bind "$4" /etc/resolv.conf && shift 4 && exec "$@"'
)


def _resolved_root() -> Path:
    """A directory holding lib/systemd/systemd-resolved and usr/bin/resolvectl of the machine's systemd
    version: unpacked from the package (apt-get download, dpkg-deb -x), never installed, as installing it
    would take over the machine's /etc/resolv.conf."""
    if (_RESOLVED_CACHE / "lib/systemd/systemd-resolved").exists():
        return _RESOLVED_CACHE
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("systemd-resolved: no apt-get/dpkg-deb to unpack it")
    with tempfile.TemporaryDirectory() as download:
        got = subprocess.run(
            ["apt-get", "download", "systemd-resolved"], cwd=download, capture_output=True, text=True
        )
        debs = list(Path(download).glob("systemd-resolved_*.deb"))
        if got.returncode != 0 or not debs:
            pytest.skip(f"systemd-resolved: apt-get download failed: {got.stderr.strip()[-300:]}")
        unpacked = _RESOLVED_CACHE.with_name(f"{_RESOLVED_CACHE.name}.{os.getpid()}")
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        unpacked.rename(_RESOLVED_CACHE)
    return _RESOLVED_CACHE


@pytest.fixture
def resolved_lab(lab_machine: None) -> Iterator[tuple[NMLab, Path]]:
    """NMLab(2) with NetworkManager on dns=systemd-resolved and a running systemd-resolved; yields the lab and
    the directory of resolved's package (for resolvectl)."""
    root = _resolved_root()
    with NMLab(2, extra_nm_config="[main]\ndns=systemd-resolved\n") as lab:
        private = lab.workdir / "resolved"
        private.mkdir()
        run = lab._run_dir
        (run / "systemd" / "resolve").mkdir(parents=True, exist_ok=True)
        (run / "systemd" / "resolved.conf.d").mkdir(parents=True, exist_ok=True)
        # Only unicast DNS: LLMNR and mDNS would chatter on the uplinks and answer nothing here.
        (run / "systemd" / "resolved.conf.d" / "lab.conf").write_text(
            "[Resolve]\nLLMNR=no\nMulticastDNS=no\n"
        )
        passwd, group, empty = private / "passwd", private / "group", private / "resolv.conf"
        passwd.write_text(Path("/etc/passwd").read_text() + "systemd-resolve:x:0:0::/:/usr/sbin/nologin\n")
        group.write_text(Path("/etc/group").read_text() + "systemd-resolve:x:0:\n")
        empty.write_text("")
        with (private / "resolved.log").open("ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.host_netns, "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", _RESOLVED_WRAPPER, "sh", str(run), str(passwd), str(group), str(empty),
                 str(root / "lib/systemd/systemd-resolved")],
                env=lab.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            started = time.monotonic()
            while not lab._bus_name_owned("org.freedesktop.resolve1"):
                tail = (private / "resolved.log").read_text(errors="replace")[-2000:]
                assert proc.poll() is None and time.monotonic() - started < 10, f"systemd-resolved: {tail}"
                time.sleep(0.05)
            yield lab, root
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _resolvectl(lab: NMLab, root: Path, *args: str) -> str:
    return lab.host(str(root / "usr/bin/resolvectl"), *args, env=lab.env).stdout


def _dns_default_route(lab: NMLab, root: Path, iface: str) -> bool:
    """Whether resolved sends lookups of any name (the DNS default route) to the link's resolvers."""
    return "+DefaultRoute" in _resolvectl(lab, root, "status", iface)


async def _until(condition: Callable[[], bool], lab: NMLab, root: Path, timeout: float = 5) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, _resolvectl(lab, root, "status")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _answers_within(lab: NMLab, root: Path, name: str, timeout: float) -> tuple[bool, float]:
    stub = lab._run_dir / "systemd" / "resolve" / "stub-resolv.conf"
    _resolvectl(lab, root, "flush-caches")  # each lookup asks the resolvers, not resolved's cache
    return lab.lookup(name, timeout=timeout, resolv_conf=stub)


async def test_through_systemd_resolved_a_lookup_works_again(
    resolved_lab: tuple[NMLab, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, root = resolved_lab
    machine = _machine_resolv_conf()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab.bus_address)
    client = NetworkManagerClient()
    await client.connect()
    try:
        started = time.monotonic()
        while not (await _answers_within(lab, root, "target1.test", timeout=2))[0]:
            assert time.monotonic() - started < 15, _resolvectl(lab, root, "status")
        primary, backup = lab.upstreams

        # NetworkManager's defaults give both uplinks the DNS default route, and resolved takes the first
        # answer of either: a dead resolver on the primary costs nothing there.
        primary.break_dns()
        answered, seconds = await _answers_within(lab, root, "target2.test", timeout=SLOW + 2)
        assert answered and seconds < PROMPT, (answered, seconds)

        # A backup whose profile ranks its DNS lower (as a metered one might) has no default route for
        # DNS: now the dead resolver takes every lookup down.
        lab.nmcli("connection", "modify", "backup", "ipv4.dns-priority", "200")
        lab.nmcli("device", "reapply", backup.iface)
        await _until(lambda: not _dns_default_route(lab, root, backup.iface), lab, root)
        dead, dead_seconds = await _answers_within(lab, root, "target3.test", timeout=SLOW + 2)
        assert not dead, dead_seconds

        actuator = await _lab_actuator(client)
        assert await actuator.override_dns(0, (BACKUP_RESOLVER,))
        moved = await _until(lambda: _dns_default_route(lab, root, backup.iface), lab, root)
        assert not _dns_default_route(lab, root, primary.iface)
        answered, seconds = await _answers_within(lab, root, "target1.test", timeout=SLOW + 2)
        assert answered and seconds < PROMPT, (answered, seconds)
        print(
            f"\nresolved: lookup with the primary's resolver dead and the backup without DNS default route: "
            f"failed after {dead_seconds:.2f} s; after override_dns the backup had it {moved * 1000:.0f} ms "
            f"later and a lookup took {seconds * 1000:.0f} ms"
        )

        assert await actuator.override_dns(0, None)
        await _until(lambda: not _dns_default_route(lab, root, backup.iface), lab, root)
        assert _dns_default_route(lab, root, primary.iface)
        assert _machine_resolv_conf() == machine
    finally:
        await client.close()
