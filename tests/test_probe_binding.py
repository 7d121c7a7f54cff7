"""The proof that a probe leaves through the device it is bound to, not the default route.

Two simulated uplinks (nmfailover.lab.sandbox): wana carries the default route, wanb is the backup; the same
targets and names answer behind both, each upstream with its own resolver. The probe runs as a subprocess
inside the host namespace, where these devices exist.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nmfailover.lab.sandbox import Topology, Upstream

ROOT = Path(__file__).resolve().parent.parent
TARGET = "http://target1.test/generate_204"
TARGETS = (TARGET, "http://target2.test/success.txt 200 success", "http://target3.test/generate_204")

_SCRIPT = """
import asyncio, json, sys
from nmfailover.probe import Link, parse_target, probe_round
a = json.loads(sys.argv[1])
r = asyncio.run(probe_round(Link(a["iface"], tuple(a["ns"])), [parse_target(t) for t in a["targets"]],
                            a["timeout"], a["needed"]))
results = [{"reason": x.reason, "latency": x.latency, "detail": x.detail, "unanswered": x.unanswered}
           for x in r.results]
print(json.dumps({"ok": r.ok, "summary": r.summary, "results": results, "payload": r.payload}))
"""

_POST_SCRIPT = """
import asyncio, json, sys
from nmfailover.probe import Link, post_json
a = json.loads(sys.argv[1])
status = asyncio.run(post_json(Link(a["iface"], tuple(a["ns"])), a["url"], a["body"].encode(), a["timeout"]))
print(json.dumps({"status": status}))
"""


def run_probe(
    topology: Topology,
    iface: str,
    nameservers: Sequence[str],
    targets: Sequence[str] = (TARGET,),
    timeout: float = 2.0,
) -> dict[str, Any]:
    """probe_round inside the host namespace, needing every target; its RoundResult as JSON."""
    args = {"iface": iface, "ns": list(nameservers), "targets": list(targets), "timeout": timeout}
    args["needed"] = len(targets)
    return run_in_host(topology, _SCRIPT, args)


def run_in_host(topology: Topology, script: str, args: dict[str, Any]) -> dict[str, Any]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    proc = topology.host(sys.executable, "-c", script, json.dumps(args), env=env)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def reasons(result: dict[str, Any]) -> list[str]:
    return [r["reason"] for r in result["results"]]


def traffic(topology: Topology) -> dict[str, tuple[int, int, int, int]]:
    """Per uplink: tx and rx packets of the host's device, DNS queries and HTTP requests seen upstream."""
    return {
        up.iface: (*topology.iface_counters(up.iface), up.dns_queries(), up.http_requests())
        for up in topology.upstreams
    }


def upstream(topology: Topology, iface: str) -> Upstream:
    return next(up for up in topology.upstreams if up.iface == iface)


def test_lab_default_route_is_wana(topology: Topology) -> None:
    # Everything below relies on this: wanb is the road *not* taken by unbound traffic.
    assert topology.default_route() == "wana"


def test_probe_of_backup_leaves_through_backup_device(topology: Topology) -> None:
    b = upstream(topology, "wanb")
    before = traffic(topology)
    result = run_probe(topology, "wanb", [b.resolver])
    after = traffic(topology)
    assert result["ok"], result
    (rx_a, tx_a, dns_a, http_a), (rx_b, tx_b, dns_b, http_b) = (
        tuple(x - y for x, y in zip(after[i], before[i], strict=True)) for i in ("wana", "wanb")
    )
    # 2 DNS queries + a TCP exchange (SYN, ACK, request, FIN, ACKs) left through wanb and came back on it.
    assert tx_b >= 6 and rx_b >= 5, (tx_b, rx_b)
    # wana saw at most background noise (e.g. IPv6 neighbour discovery), far less than the probe's packets.
    assert tx_a <= 2 and rx_a <= 2 and tx_b - tx_a >= 4, (tx_a, rx_a, tx_b)
    assert (dns_a, http_a) == (0, 0)
    assert (dns_b, http_b) == (2, 1)  # A and AAAA, one GET
    method, host, path, _local, peer, _connection = b.http_log()[-1].split("\t")
    assert (method, host, path, peer) == ("GET", "target1.test", "/generate_204", b.address4)
    # Counted above UDP and TCP: two DNS queries and their answers, one GET and its 204.
    assert 250 <= result["payload"] <= 1500, result["payload"]
    assert {line.split("\t")[2] for line in b.dns_log()[-2:]} == {b.address4}


def test_failure_follows_the_probed_device_not_the_default_route(topology: Topology) -> None:
    a, b = upstream(topology, "wana"), upstream(topology, "wanb")
    b.blackhole()
    try:
        bad = run_probe(topology, "wanb", [b.resolver], TARGETS, timeout=1.0)
        by_address = run_probe(
            topology, "wanb", [b.resolver], ["http://203.0.113.10/generate_204"], timeout=1.0
        )
        good = run_probe(topology, "wana", [a.resolver], TARGETS, timeout=1.0)
    finally:
        b.heal()
    assert not bad["ok"] and set(reasons(bad)) == {"dns"}, bad
    assert bad["summary"] == "3/3 targets failed (dns)"
    assert reasons(by_address) == ["timeout"], by_address
    assert good["ok"], good
    # Silence, at whichever step: what a full queue looks like too (the engine then asks the link's counters).
    assert all(r["unanswered"] for r in bad["results"] + by_address["results"])
    assert not any(r["unanswered"] for r in good["results"])

    # And the other way round: the default route's upstream dies, the backup still answers.
    a.blackhole()
    try:
        bad = run_probe(topology, "wana", [a.resolver], ["http://203.0.113.10/generate_204"], timeout=1.0)
        good = run_probe(topology, "wanb", [b.resolver], TARGETS, timeout=1.0)
    finally:
        a.heal()
    assert reasons(bad) == ["timeout"], bad
    assert good["ok"], good


def test_other_uplinks_resolver_is_not_reachable(topology: Topology) -> None:
    a = upstream(topology, "wana")
    before = a.dns_queries()
    result = run_probe(topology, "wanb", [a.resolver], timeout=1.0)
    assert reasons(result) == ["dns"], result
    assert a.resolver in result["results"][0]["detail"]
    # Had the query followed the default route, upstream a would have answered it.
    assert a.dns_queries() == before


def test_a_refused_connection_is_an_answer_not_silence(topology: Topology) -> None:
    b = upstream(topology, "wanb")
    b.refuse()
    try:
        refused = run_probe(topology, "wanb", [b.resolver], timeout=1.0)
    finally:
        b.heal()
    assert reasons(refused) == ["connect"] and not refused["results"][0]["unanswered"], refused


def test_missing_device_is_no_device(topology: Topology) -> None:
    result = run_probe(topology, "wanz", ["203.0.113.53"], TARGETS)
    assert set(reasons(result)) == {"no-device"}, result


@pytest.mark.parametrize("iface", ["wana", "wanb"])
def test_healthy_round_is_fast(topology: Topology, iface: str) -> None:
    up = upstream(topology, iface)
    result = run_probe(topology, iface, [up.resolver], TARGETS)
    assert result["ok"] and result["summary"] == "3/3 targets answered", result
    assert max(r["latency"] for r in result["results"]) < 0.5, result


def test_webhook_post_leaves_through_the_given_device(topology: Topology) -> None:
    # post_json rides the probes' transport: a webhook sent via the backup goes out the backup, named by
    # the backup's resolver, while the primary holds the default route.
    b = upstream(topology, "wanb")
    before = traffic(topology)
    args = {"iface": "wanb", "ns": [b.resolver], "url": TARGET, "body": '{"event": "switch"}', "timeout": 2.0}
    result = run_in_host(topology, _POST_SCRIPT, args)
    after = traffic(topology)
    assert result == {"status": 204}, result
    (_, _, dns_a, http_a), (_, _, dns_b, http_b) = (
        tuple(x - y for x, y in zip(after[i], before[i], strict=True)) for i in ("wana", "wanb")
    )
    assert (dns_a, http_a, dns_b, http_b) == (0, 0, 2, 1)
    method, host, path, _local, peer, _connection = b.http_log()[-1].split("\t")
    assert (method, host, path, peer) == ("POST", "target1.test", "/generate_204", b.address4)
