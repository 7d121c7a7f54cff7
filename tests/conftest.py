"""Shared fixtures: the network lab (see nmfailover/lab/sandbox.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType

import pytest

from nmfailover import transport as transport_module
from nmfailover.lab.sandbox import NMLab, Topology, cleanup_leftovers, lab_available


def _require_lab() -> None:
    reason = lab_available()
    if reason is None:
        return
    # CI runs as root on a machine with everything installed: a skip there would hide a broken setup.
    if os.environ.get("CI") == "true":
        pytest.fail(f"network lab unavailable in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def topology() -> Iterator[Topology]:
    _require_lab()
    with Topology(2) as lab:
        yield lab


@pytest.fixture
def nmlab() -> Iterator[NMLab]:
    _require_lab()
    with NMLab(2) as lab:
        yield lab


@pytest.fixture
def nmlab3() -> Iterator[NMLab]:
    _require_lab()
    with NMLab(3) as lab:
        yield lab


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A CI timeout sends SIGTERM; by default that kills Python without running fixture teardown or
    # atexit, stranding namespaces, NetworkManager and servers. As KeyboardInterrupt, pytest tears down.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


LAB_FIXTURES = frozenset({"topology", "nmlab", "nmlab3"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that builds namespaces is a lab test by its fixtures, whether or not its module says so.
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


@pytest.hookimpl(trylast=True)  # after pytest's own session teardown of fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Session-wide guard: whatever a test leaked (a lab never closed, a crashed teardown), this run's
    # namespaces, their processes and temp dirs go now.
    if lab_available() is None:
        cleanup_leftovers(os.getpid())


# Starts a DNS responder on a loopback address; every responder of a test shares one free port, which the
# transport is pointed at (its DNS_PORT).
LoopbackDns = Callable[[str, asyncio.DatagramProtocol], Awaitable[None]]


@pytest.fixture
async def loopback_dns(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LoopbackDns]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    port = 0

    async def start(address: str, responder: asyncio.DatagramProtocol) -> None:
        nonlocal port
        transport, _ = await loop.create_datagram_endpoint(lambda: responder, local_addr=(address, port))
        port = transport.get_extra_info("sockname")[1]
        monkeypatch.setattr(transport_module, "DNS_PORT", port)
        transports.append(transport)

    yield start
    for transport in transports:
        transport.close()
