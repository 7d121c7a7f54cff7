"""The lab's fault classes and its user-traffic client: each does what it says, seen from the host namespace
of a lab with two uplinks (the faults are on the primary; the backup shows what they must not touch)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from nmfailover.lab.sandbox import Topology, Upstream
from nmfailover.lab.upstream import LOGIN_BODY, USER_SITES, dns_reply
from nmfailover.lab.usertraffic import SITES, UserAttempt, first_after, parse_attempts
from tests.test_sandbox import dns_query, http_get

# Sends `count` DNS queries to the resolver through one device at once, then collects the answers for a
# second: how many came back. The resolver's log says how many arrived.
_DNS_BURST = r"""
import json, socket, sys, time
import dns.message
server, device, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE: room for every answer of the burst
for _ in range(count):
    sock.sendto(dns.message.make_query("target1.test", "A").to_wire(), (server, 53))
    time.sleep(0.001)
sock.settimeout(0.2)
answers, deadline = 0, time.monotonic() + 1.0
while time.monotonic() < deadline:
    try:
        sock.recv(4096)
        answers += 1
    except TimeoutError:
        pass
print(json.dumps({"answers": answers}))
"""

# One connection, one request, then waits for the answer: what came back, and when.
_HANGING_REQUEST = r"""
import json, socket, sys, time
sock = socket.create_connection((sys.argv[1], 80), timeout=2)
start = time.monotonic()
sock.sendall(b"GET /generate_204 HTTP/1.1\r\nHost: target1.test\r\n\r\n")
print(json.dumps({"connected": True}), flush=True)
sock.settimeout(float(sys.argv[2]))
try:
    data = sock.recv(4096)
    out = {"result": "closed" if data == b"" else "answer", "data": data.decode("latin-1")}
except TimeoutError:
    out = {"result": "timeout"}
except ConnectionResetError:
    out = {"result": "reset"}
out["elapsed"] = time.monotonic() - start
print(json.dumps(out), flush=True)
"""

# One HTTP/1.1 client kept across requests (it reconnects only if the server closed the connection): a path
# per line on stdin, a JSON line per answer on stdout, saying whether the connection was the one before.
_KEEPALIVE = r"""
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=3)
for line in sys.stdin:
    before = conn.sock
    conn.request("GET", line.strip(), headers={"Host": "target1.test"})
    resp = conn.getresponse()
    body = resp.read().decode()
    reused = before is not None and conn.sock is before
    print(json.dumps({"status": resp.status, "location": resp.getheader("Location"), "body": body,
                      "reused": reused}), flush=True)
"""

BURST = 300


def _dns_burst(lab: Topology, up: Upstream) -> tuple[int, int]:
    """(queries that reached the resolver, answers that came back) of BURST queries sent at once."""
    arrived = up.dns_queries()
    out = lab.host(sys.executable, "-c", _DNS_BURST, up.resolver, up.iface, str(BURST), timeout=30).stdout
    time.sleep(0.2)  # the last log lines
    return up.dns_queries() - arrived, int(json.loads(out)["answers"])


def test_one_way_loss_drops_only_that_direction(topology: Topology) -> None:
    a = topology.upstreams[0]
    # Half of each burst lost: the binomial's spread over 300 packets is under 9, so 100..200 is 5 sigma.
    a.lossy(50, "to_internet")
    arrived, answered = _dns_burst(topology, a)
    assert 100 <= arrived <= 200
    assert answered == arrived  # nothing lost on the way back
    a.lossy(50, "from_internet")
    arrived, answered = _dns_burst(topology, a)
    assert arrived == BURST  # nothing lost on the way out
    assert 100 <= answered <= 200
    a.lossy(50)  # each way on its own: a quarter of the answers come back
    arrived, answered = _dns_burst(topology, a)
    assert 100 <= arrived <= 200
    assert 35 <= answered <= 115 and answered < arrived
    a.heal()
    assert _dns_burst(topology, a) == (BURST, BURST)


def test_hang_accepts_reads_and_never_answers_until_healed(topology: Topology) -> None:
    a = topology.upstreams[0]
    a.hang()
    requests = a.http_requests()
    proc = topology.popen_host(
        [sys.executable, "-c", _HANGING_REQUEST, "203.0.113.10", "15"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert json.loads(proc.stdout.readline()) == {"connected": True}  # the handshake was answered
        time.sleep(2.5)
        assert proc.poll() is None  # no answer, not even a reset
        assert a.http_requests() == requests + 1  # the request was read
        assert dns_query(topology, "target1.test", a.resolver, "wana")["rcode"] == "NOERROR"
        a.heal()
        result = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    # The hung request is dropped without an answer once the fault ends; a new one is answered.
    assert result["result"] in ("closed", "reset"), result
    assert 2.5 <= result["elapsed"] < 5
    assert http_get(topology, "203.0.113.10")["result"] == 204


def test_portal_answers_every_request_also_on_an_open_connection(topology: Topology) -> None:
    a = topology.upstreams[0]
    proc = topology.popen_host(
        [sys.executable, "-c", _KEEPALIVE, "203.0.113.10"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def get(path: str) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(path + "\n")
        proc.stdin.flush()
        answer: dict[str, Any] = json.loads(proc.stdout.readline())
        return answer

    try:
        assert get("/generate_204")["status"] == 204
        a.portal("redirect")
        redirect = get("/generate_204")
        assert (redirect["status"], redirect["location"]) == (302, "http://portal.example/")
        assert get("/any/page")["status"] == 302  # every path, not only the probes'
        a.portal("login")
        login = get("/success.txt")
        assert (login["status"], login["body"]) == (200, LOGIN_BODY.decode())
        a.heal()
        ok = get("/success.txt")
        assert (ok["status"], ok["body"]) == (200, "success\n")
        # Whether the server kept the connection open is its business; if it did, the modes reached it.
        print(f"\nconnection kept by the server across requests: {ok['reused']}")
    finally:
        proc.kill()
        proc.wait()
    assert dns_query(topology, "target1.test", a.resolver, "wana")["rcode"] == "NOERROR"


def test_servfail_and_silent_resolver(topology: Topology) -> None:
    a, b = topology.upstreams
    a.break_dns("servfail")
    queries = a.dns_queries()
    assert dns_query(topology, "target1.test", a.resolver, "wana") == {"rcode": "SERVFAIL", "answers": []}
    assert a.dns_queries() == queries + 1  # answered, not dropped
    assert http_get(topology, "203.0.113.10")["result"] == 204  # the targets by address still answer
    a.break_dns("silent")
    assert dns_query(topology, "target1.test", a.resolver, "wana")["rcode"] == "timeout"
    assert dns_query(topology, "target1.test", b.resolver, "wanb")["rcode"] == "NOERROR"
    a.heal()
    assert dns_query(topology, "target1.test", a.resolver, "wana")["rcode"] == "NOERROR"


def test_each_fault_replaces_the_one_before_and_heal_undoes_any(topology: Topology) -> None:
    a = topology.upstreams[0]
    a.portal("redirect")
    a.blackhole()
    assert http_get(topology, "203.0.113.10", timeout=1)["result"] == "TimeoutError"
    a.portal("redirect")  # the blackhole is gone with it
    assert http_get(topology, "203.0.113.10")["result"] == 302
    a.break_dns("servfail")
    assert http_get(topology, "203.0.113.10")["result"] == 204
    a.hang()
    assert dns_query(topology, "target1.test", a.resolver, "wana")["rcode"] == "NOERROR"
    a.cut_cable()
    time.sleep(0.5)
    assert "NO-CARRIER" in topology.host("ip", "link", "show", "dev", "wana").stdout
    a.refuse()  # the cable is back in
    deadline = time.monotonic() + 3
    while http_get(topology, "203.0.113.10", timeout=1)["result"] != "ConnectionRefusedError":
        assert time.monotonic() < deadline, "the refusal never showed"
        time.sleep(0.1)
    a.hang()
    a.heal()
    assert http_get(topology, "203.0.113.10")["result"] == 204
    assert dns_query(topology, "target1.test", a.resolver, "wana")["rcode"] == "NOERROR"


def test_fault_arguments_are_checked_before_anything_changes(tmp_path: Path) -> None:
    up = Upstream("x", "no-such-netns", "wanx", "", "", "", "", "203.0.113.99", tmp_path)
    with pytest.raises(ValueError, match="direction"):
        up.lossy(60, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percent"):
        up.lossy(101, "to_internet")
    with pytest.raises(ValueError, match="kind"):
        up.portal("teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        up.break_dns("nxdomain")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def _ask(name: str, rdtype: str, servfail: bool = False) -> dns.message.Message:
    reply = dns_reply(dns.message.make_query(name, rdtype).to_wire(), servfail=servfail)
    assert reply is not None
    return dns.message.from_wire(reply[0])


def test_user_sites_resolve_to_ipv4_documentation_addresses_only() -> None:
    assert {site.rstrip(".") for site in USER_SITES} == set(SITES)
    for site, address in USER_SITES.items():
        assert address.startswith("203.0.113.")
        assert [rd.to_text() for rr in _ask(site, "A").answer for rd in rr] == [address]
        aaaa = _ask(site, "AAAA")
        assert (aaaa.rcode(), aaaa.answer) == (dns.rcode.NOERROR, [])  # NODATA: no IPv6 to prefer
    failed = _ask("site1.test", "A", servfail=True)
    assert (failed.rcode(), failed.answer) == (dns.rcode.SERVFAIL, [])


# -- the user-traffic client ------------------------------------------------------------------------------


def _attempt(seq: int, started: float, outcome: str) -> UserAttempt:
    ok = outcome == "ok"
    return UserAttempt(seq, "site1.test", started, started, outcome, ok, 0.01 if ok else None, "", None, None,
                       None, 200 if ok else None, 0.02 if ok else None)  # fmt: skip


def test_parse_attempts_and_first_after() -> None:
    attempts = [_attempt(0, 10.0, "ok"), _attempt(1, 10.3, "lookup-failed"), _attempt(2, 10.6, "ok")]
    lines = [json.dumps({"kind": "ready"})]
    lines += [json.dumps({"kind": "attempt", **a.__dict__}) for a in reversed(attempts)]
    lines.append('{"kind": "attempt", "seq": 3, "na')  # being written
    assert parse_attempts(lines) == attempts
    assert first_after(attempts, 10.1) == attempts[2]
    assert first_after(attempts, 10.1, lambda a: not a.ok) == attempts[1]
    assert first_after(attempts, 10.7) is None
    assert attempts[0].ended == pytest.approx(10.02)
    assert attempts[1].ended is None and attempts[1].lookup_ended is None


def test_user_traffic_fails_during_a_blackhole_and_works_after_heal(topology: Topology) -> None:
    a = topology.upstreams[0]
    real_resolv = hashlib.sha256(Path("/etc/resolv.conf").read_bytes()).hexdigest()
    with topology.user_traffic(0.3, seconds=30) as traffic:
        time.sleep(1.5)
        cut = time.time()
        a.blackhole()
        time.sleep(3)
        healed = time.time()
        a.heal()
        time.sleep(2)
    attempts = traffic.attempts()
    before = [t for t in attempts if t.started < cut]
    during = [t for t in attempts if cut + 0.1 <= t.started < healed]
    after = [t for t in attempts if t.started >= healed + 0.1]
    assert len(before) >= 4 and all(t.ok for t in before), before
    assert {t.local_address for t in before} == {"192.0.2.2"}  # through the default route: the primary
    assert {t.address for t in before} <= {"203.0.113.10", "203.0.113.11", "203.0.113.12"}
    assert len(during) >= 8 and not any(t.ok for t in during), during
    assert len(after) >= 5 and all(t.ok for t in after), after
    first = first_after(attempts, healed)
    assert first is not None and first.ended is not None and first.ended - healed < 1
    # The names went to the primary's resolver, as the lab's resolv.conf says, and the machine's file is
    # what it was (no lab resolver in it; the lab could not reach the machine's resolver anyway).
    assert any(line.startswith("site") and line.endswith("192.0.2.2") for line in a.dns_log())
    assert hashlib.sha256(Path("/etc/resolv.conf").read_bytes()).hexdigest() == real_resolv
    assert not traffic.running


def test_user_traffic_follows_a_resolv_conf_replaced_by_rename(topology: Topology, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 203.0.113.53\n")
    with topology.user_traffic(0.2, seconds=30, resolv_conf=resolv, lookup_only=True) as traffic:
        time.sleep(1)
        # As NetworkManager writes it: a new file renamed over the old. The gateway runs no resolver, so
        # its "port unreachable" fails each lookup at once.
        (tmp_path / "new").write_text("nameserver 192.0.2.1\n")
        (tmp_path / "new").replace(resolv)
        moved = time.time()
        time.sleep(1.5)
    attempts = traffic.attempts()
    assert attempts and all(t.ok for t in attempts if t.started < moved - 0.1)
    late = [t for t in attempts if t.started > moved + 0.1 and t.outcome != "unfinished"]
    assert late and all(t.outcome == "lookup-failed" for t in late), late
    assert not any(t.local_address for t in attempts)  # lookup only: no connection opened


def test_user_traffic_client_refuses_a_resolv_conf_it_was_not_given(
    topology: Topology, tmp_path: Path
) -> None:
    # Run without the lab's mount namespace: /etc/resolv.conf is the machine's, and the client must stop.
    out = tmp_path / "attempts.jsonl"
    proc = topology.host(
        sys.executable, "-m", "nmfailover.lab.usertraffic", "--out", str(out),
        "--expect-resolv", str(topology.resolv_conf()), "--seconds", "2",
        check=False, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "refusing" in proc.stderr
    assert not out.exists()
