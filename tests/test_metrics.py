"""Prometheus metrics: the settings, what a scrape shows (read from the status at scrape time), the time
on each uplink, the HTTP server on loopback and the node_exporter textfile, and a real daemon scraped while
the lab fails over."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from nmfailover.config import ConfigError, ListenAddress, load_settings
from nmfailover.engine.state import SwitchEvent, UplinkView
from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from nmfailover.metrics import CarryingTime, Metrics
from nmfailover.status import Status, UplinkStatus
from tests import status_samples
from tests.daemon import running_daemon

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
UPLINKS = (
    UplinkView("primary", "Fiber", "eth0", "192.0.2.1", "", ()),
    UplinkView("backup", "Hotspot", "wwan0", "192.0.2.65", "", ()),
)


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def status(carrying: str | None = "primary", switches: int = 0) -> Status:
    def uplink(role: str, profile: str, device: str, latency: float | None, probed: int) -> UplinkStatus:
        return status_samples.uplink(
            role,
            profile,
            device=device,
            consecutive_successes=4,
            latency_ms=latency,
            rtt_p50_ms=latency,
            rtt_p95_ms=latency * 2 if latency is not None else None,
            carrying_traffic=carrying == role,
            probe_bytes=probed,
            failed_rounds=1,
        )

    return status_samples.status(
        uplink("primary", "Fiber", "eth0", 12.3, 4096),
        uplink("backup", "Hotspot", "wwan0", None, 512),
        last_switch_at=1_750_000_000.25 if switches else None,
        switches=switches,
        task_restarts={"probe-primary": 0, "nm-events": 2},
    )


def switch(action: str, from_role: str | None, to_role: str) -> SwitchEvent:
    new = next(u for u in UPLINKS if u.role == to_role)
    old = next((u for u in UPLINKS if u.role == from_role), None)
    return SwitchEvent(
        action=action,
        state=to_role.upper(),
        from_profile=old.profile if old else "",
        to_profile=new.profile,
        from_device=old.interface if old else "",
        device=new.interface,
        gateway4=new.gateway4,
        gateway6="",
        reason="why",
        at=0.0,
        uplinks=UPLINKS,
    )


# -- settings -----------------------------------------------------------------------------------------------


BASE = {"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "Fiber,Hotspot"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9469", ListenAddress("127.0.0.1", 9469)),
        (" 127.0.0.5:1 ", ListenAddress("127.0.0.5", 1)),
        ("[::1]:65535", ListenAddress("::1", 65535)),
        ("", None),
    ],
)
def test_listen_address_accepted(text: str, expected: ListenAddress | None) -> None:
    assert load_settings({**BASE, "NMFAILOVER_METRICS_LISTEN": text}).metrics_listen == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0.0.0.0:9469", "must be a loopback address"),
        ("[::]:9469", "must be a loopback address"),
        ("192.0.2.10:9469", "must be a loopback address"),
        ("localhost:9469", "must be an IP address and port"),
        ("::1:9469", "must be an IP address and port, IPv6 in brackets"),
        ("[127.0.0.1]:9469", "must be an IP address and port, IPv6 in brackets"),
        ("127.0.0.1", "must be ADDRESS:PORT"),
        ("127.0.0.1:0", "must end in a port from 1 to 65535"),
        ("127.0.0.1:65536", "must end in a port from 1 to 65535"),
        ("127.0.0.1:http", "must end in a port from 1 to 65535"),
    ],
)
def test_listen_address_refused_in_one_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "NMFAILOVER_METRICS_LISTEN": text})
    message = str(caught.value)
    assert message.startswith(f"NMFAILOVER_METRICS_LISTEN: {problem}") and "\n" not in message
    assert message.endswith(f"got {text!r}")


def test_textfile_settings(tmp_path: Path) -> None:
    path = tmp_path / "nmfailover.prom"
    settings = load_settings(
        {**BASE, "NMFAILOVER_METRICS_TEXTFILE": str(path), "NMFAILOVER_METRICS_TEXTFILE_INTERVAL": "5"}
    )
    assert (settings.metrics_textfile, settings.metrics_textfile_interval) == (path, 5.0)
    defaults = load_settings(BASE)
    assert (defaults.metrics_listen, defaults.metrics_textfile, defaults.metrics_textfile_interval) == (
        None,
        None,
        15.0,
    )
    for text, problem in (
        ("nmfailover.prom", "must be an absolute path"),
        (str(tmp_path / "nmfailover.txt"), "must end in .prom"),
        (str(tmp_path / "missing" / "nmfailover.prom"), "no such directory"),
    ):
        with pytest.raises(ConfigError, match=rf"^NMFAILOVER_METRICS_TEXTFILE: {problem}"):
            load_settings({**BASE, "NMFAILOVER_METRICS_TEXTFILE": text})
    (tmp_path / "dir.prom").mkdir()
    with pytest.raises(ConfigError, match=r"^NMFAILOVER_METRICS_TEXTFILE: is a directory"):
        load_settings({**BASE, "NMFAILOVER_METRICS_TEXTFILE": str(tmp_path / "dir.prom")})
    with pytest.raises(ConfigError, match=r"^NMFAILOVER_METRICS_TEXTFILE_INTERVAL: must be a number greater"):
        load_settings({**BASE, "NMFAILOVER_METRICS_TEXTFILE_INTERVAL": "0"})


# -- what a scrape shows ------------------------------------------------------------------------------------


async def test_a_scrape_reads_the_status_of_that_moment() -> None:
    current = status()
    metrics = Metrics(lambda: current)
    before = samples(metrics.exposition().decode())
    assert value(before, "nmfailover_uplink_carrying_traffic", uplink="primary") == 1
    assert value(before, "nmfailover_uplink_carrying_traffic", uplink="backup") == 0
    assert value(before, "nmfailover_uplink_health", uplink="primary", health="up") == 1
    assert value(before, "nmfailover_uplink_health", uplink="primary", health="down") == 0
    assert value(before, "nmfailover_probe_latency_seconds", uplink="primary") == pytest.approx(0.0123)
    assert value(before, "nmfailover_probe_latency_seconds", uplink="backup") is None  # no answer yet
    assert value(before, "nmfailover_probe_answer_time_seconds", uplink="primary", quantile="0.95") == 0.0246
    assert value(before, "nmfailover_probe_answer_time_seconds", uplink="backup", quantile="0.5") is None
    assert value(before, "nmfailover_probe_loss_ratio", uplink="backup") == 0
    assert value(before, "nmfailover_uplink_health", uplink="backup", health="degraded") == 0
    assert value(
        before,
        "nmfailover_uplink_info",
        uplink="backup",
        profile="Hotspot",
        uuid="uuid-Hotspot",
        device="wwan0",
    ) == (1)
    assert value(before, "nmfailover_task_restarts_total", task="nm-events") == 2
    assert value(before, "nmfailover_last_switch_timestamp_seconds") is None
    assert not any(name == "nmfailover_switches_total" for name, _ in before)
    assert value(before, "nmfailover_probe_bytes_total", uplink="backup") == 512
    assert value(before, "nmfailover_probe_failed_rounds_total", uplink="primary") == 1

    primary, backup = current.uplinks
    down = {"health": "down", "consecutive_failures": 3, "consecutive_successes": 0, "loss_pct": 62.5}
    current = current.model_copy(
        update={
            "uplinks": (
                primary.model_copy(update=down | {"failed_rounds": 7}),
                backup.model_copy(update={"health": "degraded", "failed_rounds": 0}),
            )
        }
    )
    after = samples(metrics.exposition().decode())
    assert value(after, "nmfailover_uplink_health", uplink="primary", health="down") == 1
    assert value(after, "nmfailover_uplink_health", uplink="primary", health="up") == 0
    assert value(after, "nmfailover_uplink_health", uplink="backup", health="degraded") == 1
    assert value(after, "nmfailover_probe_loss_ratio", uplink="primary") == 0.625
    assert value(after, "nmfailover_probe_consecutive_failures", uplink="primary") == 3
    # The status's latency of a failed round is the time to the failure: no round trip to graph.
    assert current.uplinks[0].latency_ms == 12.3
    assert value(after, "nmfailover_probe_latency_seconds", uplink="primary") is None
    assert value(after, "nmfailover_probe_failed_rounds_total", uplink="primary") == 7
    assert value(after, "nmfailover_probe_bytes_total", uplink="backup") == 512


async def test_switches_by_action_and_seconds_on_each_uplink() -> None:
    now = [100.0]
    current = status("primary", switches=0)
    metrics = Metrics(lambda: current, clock=lambda: now[0])

    def seconds() -> tuple[float | None, float | None]:
        found = samples(metrics.exposition().decode())
        name = "nmfailover_uplink_carrying_traffic_seconds_total"
        return value(found, name, uplink="primary"), value(found, name, uplink="backup")

    now[0] = 110.0
    assert seconds() == (10.0, 0.0)
    # The engine has switched, the event has not reached the listener yet: the primary still counts,
    # so that neither counter ever goes down.
    now[0] = 112.0
    current = status("backup", switches=1)
    assert seconds() == (12.0, 0.0)
    now[0] = 112.5
    await metrics.on_switch(switch("failover", "primary", "backup"))
    now[0] = 120.0
    assert seconds() == (12.5, 7.5)
    now[0] = 130.0
    current = status("primary", switches=2)
    await metrics.on_switch(switch("failback", "backup", "primary"))
    now[0] = 131.0
    assert seconds() == (13.5, 17.5)
    await metrics.on_switch(switch("failover", "primary", "backup"))
    found = samples(metrics.exposition().decode())
    assert (
        value(found, "nmfailover_switches_total", action="failover", **{"from": "primary", "to": "backup"})
        == 2
    )
    assert (
        value(found, "nmfailover_switches_total", action="failback", **{"from": "backup", "to": "primary"})
        == 1
    )
    assert value(found, "nmfailover_last_switch_timestamp_seconds") == 1_750_000_000.25


def test_time_before_the_first_switch_goes_to_the_uplink_found_carrying() -> None:
    clock = CarryingTime(start=0.0)
    assert clock.seconds(None, 0, 1.0) == {}  # not probed yet: nobody carries
    assert clock.seconds("backup", 0, 5.0) == {"backup": 5.0}
    # Started with no route at all: the start-up switch has no uplink to close.
    clock = CarryingTime(start=0.0)
    clock.switched(None, "primary", 3.0)
    assert clock.seconds("primary", 1, 4.0) == {"primary": 1.0}


async def test_switch_at_start_up_is_counted_from_none() -> None:
    metrics = Metrics(lambda: status())
    await metrics.on_switch(switch("initial", None, "primary"))
    found = samples(metrics.exposition().decode())
    assert (
        value(found, "nmfailover_switches_total", action="initial", **{"from": "none", "to": "primary"}) == 1
    )


# -- serving and writing ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message).strip()), format="{level} {message}")
    yield lines
    logger.remove(sink)


async def test_http_on_loopback_reads_the_status_on_the_loop_thread_and_stops(log_lines: list[str]) -> None:
    threads: list[threading.Thread] = []

    def read_status() -> Status:
        threads.append(threading.current_thread())
        return status()

    metrics = Metrics(read_status)
    port = _free_port()
    # Taken at first: the server keeps trying instead of failing (and taking the daemon with it).
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    server = asyncio.create_task(metrics.serve(ListenAddress("127.0.0.1", port)))
    await asyncio.sleep(0.3)
    assert not server.done()
    assert any(line.startswith(f"ERROR metrics: cannot listen on 127.0.0.1:{port}") for line in log_lines)
    blocker.close()
    url = f"http://127.0.0.1:{port}/metrics"

    async def scrape() -> tuple[int, str, str] | None:
        try:
            return await asyncio.to_thread(_get, url)
        except urllib.error.URLError:
            return None

    for _ in range(50):
        answer = await scrape()
        if answer is not None:
            break
        await asyncio.sleep(0.1)
    assert answer is not None, log_lines
    code, content_type, text = answer
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert value(samples(text), "nmfailover_uplink_carrying_traffic", uplink="primary") == 1
    assert f"INFO metrics: serving http://127.0.0.1:{port}/metrics" in log_lines
    # Scraped on the server's thread, read on the event loop's: never while the engine changes it.
    assert threads and set(threads) == {threading.main_thread()}

    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    assert await scrape() is None  # the port is closed, not merely unanswered
    with socket.socket() as again:
        # Released: with SO_REUSEADDR a bind fails only while something still listens on the port.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


async def test_textfile_is_replaced_whole_readable_and_rewritten_on_each_switch(
    tmp_path: Path, log_lines: list[str]
) -> None:
    current = status()
    metrics = Metrics(lambda: current)
    directory = tmp_path / "textfile"
    directory.mkdir()
    path = directory / "nmfailover.prom"
    old_umask = os.umask(0o077)  # the unit's
    try:
        writer = asyncio.create_task(metrics.write_textfile(path, interval=3600))
        await asyncio.to_thread(wait_for, path.exists, 5, "the textfile")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        first = path.stat().st_ino
        assert value(samples(path.read_text()), "nmfailover_uplink_carrying_traffic", uplink="primary") == 1

        current = status("backup", switches=1)
        await metrics.on_switch(switch("failover", "primary", "backup"))

        def rewritten() -> bool:
            found = samples(path.read_text())
            return (
                value(
                    found,
                    "nmfailover_switches_total",
                    action="failover",
                    **{"from": "primary", "to": "backup"},
                )
                == 1
            )

        # Long before the hour: the switch itself made it write.
        await asyncio.to_thread(wait_for, rewritten, 5, "the textfile after the switch")
        assert path.stat().st_ino != first, "rewritten in place instead of replaced"
        assert sorted(p.name for p in directory.iterdir()) == ["nmfailover.prom"]

        # A directory that went away: said once, retried, and fine again once it is back.
        path.unlink()
        directory.rmdir()
        for _ in range(3):
            await metrics.on_switch(switch("failback", "backup", "primary"))
            await asyncio.sleep(0.1)
        errors = [line for line in log_lines if line.startswith("ERROR")]
        assert errors == [f"ERROR metrics: cannot write {path}: No such file or directory"]
        directory.mkdir()
        await metrics.on_switch(switch("failover", "primary", "backup"))
        await asyncio.to_thread(wait_for, path.exists, 5, "the textfile again")
        assert f"INFO metrics: writing {path} again" in log_lines
        assert not writer.done()
        writer.cancel()
    finally:
        os.umask(old_umask)


# -- a real daemon ------------------------------------------------------------------------------------------


def test_metrics_follow_a_real_failover(nmlab: NMLab, tmp_path: Path) -> None:
    textfile = tmp_path / "nmfailover.prom"
    url = "http://127.0.0.1:9469/metrics"

    def scrape() -> Samples:
        # The daemon runs in the lab's host namespace, and so does its loopback.
        answer = nmlab.host("curl", "-sS", "--max-time", "5", url, check=False)
        assert answer.returncode == 0, answer.stderr
        return samples(answer.stdout)

    with running_daemon(
        nmlab, tmp_path / "daemon.log", metrics_listen="127.0.0.1:9469", metrics_textfile=str(textfile)
    ) as daemon:
        daemon.wait_log(r"ready: traffic on primary")
        daemon.wait_log(r"metrics: serving http://127\.0\.0\.1:9469/metrics")
        before = scrape()
        assert value(before, "nmfailover_uplink_carrying_traffic", uplink="primary") == 1
        assert value(before, "nmfailover_uplink_health", uplink="primary", health="up") == 1
        assert value(before, "nmfailover_uplink_health", uplink="backup", health="up") == 1
        assert value(before, "nmfailover_probe_latency_seconds", uplink="primary") is not None
        assert not any(name == "nmfailover_switches_total" for name, _ in before)
        assert value(before, "nmfailover_task_restarts_total", task="metrics-http") == 0
        assert (
            nmlab.host("curl", "-sS", "--max-time", "2", "http://127.0.0.1:9469/", check=False).returncode
            == 0
        )
        # Loopback only: the same port on the lab host's uplink address answers nothing.
        outside = nmlab.host(
            "curl", "-sS", "--max-time", "2", f"http://{nmlab.upstreams[0].address4}:9469/", check=False
        )
        assert outside.returncode != 0

        nmlab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=15)
        failover = {"action": "failover", "from": "primary", "to": "backup"}
        wait_for(
            lambda: value(scrape(), "nmfailover_switches_total", **failover) == 1,
            10,
            "the switch in the metrics",
        )
        after = scrape()
        assert value(after, "nmfailover_uplink_carrying_traffic", uplink="primary") == 0
        assert value(after, "nmfailover_uplink_carrying_traffic", uplink="backup") == 1
        assert value(after, "nmfailover_uplink_health", uplink="primary", health="down") == 1
        assert value(after, "nmfailover_uplink_health", uplink="primary", health="up") == 0
        assert (value(after, "nmfailover_probe_consecutive_failures", uplink="primary") or 0) >= 2
        assert value(after, "nmfailover_probe_latency_seconds", uplink="primary") is None
        assert value(after, "nmfailover_probe_loss_ratio", uplink="backup") == 0
        assert (value(after, "nmfailover_probe_latency_seconds", uplink="backup") or 0) > 0
        seconds = "nmfailover_uplink_carrying_traffic_seconds_total"
        assert (value(after, seconds, uplink="primary") or 0) > 0
        assert (value(after, seconds, uplink="backup") or 0) >= 0
        last = value(after, "nmfailover_last_switch_timestamp_seconds")
        assert last is not None and abs(last - time.time()) < 30

        # The textfile was written on the switch itself (its interval is 15 s).
        wait_for(
            lambda: value(samples(textfile.read_text()), "nmfailover_switches_total", **failover) == 1,
            5,
            "the textfile",
        )
        assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
        print(nmlab.host("curl", "-sS", "--max-time", "5", url).stdout)
