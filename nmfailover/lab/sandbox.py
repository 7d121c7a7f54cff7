"""A disposable lab: simulated uplinks in network namespaces, optionally managed by a real NetworkManager.

Used by the test suite and by `nmfailover demo`. Needs root. Nothing here touches the machine's own
interfaces, routes, resolver or system bus: every device lives in a namespace created here, NetworkManager
runs in a private mount namespace on a private bus, and all names carry this process's pid plus a random
token, so parallel runs never collide and leftovers of crashed runs can be recognised and removed.

Topology (uplink a / b / c):

    host ns: wanX 192.0.2.2/26 .66/26 .130/26, 2001:db8:X::2/64
       |  veth
    upstream ns X: gw 192.0.2.1 .65 .129, 2001:db8:X::1; on lo: the shared targets 203.0.113.10-12 and
       2001:db8:ffff::10-12, and the uplink's own resolver 203.0.113.53 / .54 / .55

Load: `Upstream.rate_limit()` puts a token bucket with a deep queue on the router's side of the link (what
the ISP sends toward the host: the download direction), and `Topology.bulk_download()` keeps that link
saturated from the host namespace, so probes through it wait behind seconds of queued data (bufferbloat).
The download comes from a server one hop further (created on first use):

    upstream ns X: isp 198.51.100.1/30
       |  veth
    bulk-source ns X: net 198.51.100.2/30 (BULK_ADDRESS), default via .1; HTTP /bulk

A server in the upstream namespace itself could not fill that queue: the kernel holds a local sender to a
millisecond or so of data in its own device queues (TCP small queues); a forwarded flow is not held back.

Faults: `Upstream`'s methods, one class of failure each (silent death, a dead or failing resolver, refused
or hung connections, a captive portal, loss each way or one way, a pulled cable); heal() undoes any.

One internet behind every uplink (Topology(shared_internet=True), for Multipath TCP): every upstream router
also routes to one namespace holding a server address reachable through each uplink, so one connection can
have a path through each; each upstream's faults cut only its own path (blackhole drops all it forwards):

    upstream ns X: inet 198.51.100.65/.69/.73 (/30), 2001:db8:fe:X::1/64
       |  veth
    internet ns: upX 198.51.100.66/.70/.74, 2001:db8:fe:X::2; on lo: INTERNET_ADDRESS 203.0.113.100 and
       INTERNET_ADDRESS6 2001:db8:ffff::100; routes back to each uplink's addresses through its router

MPTCP is on in every namespace (net.mptcp.enabled is 1 in a new one); this lab also sets the MPTCP limits
of the host and the internet namespaces (2 subflows, 2 accepted addresses). NetworkManager sets none.

A user: `Topology.user_traffic()` runs a browser-like client (nmfailover.lab.usertraffic) in the host
namespace, resolving through glibc with the lab's resolv.conf, or NetworkManager's (NMLab.nm_resolv_conf),
as /etc/resolv.conf in a private mount namespace, and records every attempt.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from xml.sax.saxutils import escape

from .usertraffic import INTERVAL as USER_INTERVAL
from .usertraffic import UserAttempt, parse_attempts

TARGET_ADDRESSES: tuple[str, ...] = ("203.0.113.10", "203.0.113.11", "203.0.113.12")
TARGET_ADDRESSES6: tuple[str, ...] = ("2001:db8:ffff::10", "2001:db8:ffff::11", "2001:db8:ffff::12")
LAB_PROBE_URLS: str = (
    "http://target1.test/generate_204 204,"
    "http://target2.test/success.txt 200 success,"
    "http://target3.test/generate_204 204"
)
PROFILE_NAMES: tuple[str, ...] = ("primary", "backup", "fallback")
# What bulk_download() fetches: an endless stream from the bulk source behind each upstream's router (the
# same address behind every upstream, like the targets), by address: the host namespace has no resolver.
BULK_ADDRESS: str = "198.51.100.2"
BULK_URL: str = f"http://{BULK_ADDRESS}/bulk"
_BULK_GATEWAY = "198.51.100.1"
_BULK_PREFIXLEN = 30
# The shared internet's own address (Topology(shared_internet=True)), the same through every uplink.
INTERNET_ADDRESS: str = "203.0.113.100"
INTERNET_ADDRESS6: str = "2001:db8:ffff::100"
_TRANSIT_BASE = 64  # upstream k's link to the shared internet: 198.51.100.(64 + 4k)/30

# name, host address, gateway, IPv6 prefix, resolver
_PLAN: tuple[tuple[str, str, str, str, str], ...] = (
    ("a", "192.0.2.2", "192.0.2.1", "2001:db8:a::", "203.0.113.53"),
    ("b", "192.0.2.66", "192.0.2.65", "2001:db8:b::", "203.0.113.54"),
    ("c", "192.0.2.130", "192.0.2.129", "2001:db8:c::", "203.0.113.55"),
)
_PREFIXLEN4 = 26
_NAME_PREFIX = "nmfo-"
_OWNER_RE = re.compile(r"^nmfo-(\d+)-")
_FAULT_TABLE = "nmfailover_fault"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding nmfailover/
# Extra places to look for tools: a non-login root shell may lack the sbin directories in PATH.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_NM_DISPATCHER = "/usr/lib/NetworkManager/nm-dispatcher"
_NM_BUS_NAME = "org.freedesktop.NetworkManager"
_DISPATCHER_BUS_NAME = "org.freedesktop.nm_dispatcher"


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes stderr, so a failing lab step explains itself."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {str(self.stderr or '').strip()}"


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SBIN}")
    if path is None:
        raise FileNotFoundError(f"{name} not found")
    return path


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        check=False,  # checked below, with stderr in the error
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def _wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _stop(procs: Sequence[subprocess.Popen[Any]], grace: float = 5) -> None:
    """SIGTERM all at once, then SIGKILL whatever is still alive after `grace`; always reaps."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_netns(name: str) -> None:
    ip = _tool("ip")
    # Deleting a namespace does not kill what runs inside it; the namespace would live on with them.
    pids = _run([ip, "netns", "pids", name], check=False, timeout=10).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run([ip, "netns", "delete", name], check=False, timeout=10)


def cleanup_leftovers(pid: int | None = None) -> list[str]:
    """Remove lab namespaces (and their processes) and temp dirs left behind.

    With `pid`, everything created by that process (the test session's end-of-run guard); without,
    everything whose creating process is gone (crashed runs). Returns what was removed.
    """

    def owned(name: str) -> bool:
        m = _OWNER_RE.match(name)
        if m is None:
            return False
        owner = int(m.group(1))
        return owner == pid if pid is not None else not _pid_alive(owner)

    removed: list[str] = []
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for entry in sorted(netns_dir.iterdir()):
            if owned(entry.name):
                _remove_netns(entry.name)
                removed.append(f"netns {entry.name}")
    for entry in Path(tempfile.gettempdir()).glob(f"{_NAME_PREFIX}*"):
        if entry.is_dir() and owned(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(f"dir {entry}")
    return removed


def lab_available() -> str | None:
    """None if this machine can run the lab, else a one-line reason."""
    if not sys.platform.startswith("linux"):
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, NetworkManager)"
    for tool in ("ip", "nft", "NetworkManager", "nmcli", "dbus-daemon", "dbus-send", "unshare", "mount"):
        try:
            _tool(tool)
        except FileNotFoundError:
            return f"the lab needs {tool}, which is not installed"
    return None


@dataclass(frozen=True)
class QueueStats:
    """Counters of an upstream's rate limiter (its queue toward the host)."""

    rate_bytes: int  # the limit, bytes per second
    backlog_bytes: int  # waiting in the queue now
    sent_bytes: int  # passed on toward the host so far
    drops: int  # packets dropped because the queue was full

    @property
    def delay(self) -> float:
        """Seconds a packet joining the queue now waits before it leaves toward the host."""
        return self.backlog_bytes / self.rate_bytes if self.rate_bytes > 0 else 0.0


LossDirection = Literal["both", "to_internet", "from_internet"]
PortalKind = Literal["redirect", "login"]
DnsFault = Literal["silent", "servfail"]
LOSS_DIRECTIONS: tuple[LossDirection, ...] = ("both", "to_internet", "from_internet")
PORTAL_KINDS: tuple[PortalKind, ...] = ("redirect", "login")
DNS_FAULTS: tuple[DnsFault, ...] = ("silent", "servfail")
HTTP_MODES: tuple[str, ...] = ("ok", "portal", "wrong-body", "hang")  # and slow:SECONDS
_BEYOND4 = "203.0.113.0/24"  # the targets and the resolver: "the internet" behind each router
_BEYOND6 = "2001:db8:ffff::/48"


@dataclass(frozen=True)
class _Fault:
    """One fault as the parts of an upstream it changes; a part left at its default is healthy."""

    input: tuple[str, ...] = ()  # nft rules: what reaches the router's own addresses (targets, resolver)
    output: tuple[str, ...] = ()  # what the router's own addresses send
    forward: tuple[str, ...] = ()  # what the router passes on (the bulk source's traffic)
    http_mode: str = "ok"
    dns_mode: str = "ok"
    cable: bool = True


@dataclass
class Upstream:
    """One simulated ISP: its router (`gw` in `netns`) and the internet behind it.

    Faults: blackhole, blackhole6, refuse, lossy, hang, portal, break_dns, cut_cable. Each replaces the one
    before it (the new one is in place before the old one is gone, so a change of fault never passes
    through a healthy moment), and heal() undoes whichever is in place.
    """

    name: str
    netns: str
    iface: str
    address4: str
    gateway4: str
    address6: str
    gateway6: str
    resolver: str
    state_dir: Path
    _cable_cut: bool = field(default=False, init=False, repr=False)

    def _nft(
        self, rules: Sequence[str], output_rules: Sequence[str] = (), forward_rules: Sequence[str] = ()
    ) -> None:
        # Declare-then-delete-then-create in one transaction: atomically replaces any earlier fault,
        # and works whether or not the table exists.
        script = [f"table inet {_FAULT_TABLE}", f"delete table inet {_FAULT_TABLE}"]
        hooks = (("input", rules), ("output", output_rules), ("forward", forward_rules))
        chains = [(hook, hook_rules) for hook, hook_rules in hooks if hook_rules]
        if chains:
            script.append(f"table inet {_FAULT_TABLE} {{")
            for hook, hook_rules in chains:
                script += [
                    f"  chain {hook} {{",
                    f"    type filter hook {hook} priority filter; policy accept;",
                    *(f"    {rule}" for rule in hook_rules),
                    "  }",
                ]
            script.append("}")
        _run(
            [_tool("ip"), "netns", "exec", self.netns, _tool("nft"), "-f", "-"],
            input="\n".join(script) + "\n",
        )

    def _write_mode(self, name: str, mode: str) -> None:
        tmp = self.state_dir / f"{name}.tmp"
        tmp.write_text(mode + "\n", encoding="utf-8")
        # rename is atomic: the server never reads a half-written mode.
        tmp.replace(self.state_dir / name)

    def _set_cable(self, plugged: bool) -> None:
        if plugged == (not self._cable_cut):
            return  # no process spawned for what is already so: heal() runs often in tests
        _run([_tool("ip"), "-n", self.netns, "link", "set", "gw", "up" if plugged else "down"])
        self._cable_cut = not plugged

    def _apply(self, fault: _Fault) -> None:
        steps: list[tuple[bool, Callable[[], None]]] = [
            (
                bool(fault.input or fault.output or fault.forward),
                lambda: self._nft(fault.input, fault.output, fault.forward),
            ),
            (fault.http_mode != "ok", lambda: self._write_mode("mode", fault.http_mode)),
            (fault.dns_mode != "ok", lambda: self._write_mode("dns-mode", fault.dns_mode)),
            (not fault.cable, lambda: self._set_cable(fault.cable)),
        ]
        # The parts the new fault sets go in before the old fault's parts are cleared (a stable sort):
        # between two faults there is never a healthy instant a detector could take for a recovery.
        for _, step in sorted(steps, key=lambda s: not s[0]):
            step()

    def blackhole(self) -> None:
        """Silent upstream death: targets and resolver never answer; link and gateway stay up.

        Everything beyond the router goes quiet both ways, the bulk source included, and what the targets
        were sending stops too (a bulk download gets nothing more, not even a retransmission); only what
        already sits in the router's queue toward the host (see rate_limit) still arrives, as it would
        from a real ISP whose backbone just died.
        """
        # The resolver is inside 203.0.113.0/24, so these rules cover it; forwarded is the bulk source.
        self._apply(
            _Fault(
                input=(f"ip daddr {_BEYOND4} drop", f"ip6 daddr {_BEYOND6} drop"),
                output=(f"ip saddr {_BEYOND4} drop", f"ip6 saddr {_BEYOND6} drop"),
                forward=("drop",),
            )
        )

    def blackhole6(self) -> None:
        """Silent death of IPv6 alone beyond the router (an ISP's IPv6 outage); IPv4 carries on."""
        self._apply(
            _Fault(
                input=(f"ip6 daddr {_BEYOND6} drop",),
                output=(f"ip6 saddr {_BEYOND6} drop",),
                forward=("meta nfproto ipv6 drop",),
            )
        )

    def refuse(self) -> None:
        """Targets answer every TCP connection with a RST (connection refused); echoes still answered."""
        self._apply(
            _Fault(
                input=(
                    f"meta l4proto tcp ip daddr {_BEYOND4} reject with tcp reset",
                    f"meta l4proto tcp ip6 daddr {_BEYOND6} reject with tcp reset",
                )
            )
        )

    def lossy(self, percent: int, direction: LossDirection = "both") -> None:
        """A brownout: packets to or from beyond the router, the bulk source's included, are dropped with
        `percent` % chance each; `direction` says which: `to_internet` (what the host sends), `from_internet`
        (what it receives) or `both`, each way on its own (a request and its answer then both arrive with a
        chance of (1 - percent/100) squared). Link and gateway stay up."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be 0..100, got {percent}")
        if direction not in LOSS_DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(LOSS_DIRECTIONS)}, got {direction!r}")
        # The same hooks and matches as blackhole, so the two describe the same stretch of the path.
        loss = f"numgen random mod 100 < {percent} drop"
        out, back = direction != "from_internet", direction != "to_internet"
        # Forwarded: what enters from the host's side is on its way out; what leaves toward it, coming back.
        forward = ((f'iifname "gw" {loss}',) if out else ()) + ((f'oifname "gw" {loss}',) if back else ())
        self._apply(
            _Fault(
                input=(f"ip daddr {_BEYOND4} {loss}", f"ip6 daddr {_BEYOND6} {loss}") if out else (),
                output=(f"ip saddr {_BEYOND4} {loss}", f"ip6 saddr {_BEYOND6} {loss}") if back else (),
                forward=forward,
            )
        )

    def hang(self) -> None:
        """The targets accept TCP connections and read each HTTP request, but never answer it (a hung
        server or proxy); echoes and DNS still answered. A request hung when the fault ends is dropped
        without an answer."""
        self._apply(_Fault(http_mode="hang"))

    def portal(self, kind: PortalKind = "redirect") -> None:
        """A captive portal: every HTTP request to the targets, on a new or an already open connection, is
        answered with a `redirect` (302 to a login page) or with the `login` page itself (200); echoes and
        DNS still answered, as a hotspot or an exhausted data plan does."""
        if kind not in PORTAL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PORTAL_KINDS)}, got {kind!r}")
        self._apply(_Fault(http_mode="portal" if kind == "redirect" else "wrong-body"))

    def break_dns(self, kind: DnsFault = "silent") -> None:
        """Only the resolver fails: `silent` (queries go unanswered) or `servfail` (every query is answered
        SERVFAIL); the targets stay reachable by address."""
        if kind not in DNS_FAULTS:
            raise ValueError(f"kind must be one of {', '.join(DNS_FAULTS)}, got {kind!r}")
        if kind == "silent":
            self._apply(_Fault(input=(f"ip daddr {self.resolver} drop",)))
        else:
            self._apply(_Fault(dns_mode="servfail"))

    def cut_cable(self) -> None:
        """The router's side of the link goes down: the host's device loses carrier."""
        self._apply(_Fault(cable=False))

    def heal(self) -> None:
        """Undo whichever fault is in place; harmless on a healthy upstream."""
        self._apply(_Fault())

    def restore_cable(self) -> None:
        """Plug the cable back in (and nothing else: heal() undoes any fault)."""
        self._set_cable(True)

    def _tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([_tool("tc"), "-n", self.netns, *args], check=check, timeout=10)

    def rate_limit(self, rate_kbit: int, queue_ms: int) -> None:
        """Shape what the upstream sends toward the host (the download direction) to `rate_kbit`, with a
        FIFO `queue_ms` deep in front of the link: a saturating download then delays every other answer
        on this uplink by up to `queue_ms` (bufferbloat, as on DSL or 4G). Replaces an earlier limit."""
        if rate_kbit <= 0 or queue_ms <= 0:
            raise ValueError(f"rate_kbit and queue_ms must be positive; got {rate_kbit}, {queue_ms}")
        # 10 ms worth of tokens, and at least two full-size frames or nothing would ever pass.
        burst = max(rate_kbit * 1000 // 8 // 100, 3200)
        self._tc(
            "qdisc", "replace", "dev", "gw", "root",
            "tbf", "rate", f"{rate_kbit}kbit", "burst", str(burst), "latency", f"{queue_ms}ms",
        )  # fmt: skip

    def unlimit(self) -> None:
        """Undo rate_limit (the queued data is dropped); a no-op without one."""
        if self.queue_stats() is not None:
            self._tc("qdisc", "del", "dev", "gw", "root")

    def queue_stats(self) -> QueueStats | None:
        """The rate limiter's counters, or None without one (or with the router's device gone)."""
        proc = self._tc("-s", "-j", "qdisc", "show", "dev", "gw", check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        for qdisc in json.loads(proc.stdout):
            if qdisc.get("kind") == "tbf" and qdisc.get("root"):
                return QueueStats(
                    rate_bytes=int(qdisc.get("options", {}).get("rate", 0)),
                    backlog_bytes=int(qdisc.get("backlog", 0)),
                    sent_bytes=int(qdisc.get("bytes", 0)),
                    drops=int(qdisc.get("drops", 0)),
                )
        return None

    def wait_queue(self, delay: float, timeout: float = 30) -> float:
        """Wait until the rate limiter holds at least `delay` seconds of data; returns the seconds waited."""
        started = time.monotonic()
        last: QueueStats | None = None

        def deep() -> bool:
            nonlocal last
            last = self.queue_stats()
            return last is not None and last.delay >= delay

        try:
            _wait_for(f"{delay:g} s of queue toward {self.iface}", deep, timeout, interval=0.1)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last: {last}") from None
        return time.monotonic() - started

    def set_http_mode(self, mode: str) -> None:
        """The targets' HTTP behaviour alone (HTTP_MODES or `slow:SECONDS`, see nmfailover.lab.upstream),
        from the next request on, open connections included; other faults stay as they are."""
        if mode not in HTTP_MODES and not re.fullmatch(r"slow:\d+(\.\d+)?", mode):
            raise ValueError(f"unknown HTTP mode {mode!r}")
        self._write_mode("mode", mode)

    def _lines(self, name: str) -> list[str]:
        try:
            return (self.state_dir / name).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def dns_queries(self) -> int:
        return len(self._lines("dns.log"))

    def http_requests(self) -> int:
        return len(self._lines("http.log"))

    def http_log(self) -> list[str]:
        """One line per request: METHOD, Host header, path, local address, peer address, connection number
        (tab-separated)."""
        return self._lines("http.log")

    def dns_log(self) -> list[str]:
        """One line per query: name, type, peer address (tab-separated)."""
        return self._lines("dns.log")


class BulkDownload:
    """Downloads that keep one uplink saturated: curl in the host namespace, bound to the uplink's device
    (so it goes out there whatever the default route), fetching an endless stream (BULK_URL); each is
    restarted whenever it ends or stalls, until stop(). A context manager (stops on exit).

    Made by Topology.bulk_download(); `starts` counts the curl runs, `exits` their exit codes.
    """

    # A transfer that stalls (e.g. across blackhole and heal) is given up and started afresh, instead of
    # waiting out TCP's retransmission backoff.
    STALL_SECONDS = 5
    STALL_BYTES_PER_SECOND = 1000
    CONNECT_TIMEOUT = 5
    RESTART_DELAY = 0.2

    def __init__(
        self, netns: str, iface: str, url: str, streams: int = 1, seconds: float | None = None
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be 1 or more, got {streams}")
        self.netns = netns
        self.iface = iface
        self.url = url
        self.streams = streams
        self.seconds = seconds
        self.starts = 0
        self.exits: list[int] = []
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._threads: list[threading.Thread] = []
        self._deadline: float | None = None

    def argv(self) -> list[str]:
        return [
            _tool("ip"), "netns", "exec", self.netns,
            _tool("curl"), "--silent", "--output", "/dev/null", "--interface", f"if!{self.iface}",
            "--connect-timeout", str(self.CONNECT_TIMEOUT),
            "--speed-time", str(self.STALL_SECONDS), "--speed-limit", str(self.STALL_BYTES_PER_SECOND),
            self.url,
        ]  # fmt: skip

    def start(self) -> Self:
        if self._threads:
            raise RuntimeError("this download was already started")
        argv = self.argv()  # a missing curl fails here, not in a thread
        if self.seconds is not None:
            self._deadline = time.monotonic() + self.seconds
        for n in range(self.streams):
            thread = threading.Thread(
                target=self._loop, args=(argv,), name=f"bulk-{self.iface}-{n}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _finished(self) -> bool:
        remaining = self._remaining()
        return self._stop_event.is_set() or (remaining is not None and remaining <= 0)

    def _loop(self, argv: list[str]) -> None:
        while not self._finished():
            with self._lock:
                if self._stop_event.is_set():
                    return
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                self._procs.add(proc)
                self.starts += 1
            started = time.monotonic()
            while proc.poll() is None and not self._finished():
                self._stop_event.wait(0.1)
            _stop([proc], grace=2)
            with self._lock:
                self._procs.discard(proc)
                self.exits.append(proc.returncode)
            if time.monotonic() - started < 1:
                self._stop_event.wait(self.RESTART_DELAY)  # no tight loop while the target is unreachable

    @property
    def running(self) -> bool:
        """True while any stream is meant to be running (between start and stop or the end of `seconds`)."""
        return any(t.is_alive() for t in self._threads) and not self._finished()

    def wait(self) -> None:
        """Block until the `seconds` given at the start have passed (then the download has stopped)."""
        if self.seconds is None:
            raise RuntimeError("a download without `seconds` runs until stop()")
        for thread in self._threads:
            thread.join()

    def stop(self) -> None:
        """Stop every stream and wait for its curl to be gone. Idempotent."""
        with self._lock:
            self._stop_event.set()
            procs = list(self._procs)
        _stop(procs, grace=2)
        for thread in self._threads:
            thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# The user-traffic client's /etc: a directory of symlinks to the real entries (a symlink copied as it is, so
# a relative one still points where it did), and /etc/resolv.conf a symlink to the lab's file. By path, so a
# file replaced by rename, as NetworkManager writes its resolv.conf, is followed, which a bind mount of the
# file would not do. All in a private mount namespace; the real /etc is bound read-only, so even a mount
# that leaked could not be written through.
_USER_TRAFFIC_WRAPPER = """set -e
real=$1 resolv=$2
shift 2
mount --bind /etc "$real"
mount -o remount,bind,ro "$real"
mount -t tmpfs -o mode=0755 lab-etc /etc
for entry in "$real"/* "$real"/.[!.]*; do
  name=${entry##*/}
  if [ -L "$entry" ]; then ln -s "$(readlink "$entry")" "/etc/$name"
  elif [ -e "$entry" ]; then ln -s "$entry" "/etc/$name"; fi
done
rm -f /etc/resolv.conf
ln -s "$resolv" /etc/resolv.conf
exec "$@"
"""
USER_TRAFFIC_SECONDS = 600.0  # the client stops by itself after this long, whoever forgets to stop it


class UserTraffic:
    """The lab's user-traffic client (nmfailover.lab.usertraffic) in the host namespace; made by
    Topology.user_traffic(). attempts() reads what it recorded so far."""

    READY_TIMEOUT = 15.0

    def __init__(self, proc: subprocess.Popen[str], out: Path, log: Path, resolv_conf: Path) -> None:
        self.proc = proc
        self.out = out
        self.log = log
        self.resolv_conf = resolv_conf

    def _lines(self) -> list[str]:
        try:
            return self.out.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                log = self.log.read_text(errors="replace").strip()
                raise RuntimeError(f"the user-traffic client exited {self.proc.returncode}: {log}")
            return bool(self._lines())  # its first line says it runs

        _wait_for("the user-traffic client", ready, self.READY_TIMEOUT)

    def attempts(self) -> list[UserAttempt]:
        """Every attempt finished so far (all of them, unfinished ones included, once it has stopped)."""
        return parse_attempts(self._lines())

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (it writes its unfinished attempts and exits), SIGKILL after a grace. Idempotent."""
        _stop([self.proc], grace=5)


STREAM_PORT_MPTCP = 5201
STREAM_PORT_TCP = 5202
# Data arriving for less than this between two pauses is a trickle (a retransmission getting through), not
# the stream flowing again.
STREAM_TRICKLE = 0.05


@dataclass(frozen=True)
class StreamGap:
    """A pause in a stream longer than nmfailover.lab.stream's GAP: when it began (wall clock), how long."""

    start: float
    seconds: float

    @property
    def end(self) -> float:
        return self.start + self.seconds


@dataclass(frozen=True)
class StreamResult:
    """What a stream's client saw, once stopped."""

    received: int  # bytes
    broken_at: int | None  # the offset of the first byte that was not the stream's (lost or repeated)
    error: str  # why it ended on its own ("" if it was stopped)
    gaps: tuple[StreamGap, ...]
    end: float  # wall clock

    def stall(self, moment: float, within: float) -> float:
        """Seconds the stream stood still from `moment` (wall clock) on, within `within` seconds of it: the
        pause under way at `moment` or beginning after it, with the pauses that follow it with only a
        trickle between them (less than a pause's own threshold); 0.0 if it never stopped."""
        stalls: list[StreamGap] = []
        for gap in self.gaps:
            if stalls and gap.start - stalls[-1].end < STREAM_TRICKLE:
                stalls[-1] = StreamGap(stalls[-1].start, gap.end - stalls[-1].start)
            else:
                stalls.append(gap)
        hit = [g for g in stalls if g.end > moment and g.start < moment + within]
        return max((g.end - max(g.start, moment) for g in hit), default=0.0)


class Stream:
    """One connection from the host namespace to the shared internet (Topology.stream())."""

    CONNECT_TIMEOUT = 15.0

    def __init__(self, proc: subprocess.Popen[str], out: Path) -> None:
        self.proc = proc
        self.out = out
        self.local: str | None = None  # the connection's source address
        self.connected: float | None = None

    def _records(self) -> list[dict[str, Any]]:
        try:
            lines = self.out.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_connected(self) -> None:
        def connected() -> bool:
            records = self._records()
            if records and "connected" in records[0]:
                self.local, self.connected = str(records[0]["local"]), float(records[0]["connected"])
                return True
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
                raise RuntimeError(f"the stream client exited {self.proc.returncode}: {stderr}")
            return False

        _wait_for("the stream to connect", connected, self.CONNECT_TIMEOUT)

    def gaps(self) -> list[StreamGap]:
        """The pauses so far; one still going on is not among them."""
        return [StreamGap(r["gap_start"], r["gap"]) for r in self._records() if "gap" in r]

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> StreamResult:
        """Stop the client (it writes its totals) and read what it saw. Idempotent."""
        _stop([self.proc], grace=5)
        last = self._records()[-1]
        if "bytes" not in last:
            raise RuntimeError(f"the stream client left no totals in {self.out}")
        return StreamResult(
            received=int(last["bytes"]),
            broken_at=last["broken_at"],
            error=str(last["error"]),
            gaps=tuple(self.gaps()),
            end=float(last["end"]),
        )


_LIVE: set[Topology] = set()


@atexit.register
def _close_live() -> None:
    for lab in list(_LIVE):
        lab.close()


class Topology:
    """Host namespace plus one upstream namespace per uplink. A context manager; always cleans up."""

    def __init__(
        self, uplinks: int = 2, *, configure_host: bool = True, shared_internet: bool = False
    ) -> None:
        if not 1 <= uplinks <= len(_PLAN):
            raise ValueError(f"uplinks must be 1..{len(_PLAN)}, got {uplinks}")
        reason = lab_available()
        if reason is not None:
            raise RuntimeError(reason)
        cleanup_leftovers()
        tag = f"{_NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.host_netns = f"{tag}-host"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
        # A non-root daemon under test must be able to reach the bus socket below this directory.
        self.workdir.chmod(0o755)
        self.upstreams: list[Upstream] = []
        self._configure_host = configure_host
        self._uplinks = uplinks
        # The namespace of the one internet behind every uplink, or None (see the module's docstring).
        self.internet_netns: str | None = f"{tag}-inet" if shared_internet else None
        self._procs: list[subprocess.Popen[Any]] = []
        self._downloads: list[BulkDownload] = []
        self._bulk_sources: set[str] = set()
        self._stream_ports: set[int] = set()
        self._netns: list[str] = []
        self._closed = False
        _LIVE.add(self)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------------------

    def _add_netns(self, name: str) -> None:
        ip = _tool("ip")
        _run([ip, "netns", "add", name])
        self._netns.append(name)
        _run([ip, "-n", name, "link", "set", "lo", "up"])
        # DAD would hold IPv6 addresses "tentative" for a second or more; nothing here can collide.
        _run(
            [
                ip, "netns", "exec", name, _tool("sysctl"), "-qw",
                "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
            ]
        )  # fmt: skip

    def _batch(self, netns: str, commands: Sequence[str]) -> None:
        _run([_tool("ip"), "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n")

    def _setup(self) -> None:
        self._add_netns(self.host_netns)
        for index, (name, addr4, gw4, prefix6, resolver) in enumerate(_PLAN[: self._uplinks]):
            netns = f"{self.host_netns.removesuffix('-host')}-{name}"
            state_dir = self.workdir / f"upstream-{name}"
            state_dir.mkdir()
            up = Upstream(
                name=name,
                netns=netns,
                iface=f"wan{name}",
                address4=addr4,
                gateway4=gw4,
                address6=f"{prefix6}2",
                gateway6=f"{prefix6}1",
                resolver=resolver,
                state_dir=state_dir,
            )
            self.upstreams.append(up)
            self._add_netns(netns)
            # Created inside the namespaces directly, so the root namespace never sees the devices.
            _run([_tool("ip"), "-n", self.host_netns, "link", "add", up.iface, "type", "veth",
                  "peer", "name", "gw", "netns", netns])  # fmt: skip
            self._batch(
                netns,
                [
                    f"address add {gw4}/{_PREFIXLEN4} dev gw",
                    f"address add {up.gateway6}/64 dev gw nodad",
                    *(f"address add {a}/32 dev lo" for a in (*TARGET_ADDRESSES, resolver)),
                    *(f"address add {a}/128 dev lo nodad" for a in TARGET_ADDRESSES6),
                    "link set gw up",
                ],
            )
            host_cmds = [f"link set {up.iface} up"]
            if self._configure_host:
                metric = 100 * (index + 1)
                host_cmds += [
                    f"address add {addr4}/{_PREFIXLEN4} dev {up.iface}",
                    f"address add {up.address6}/64 dev {up.iface} nodad",
                    f"route add default via {gw4} dev {up.iface} metric {metric}",
                    f"route add default via {up.gateway6} dev {up.iface} metric {metric}",
                ]
            self._batch(self.host_netns, host_cmds)
        if self.internet_netns is not None:
            self._shared_internet(self.internet_netns)
        self._start_upstream_servers()

    def _shared_internet(self, netns: str) -> None:
        """One namespace behind every upstream router, holding INTERNET_ADDRESS(6) (see the docstring)."""
        ip, sysctl = _tool("ip"), _tool("sysctl")
        self._add_netns(netns)
        inet_cmds = [
            f"address add {INTERNET_ADDRESS}/32 dev lo",
            f"address add {INTERNET_ADDRESS6}/128 dev lo nodad",
        ]
        for index, (up, (name, addr4, _, prefix6, _)) in enumerate(zip(self.upstreams, _PLAN, strict=False)):
            transit = _TRANSIT_BASE + 4 * index
            router4, inet4 = f"198.51.100.{transit + 1}", f"198.51.100.{transit + 2}"
            router6, inet6 = f"2001:db8:fe:{name}::1", f"2001:db8:fe:{name}::2"
            uplink_net4 = ipaddress.ip_interface(f"{addr4}/{_PREFIXLEN4}").network
            _run([ip, "-n", up.netns, "link", "add", "inet", "type", "veth", "peer", "name", f"up{name}",
                  "netns", netns])  # fmt: skip
            self._batch(
                up.netns,
                [
                    f"address add {router4}/30 dev inet",
                    f"address add {router6}/64 dev inet nodad",
                    "link set inet up",
                    f"route add {INTERNET_ADDRESS}/32 via {inet4}",
                    f"route add {INTERNET_ADDRESS6}/128 via {inet6}",
                ],
            )
            _run([ip, "netns", "exec", up.netns, sysctl, "-qw", "net.ipv4.ip_forward=1",
                  "net.ipv6.conf.all.forwarding=1"])  # fmt: skip
            inet_cmds += [
                f"address add {inet4}/30 dev up{name}",
                f"address add {inet6}/64 dev up{name} nodad",
                f"link set up{name} up",
                f"route add {uplink_net4} via {router4}",
                f"route add {prefix6}/64 via {router6}",
            ]
        self._batch(netns, inet_cmds)
        # Explicit, not the kernel's defaults (which changed over the years): the host opens one subflow
        # through each other uplink, the server accepts them.
        for where in (self.host_netns, netns):
            _run([ip, "-n", where, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"])

    def internet(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the shared internet's namespace (Topology(shared_internet=True))."""
        if self.internet_netns is None:
            raise RuntimeError("this lab has no shared internet: Topology(shared_internet=True)")
        return _run([_tool("ip"), "netns", "exec", self.internet_netns, *argv], check=check, timeout=timeout)

    def popen_internet(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start argv inside the shared internet's namespace (text mode); it is killed on cleanup."""
        if self.internet_netns is None:
            raise RuntimeError("this lab has no shared internet: Topology(shared_internet=True)")
        proc: subprocess.Popen[str] = subprocess.Popen(
            [_tool("ip"), "netns", "exec", self.internet_netns, *argv], text=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def _launch_server(self, netns: str, state_dir: Path, *args: str) -> subprocess.Popen[Any]:
        """nmfailover.lab.upstream in `netns`, logging to state_dir/server.log; see _wait_servers."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        argv = [_tool("ip"), "netns", "exec", netns, sys.executable, "-m", "nmfailover.lab.upstream",
                "--state-dir", str(state_dir), *args]  # fmt: skip
        with (state_dir / "server.log").open("ab") as log:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._procs.append(proc)
        return proc

    @staticmethod
    def _wait_servers(what: str, servers: Sequence[tuple[Path, subprocess.Popen[Any]]]) -> None:
        def ready() -> bool:
            for state_dir, proc in servers:
                if proc.poll() is not None:
                    log = (state_dir / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"{what} ({state_dir.name}) exited {proc.returncode}: {log}")
            return all((state_dir / "ready").exists() for state_dir, _ in servers)

        _wait_for(what, ready, timeout=15)

    def _start_upstream_servers(self) -> None:
        servers = [
            (up.state_dir, self._launch_server(up.netns, up.state_dir, "--resolver", up.resolver))
            for up in self.upstreams
        ]
        self._wait_servers("upstream servers", servers)

    def _bulk_source(self, up: Upstream) -> None:
        """The namespace behind `up`'s router serving /bulk at BULK_ADDRESS (see the module's docstring)."""
        if up.name in self._bulk_sources:
            return
        ip = _tool("ip")
        netns = f"{self.host_netns.removesuffix('-host')}-{up.name}-net"
        state_dir = self.workdir / f"bulk-source-{up.name}"
        state_dir.mkdir()
        self._add_netns(netns)
        _run(
            [ip, "-n", up.netns, "link", "add", "isp", "type", "veth", "peer", "name", "net", "netns", netns]
        )
        self._batch(up.netns, [f"address add {_BULK_GATEWAY}/{_BULK_PREFIXLEN} dev isp", "link set isp up"])
        self._batch(
            netns,
            [
                f"address add {BULK_ADDRESS}/{_BULK_PREFIXLEN} dev net",
                "link set net up",
                f"route add default via {_BULK_GATEWAY} dev net",
            ],
        )
        _run([ip, "netns", "exec", up.netns, _tool("sysctl"), "-qw", "net.ipv4.ip_forward=1"])
        self._wait_servers("bulk source", [(state_dir, self._launch_server(netns, state_dir))])
        self._bulk_sources.add(up.name)

    # -- running things in the host namespace ---------------------------------------------------

    def _default_env(self) -> Mapping[str, str] | None:
        return None

    def host(
        self,
        *argv: str,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the host namespace; text output captured."""
        return _run(
            [_tool("ip"), "netns", "exec", self.host_netns, *argv],
            check=check,
            timeout=timeout,
            env=env if env is not None else self._default_env(),
        )

    def popen_host(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        """Start argv inside the host namespace (text mode); it is killed on cleanup."""
        env = env if env is not None else self._default_env()
        proc: subprocess.Popen[str] = subprocess.Popen(
            [_tool("ip"), "netns", "exec", self.host_netns, *argv],
            env=None if env is None else dict(env),
            text=True,
            **kwargs,
        )
        self._procs.append(proc)
        return proc

    @contextlib.contextmanager
    def loaded_primary(self, rate_kbit: int, queue_ms: int, queue_ready: float) -> Iterator[BulkDownload]:
        """The primary rate-limited with a deep queue and saturated by a download bound to it, whose queue
        holds at least `queue_ready` seconds before the block starts, until the block ends."""
        primary = self.upstreams[0]
        primary.rate_limit(rate_kbit, queue_ms)
        try:
            with self.bulk_download(0) as download:
                primary.wait_queue(queue_ready, timeout=30)
                yield download
        finally:
            primary.unlimit()

    def bulk_download(
        self, uplink_index: int, seconds: float | None = None, *, streams: int = 1, url: str = BULK_URL
    ) -> BulkDownload:
        """Start a download through uplink `uplink_index` from the bulk source behind its router (see
        BulkDownload); stop it with stop() or by leaving the `with` block. It ends by itself after `seconds`
        if given, and with the lab. With the upstream's rate_limit() it saturates the link at once, and fills
        the queue as TCP's window grows (a 1.5 s queue at 4 Mbit/s: about 10 s); Upstream.wait_queue()
        waits for that."""
        if not 0 <= uplink_index < len(self.upstreams):
            raise ValueError(f"uplink_index must be 0..{len(self.upstreams) - 1}, got {uplink_index}")
        up = self.upstreams[uplink_index]
        self._bulk_source(up)
        download = BulkDownload(self.host_netns, up.iface, url, streams, seconds)
        self._downloads.append(download)
        return download.start()

    def resolv_conf(self) -> Path:
        """A resolv.conf listing each uplink's resolver, the primary's first, as NetworkManager writes one
        (written on first use). The default of user_traffic()."""
        path = self.workdir / "resolv.conf"
        if not path.exists():
            lines = [f"nameserver {up.resolver}" for up in self.upstreams]
            path.write_text(
                "# written by nmfailover.lab.sandbox\n" + "\n".join(lines) + "\n", encoding="utf-8"
            )
        return path

    @contextlib.contextmanager
    def user_traffic(
        self,
        interval: float = USER_INTERVAL,
        *,
        seconds: float = USER_TRAFFIC_SECONDS,
        resolv_conf: Path | None = None,
        lookup_only: bool = False,
    ) -> Iterator[UserTraffic]:
        """A browser-like user in the host namespace while the block runs (see nmfailover.lab.usertraffic):
        every `interval` s a name looked up through glibc with `resolv_conf` (default: resolv_conf()) as
        /etc/resolv.conf, and a page fetched over a new connection through the default route
        (`lookup_only`: no connections). It stops by itself after `seconds`, and is stopped on exit."""
        resolv = (resolv_conf if resolv_conf is not None else self.resolv_conf()).absolute()
        run_dir = self.workdir / f"user-traffic-{secrets.token_hex(3)}"
        (run_dir / "etc").mkdir(parents=True)
        out, log = run_dir / "attempts.jsonl", run_dir / "client.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        argv = [
            _tool("unshare"), "--mount", "--propagation", "private", "sh", "-c", _USER_TRAFFIC_WRAPPER,
            "sh", str(run_dir / "etc"), str(resolv),
            sys.executable, "-m", "nmfailover.lab.usertraffic", "--out", str(out),
            "--expect-resolv", str(resolv), "--interval", f"{interval:g}", "--seconds", f"{seconds:g}",
            *(["--lookup-only"] if lookup_only else []),
        ]  # fmt: skip
        with log.open("ab") as log_file:
            proc = self.popen_host(argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        traffic = UserTraffic(proc, out, log, resolv)
        try:
            traffic.wait_ready()
            yield traffic
        finally:
            traffic.stop()

    def fetch_seconds(self, iface: str, url: str, timeout: float = 10) -> float:
        """Seconds a plain HTTP GET of `url` takes from the host namespace through `iface` (curl's
        time_total: connect, request, whole answer); CommandError if it fails or takes over `timeout`."""
        out = self.host(
            _tool("curl"), "--silent", "--show-error", "--output", "/dev/null", "--interface", f"if!{iface}",
            "--max-time", f"{timeout:g}", "--write-out", "%{time_total}", url,
            timeout=timeout + 10,
        ).stdout  # fmt: skip
        return float(out.strip())

    # -- one long connection to the shared internet ----------------------------------------------

    def _stream_server(self, tcp: bool) -> int:
        """The port of the shared internet's stream server (MPTCP or plain TCP), started on first use."""
        port = STREAM_PORT_TCP if tcp else STREAM_PORT_MPTCP
        if port in self._stream_ports:
            return port
        if self.internet_netns is None:
            raise RuntimeError("a stream needs the shared internet: Topology(shared_internet=True)")
        state_dir = self.workdir / f"stream-server-{port}"
        state_dir.mkdir()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        argv = [_tool("ip"), "netns", "exec", self.internet_netns, sys.executable, "-m",
                "nmfailover.lab.stream", "server", "--port", str(port), "--state-dir", str(state_dir),
                *(["--tcp"] if tcp else [])]  # fmt: skip
        with (state_dir / "server.log").open("ab") as log:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._procs.append(proc)
        self._wait_servers("stream server", [(state_dir, proc)])
        self._stream_ports.add(port)
        return port

    def stream(
        self, *, tcp: bool = False, address: str = INTERNET_ADDRESS, device: str | None = None
    ) -> Stream:
        """Open one long connection from the host namespace to the shared internet's server, Multipath TCP
        (`tcp`: plain TCP), through the default route (or bound to `device`), receiving a paced, checked byte
        stream (see nmfailover.lab.stream) until Stream.stop()."""
        port = self._stream_server(tcp)
        out = self.workdir / f"stream-{secrets.token_hex(3)}.jsonl"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "nmfailover.lab.stream", "client", "--address", address,
                "--port", str(port), "--out", str(out), *(["--tcp"] if tcp else []),
                *(["--device", device] if device is not None else [])]  # fmt: skip
        proc = self.popen_host(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
        stream = Stream(proc, out)
        stream.wait_connected()
        return stream

    def subflows(self, address: str = INTERNET_ADDRESS) -> list[str]:
        """The local addresses of the host namespace's established TCP connections to `address`: an MPTCP
        connection's subflows each show as one."""
        out = self.host(_tool("ss"), "-Htn", "state", "established", "dst", address).stdout
        # "192.0.2.66%wanb:48567": a subflow bound to its device shows the device after the address.
        locals_ = [line.split()[-2].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]
        return [local.split("%", 1)[0].strip("[]") for local in locals_]

    # -- observing the host namespace -----------------------------------------------------------

    def _ip_json(self, *args: str) -> list[dict[str, Any]]:
        out = _run([_tool("ip"), "-n", self.host_netns, "-j", *args], timeout=10).stdout
        result: list[dict[str, Any]] = json.loads(out) if out.strip() else []
        return result

    def iface_counters(self, iface: str) -> tuple[int, int]:
        """(rx_packets, tx_packets) of a host-namespace device."""
        stats = self._ip_json("-s", "link", "show", "dev", iface)[0]["stats64"]
        return int(stats["rx"]["packets"]), int(stats["tx"]["packets"])

    def iface_bytes(self, iface: str) -> tuple[int, int]:
        """(rx_bytes, tx_bytes) of a host-namespace device."""
        stats = self._ip_json("-s", "link", "show", "dev", iface)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def default_routes(self, family: int = 4) -> list[tuple[str, int]]:
        """(device, metric) of the host namespace's default routes, lowest metric first."""
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family}")
        routes = self._ip_json(f"-{family}", "route", "show", "default")
        found = [(str(r["dev"]), int(r.get("metric", 0))) for r in routes if "dev" in r]
        return sorted(found, key=lambda route: route[1])

    def default_route(self, family: int = 4) -> str | None:
        routes = self.default_routes(family)
        return routes[0][0] if routes else None

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process, delete every namespace and the temp dir. Idempotent, never raises."""
        if self._closed:
            return
        for download in self._downloads:
            with contextlib.suppress(Exception):
                download.stop()
        with contextlib.suppress(Exception):
            _stop(self._procs)
        for name in reversed(self._netns):
            with contextlib.suppress(Exception):
                _remove_netns(name)
        shutil.rmtree(self.workdir, ignore_errors=True)
        # Only now: a second Ctrl-C in the middle leaves the lab registered for the atexit retry.
        self._closed = True
        _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_destination="*" eavesdrop="true"/>
    <!-- without receive rules a system-type bus silently drops replies: every client hangs -->
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""

# Like Debian's system bus: the default policy of /usr/share/dbus-1/system.conf, the installed services'
# policies (NetworkManager, nm-dispatcher), and the policy file under test; everything else is denied.
_STRICT_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
  <include>{policy}</include>
</busconfig>
"""

# dns=default, what a machine without systemd-resolved runs; rc-manager=unmanaged: NetworkManager writes
# resolv.conf only in its private /run (NMLab.nm_resolv_conf, the one lookup() reads; 1.42 writes that file in
# every dns mode), never the machine's.
_NM_CONFIG = """[main]
plugins=keyfile
dns=default
rc-manager=unmanaged
systemd-resolved=false
no-auto-default=*
hostname-mode=none
auth-polkit=root-only

[keyfile]
path={keyfile_dir}
unmanaged-devices=

[connectivity]
enabled=false

[logging]
level=DEBUG
"""

# Private /run (NM's pid file, runtime profiles, per-device state, resolv.conf, and the bus socket at the
# standard path) and /var/lib/NetworkManager; read-only /sys, or NM waits forever for a udev that never
# comes. The run dir is on disk, not a tmpfs, so "managed" flags and in-memory profiles survive
# restart_nm(). A private file over the machine's /etc/resolv.conf as well (unless that is a symbolic
# link, which leads into the private /run): nothing NetworkManager does can reach the machine's resolver.
_NM_WRAPPER = (
    'mount --bind "$1" /run && mount --bind "$2" /var/lib/NetworkManager'
    ' && { [ -L /etc/resolv.conf ] || [ ! -f /etc/resolv.conf ] || mount --bind "$3" /etc/resolv.conf; }'
    ' && mount -o remount,bind,ro /sys && shift 3 && exec "$@"'
)
# The machine's own dispatcher scripts (e.g. Debian's 01-ifupdown) must not run for lab events, and a
# hook that talks to "the system bus" must reach the private one.
_DISPATCHER_WRAPPER = (
    'mount --bind "$1" /etc/NetworkManager/dispatcher.d'
    ' && mount --bind "$2" /usr/lib/NetworkManager/dispatcher.d'
    ' && { [ ! -d /run/dbus ] || mount --bind "$3" /run/dbus; } && shift 3 && exec "$@"'
)


class NMLab(Topology):
    """Topology whose host side is configured by a real NetworkManager on a private D-Bus bus."""

    def __init__(
        self,
        uplinks: int = 2,
        *,
        dispatcher_dir: Path | None = None,
        extra_nm_config: str = "",
        bus_policy: Path | None = None,
        shared_internet: bool = False,
    ) -> None:
        self._dispatcher_dir = dispatcher_dir
        # A D-Bus policy file to enforce on a bus configured like Debian's system bus; without one the
        # private bus lets everyone do everything.
        self._bus_policy = bus_policy
        # NetworkManager.conf text read after the lab's own, so it wins (e.g. a [connectivity] check).
        self._extra_nm_config = extra_nm_config
        self._nm: subprocess.Popen[Any] | None = None
        self.profiles = list(PROFILE_NAMES[:uplinks])
        super().__init__(uplinks, configure_host=False, shared_internet=shared_internet)

    def _setup(self) -> None:
        nm_dir = self.workdir / "nm"
        self._run_dir = nm_dir / "run"
        self._varlib_dir = nm_dir / "varlib"
        self._empty_dir = nm_dir / "empty"
        self.keyfile_dir = nm_dir / "keyfiles"
        for d in (self._run_dir / "NetworkManager", self._run_dir / "dbus", self._varlib_dir,
                  self._empty_dir, self.keyfile_dir, nm_dir / "conf.d"):  # fmt: skip
            d.mkdir(parents=True)
        self._run_dir.chmod(0o755)
        (self._run_dir / "dbus").chmod(0o755)
        nm_dir.chmod(0o755)
        socket = self._run_dir / "dbus" / "system_bus_socket"
        self.bus_address = f"unix:path={socket}"
        self.env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus_address)
        self.nm_log = nm_dir / "NetworkManager.log"
        self.dispatcher_log = nm_dir / "nm-dispatcher.log"
        self._nm_config = nm_dir / "NetworkManager.conf"
        self._nm_config.write_text(_NM_CONFIG.format(keyfile_dir=self.keyfile_dir), encoding="utf-8")
        if self._extra_nm_config:
            (nm_dir / "conf.d" / "90-extra.conf").write_text(self._extra_nm_config, encoding="utf-8")
        bus_config = nm_dir / "bus.conf"
        if self._bus_policy is None:
            bus_text = _BUS_CONFIG.format(socket=escape(str(socket)))
        else:
            policy = escape(str(self._bus_policy.resolve(strict=True)))
            bus_text = _STRICT_BUS_CONFIG.format(socket=escape(str(socket)), policy=policy)
        bus_config.write_text(bus_text, encoding="utf-8")

        super()._setup()

        bus = self._spawn([_tool("dbus-daemon"), f"--config-file={bus_config}", "--nofork", "--nopidfile"],
                          nm_dir / "dbus-daemon.log")  # fmt: skip
        _wait_for("the private D-Bus daemon", lambda: self._alive(bus, "dbus-daemon") and socket.exists(), 10)
        if self._dispatcher_dir is not None:
            self._start_dispatcher(self._dispatcher_dir)
        self._launch_nm()
        for up, profile in zip(self.upstreams, self.profiles, strict=True):
            # The recipe's belt and braces: an externally created veth is otherwise left unmanaged.
            self.nmcli("device", "set", up.iface, "managed", "yes")
            self.nmcli(
                "connection", "add", "type", "ethernet", "ifname", up.iface, "con-name", profile,
                "ipv4.method", "manual", "ipv4.addresses", f"{up.address4}/{_PREFIXLEN4}",
                "ipv4.gateway", up.gateway4, "ipv4.dns", up.resolver,
                "ipv6.method", "manual", "ipv6.addresses", f"{up.address6}/64", "ipv6.gateway", up.gateway6,
            )  # fmt: skip
        self.wait_activated()

    def _default_env(self) -> Mapping[str, str] | None:
        # Without this, an nmcli or daemon started in the lab would talk to the machine's real NM.
        return self.env

    def _spawn(self, argv: Sequence[str], log_path: Path) -> subprocess.Popen[Any]:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [_tool("ip"), "netns", "exec", self.host_netns, *argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._procs.append(proc)
        return proc

    @staticmethod
    def _alive(proc: subprocess.Popen[Any], what: str) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        return True

    def _bus_name_owned(self, name: str) -> bool:
        proc = _run(
            [_tool("dbus-send"), "--system", "--print-reply", "--reply-timeout=2000",
             "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
             f"string:{name}"],
            check=False, timeout=5, env=self.env,
        )  # fmt: skip
        return proc.returncode == 0 and "boolean true" in proc.stdout

    def _start_dispatcher(self, dispatcher_dir: Path) -> None:
        if not dispatcher_dir.is_dir():
            raise FileNotFoundError(f"dispatcher_dir {dispatcher_dir} is not a directory")
        proc = self._spawn(
            [_tool("unshare"), "--mount", "--uts", "--propagation", "private",
             "sh", "-c", _DISPATCHER_WRAPPER,
             "sh", str(dispatcher_dir.resolve()), str(self._empty_dir), str(self._run_dir / "dbus"),
             _NM_DISPATCHER, "--persist", "--debug"],
            self.dispatcher_log,
        )  # fmt: skip
        _wait_for(
            "nm-dispatcher on the private bus",
            lambda: self._alive(proc, "nm-dispatcher") and self._bus_name_owned(_DISPATCHER_BUS_NAME),
            10,
        )

    def _launch_nm(self) -> None:
        if self._nm is not None and self._nm.poll() is None:
            raise RuntimeError("NetworkManager is already running")
        with self.nm_log.open("a") as log:
            log.write(f"===== nmfailover.lab.sandbox: starting NetworkManager at {time.time():.3f}\n")
        machine_resolv_conf = self._varlib_dir / "etc-resolv.conf"
        machine_resolv_conf.touch()
        nm = self._spawn(
            [_tool("unshare"), "--mount", "--uts", "--propagation", "private", "sh", "-c", _NM_WRAPPER,
             "sh", str(self._run_dir), str(self._varlib_dir), str(machine_resolv_conf),
             _tool("NetworkManager"), "--no-daemon", "--debug", f"--config={self._nm_config}",
             f"--config-dir={self.workdir / 'nm' / 'conf.d'}",
             f"--system-config-dir={self._empty_dir}",
             f"--intern-config={self._varlib_dir / 'NetworkManager-intern.conf'}",
             f"--state-file={self._varlib_dir / 'NetworkManager.state'}"],
            self.nm_log,
        )  # fmt: skip
        self._nm = nm
        _wait_for(
            "NetworkManager on the private bus",
            lambda: self._alive(nm, "NetworkManager") and self._bus_name_owned(_NM_BUS_NAME),
            15,
        )

    @property
    def nm_resolv_conf(self) -> Path:
        """Where NetworkManager writes its resolv.conf (its /run/NetworkManager/resolv.conf) when its DNS
        configuration has it write one; pass it to user_traffic() to resolve as NetworkManager says."""
        return self._run_dir / "NetworkManager" / "resolv.conf"

    def profiles_on_disk(self) -> dict[str, str]:
        """A digest per file of NetworkManager's keyfile directory: what "nothing written" is checked by."""
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(self.keyfile_dir.iterdir())
        }

    def nmcli(self, *args: str, check: bool = True) -> str:
        """nmcli in the host namespace on the private bus; returns stdout."""
        return self.host(_tool("nmcli"), *args, check=check, env=self.env).stdout

    def lookup(self, name: str, timeout: float = 30, resolv_conf: Path | None = None) -> tuple[bool, float]:
        """Resolve `name` as an application would (glibc's getaddrinfo, via `getent ahosts`) in the host
        namespace, with `resolv_conf` (default: NetworkManager's) over /etc/resolv.conf in a private mount
        namespace; (answered, seconds taken). No answer within `timeout` counts as a failure."""
        started = time.monotonic()
        try:
            proc = self.host(
                _tool("unshare"), "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" /etc/resolv.conf && exec getent ahosts "$2"',
                "sh", str(resolv_conf or self.nm_resolv_conf), name,
                check=False, timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, time.monotonic() - started
        return proc.returncode == 0 and bool(proc.stdout.strip()), time.monotonic() - started

    def stop_nm(self) -> None:
        if self._nm is None:
            return
        nm, self._nm = self._nm, None
        _stop([nm], grace=10)
        self._procs.remove(nm)

    def start_nm(self) -> None:
        """Start NetworkManager and wait until it owns its bus name and every uplink is activated."""
        self._launch_nm()
        self.wait_activated()

    def restart_nm(self) -> None:
        self.stop_nm()
        self.start_nm()

    def wait_activated(self, timeout: float = 20) -> None:
        """Wait until every profile is activated on its device and has its IPv4 and IPv6 default route."""
        expected = {up.iface: profile for up, profile in zip(self.upstreams, self.profiles, strict=True)}
        last = ""

        def done() -> bool:
            nonlocal last
            proc = self.host(_tool("nmcli"), "-t", "-f", "DEVICE,STATE,CONNECTION", "device",
                             check=False, env=self.env, timeout=10)  # fmt: skip
            last = proc.stdout + proc.stderr
            states = {}
            for line in proc.stdout.splitlines():
                device, state, connection = (line.split(":", 2) + ["", ""])[:3]
                states[device] = (state, connection)
            if any(states.get(iface) != ("connected", profile) for iface, profile in expected.items()):
                return False
            routes = {dev for family in (4, 6) for dev, _ in self.default_routes(family)}
            return set(expected) <= routes

        try:
            _wait_for("uplinks to be activated by NetworkManager", done, timeout, interval=0.1)
        except TimeoutError as e:
            raise TimeoutError(
                f"{e}; nmcli device says:\n{last}\nNM log tail:\n{self._nm_log_tail()}"
            ) from None

    def _nm_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.nm_log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


# -- a WireGuard peer behind every upstream (opt-in: add_wireguard_peer) ------------------------------------
#
#    host ns: TUNNEL_HOST/30 on a wireguard-go interface, endpoint WIREGUARD_ENDPOINT:51820
#    upstream ns X: wgp 198.51.100.(65+4i)/30, route to WIREGUARD_ENDPOINT via the peer, forwarding on
#       |  veth
#    peer ns: upX 198.51.100.(66+4i)/30, WIREGUARD_ENDPOINT on lo, routes back to each uplink's /26 via
#       its upstream; a wireguard-go interface with TUNNEL_PEER/30
#
# One peer address reachable through every uplink, as a VPN server on the internet is. blackhole() on an
# upstream drops everything it forwards, so it also cuts that uplink's path to the peer. wireguard-go, not
# the kernel module: CI's kernels have none, and wireguard-go's sticky source address is the harder case.

WIREGUARD_ENDPOINT: str = "198.51.100.80"
WIREGUARD_PORT: int = 51820
TUNNEL_HOST: str = "192.0.2.241"
TUNNEL_PEER: str = "192.0.2.242"
TUNNEL_HTTP_PORT: int = 8080  # the peer's HTTP server, reachable only through the tunnel
_TUNNEL_PREFIXLEN = 30
_WG_TOOLS = ("wireguard-go", "wg")


def wireguard_available() -> str | None:
    """None if add_wireguard_peer() can run here, else why not (a missing tool)."""
    for tool in _WG_TOOLS:
        try:
            _tool(tool)
        except FileNotFoundError:
            return f"{tool} is not installed (apt-get install wireguard-go wireguard-tools)"
    return None


@dataclass
class WireGuardPeer:
    """The tunnel between the host namespace and the peer (see add_wireguard_peer)."""

    lab: Topology
    netns: str  # the peer's namespace
    host_iface: str  # the tunnel's interface in the host namespace
    peer_iface: str
    host_public_key: str
    peer_public_key: str

    def wg(self, *args: str, check: bool = True) -> str:
        """`wg ARGS` on the host side (wireguard-go's socket names the interface, whatever the namespace)."""
        return self.lab.host(_tool("wg"), *args, check=check).stdout

    def ping(self, timeout: float = 1.0) -> bool:
        """One HTTP request through the tunnel from the host namespace to the peer's server, answered within
        `timeout` (the lab has no ping(8); a fresh TCP connection each time, so nothing is retried)."""
        proc = self.lab.host(
            _tool("curl"), "--silent", "--output", "/dev/null", "--max-time", f"{timeout:g}",
            f"http://{TUNNEL_PEER}:{TUNNEL_HTTP_PORT}/",
            check=False, timeout=timeout + 10,
        )  # fmt: skip
        return proc.returncode == 0

    def received_from(self) -> dict[str, int]:
        """Packets the peer namespace received on each upstream's link: which uplink the tunnel uses."""
        out = _run([_tool("ip"), "-n", self.netns, "-j", "-s", "link", "show"], timeout=10).stdout
        return {
            str(link["ifname"]): int(link["stats64"]["rx"]["packets"])
            for link in json.loads(out)
            if str(link["ifname"]).startswith("up")
        }


def _start_wireguard_go(lab: Topology, netns: str, iface: str, log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [_tool("ip"), "netns", "exec", netns, _tool("wireguard-go"), "-f", iface],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    lab._procs.append(proc)  # SIGTERM at close: wireguard-go then removes its socket
    _wait_for(
        f"wireguard-go {iface}",
        lambda: proc.poll() is None and Path(f"/var/run/wireguard/{iface}.sock").exists(),
        10,
    )


def add_wireguard_peer(lab: Topology) -> WireGuardPeer:
    """Add the WireGuard peer (see above) to `lab` and bring the tunnel up through the current default
    route; the lab's close() removes it. RuntimeError if wireguard-go or wg is missing."""
    reason = wireguard_available()
    if reason is not None:
        raise RuntimeError(reason)
    ip, wg = _tool("ip"), _tool("wg")
    token = lab.host_netns.removesuffix("-host").rsplit("-", 1)[-1]
    netns = f"{lab.host_netns.removesuffix('-host')}-wgpeer"
    # Unique per lab: wireguard-go's control sockets share one directory across all namespaces.
    host_iface, peer_iface = f"wgh{token}", f"wgp{token}"
    lab._add_netns(netns)
    _run([ip, "-n", netns, "address", "add", f"{WIREGUARD_ENDPOINT}/32", "dev", "lo"])
    for index, up in enumerate(lab.upstreams):
        base = 64 + 4 * index
        near, far = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
        _run([ip, "-n", up.netns, "link", "add", "wgp", "type", "veth", "peer", "name", f"up{up.name}",
              "netns", netns])  # fmt: skip
        lab._batch(up.netns, [f"address add {near}/30 dev wgp", "link set wgp up",
                              f"route add {WIREGUARD_ENDPOINT}/32 via {far}"])  # fmt: skip
        _run([ip, "netns", "exec", up.netns, _tool("sysctl"), "-qw", "net.ipv4.ip_forward=1"])
        lab._batch(netns, [f"address add {far}/30 dev up{up.name}", f"link set up{up.name} up",
                           f"route add {up.address4}/32 via {near}"])  # fmt: skip
    public = {}
    for side in ("host", "peer"):
        private = _run([wg, "genkey"]).stdout.strip()
        public[side] = _run([wg, "pubkey"], input=private + "\n").stdout.strip()
        key_file = lab.workdir / f"wg-{side}.key"
        key_file.touch(mode=0o600)
        key_file.write_text(private + "\n", encoding="utf-8")
    _start_wireguard_go(lab, netns, peer_iface, lab.workdir / "wireguard-go-peer.log")
    _run([ip, "netns", "exec", netns, wg, "set", peer_iface, "listen-port", str(WIREGUARD_PORT),
          "private-key", str(lab.workdir / "wg-peer.key"),
          "peer", public["host"], "allowed-ips", f"{TUNNEL_HOST}/32"])  # fmt: skip
    lab._batch(netns, [f"address add {TUNNEL_PEER}/{_TUNNEL_PREFIXLEN} dev {peer_iface}",
                       f"link set {peer_iface} up"])  # fmt: skip
    site = lab.workdir / "wgpeer-site"
    site.mkdir()
    with (lab.workdir / "wgpeer-http.log").open("ab") as out:
        server = [sys.executable, "-m", "http.server", "--bind", TUNNEL_PEER, "--directory", str(site)]
        argv = [ip, "netns", "exec", netns, *server, str(TUNNEL_HTTP_PORT)]
        lab._procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out))
    _start_wireguard_go(lab, lab.host_netns, host_iface, lab.workdir / "wireguard-go-host.log")
    _run([ip, "netns", "exec", lab.host_netns, wg, "set", host_iface,
          "private-key", str(lab.workdir / "wg-host.key"),
          "peer", public["peer"], "endpoint", f"{WIREGUARD_ENDPOINT}:{WIREGUARD_PORT}",
          "allowed-ips", f"{TUNNEL_PEER}/32"])  # fmt: skip
    lab._batch(lab.host_netns, [f"address add {TUNNEL_HOST}/{_TUNNEL_PREFIXLEN} dev {host_iface}",
                                f"link set {host_iface} up"])  # fmt: skip
    peer = WireGuardPeer(lab, netns, host_iface, peer_iface, public["host"], public["peer"])
    _wait_for("the WireGuard tunnel to pass traffic", lambda: peer.ping(0.5), 15, interval=0.1)
    return peer
