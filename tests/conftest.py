"""Shared fixtures: the network lab (see nmfailover/lab/sandbox.py), and which tests are lab tests."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

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


@pytest.fixture(scope="session")
def lab_machine() -> None:
    """This machine can build network labs. Every fixture or test that builds one (Topology, NMLab) asks for
    it, directly or through another fixture: that alone makes the test a lab test (see LAB_FIXTURES)."""
    _require_lab()


@pytest.fixture
def topology(lab_machine: None) -> Iterator[Topology]:
    with Topology(2) as lab:
        yield lab


@pytest.fixture
def nmlab(lab_machine: None) -> Iterator[NMLab]:
    with NMLab(2) as lab:
        yield lab


@pytest.fixture
def nmlab3(lab_machine: None) -> Iterator[NMLab]:
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


# The one place that says which tests are lab tests, so that `pytest -m "not lab"` is the quick loop (no
# namespace, no package built or installed, no Debian root): those whose fixtures, however deep, include
# one of these, and the slow ones (packages built, installed and linted in Debian roots).
LAB_FIXTURES = frozenset({"lab_machine"})
LAB_MARKERS = frozenset({"slow"})


def is_lab_test(item: pytest.Item) -> bool:
    return bool(
        LAB_FIXTURES & set(getattr(item, "fixturenames", ()))
        or any(item.get_closest_marker(name) for name in LAB_MARKERS)
        or item.get_closest_marker("lab")
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_lab_test(item) and item.get_closest_marker("lab") is None:
            item.add_marker(pytest.mark.lab)


class LabNotDeclared(Exception):
    """A test not marked lab tried to build a network lab."""


@contextmanager
def labs_refused(nodeid: str) -> Iterator[None]:
    """While a test that is not a lab test runs (its fixtures included), building a lab fails it: a test
    that forgot to ask for lab_machine is found the first time it runs, not by a slow `-m "not lab"`."""

    def refuse(self: Topology, *args: object, **kwargs: object) -> NoReturn:
        raise LabNotDeclared(
            f"{nodeid} builds a network lab but is no lab test: let it (or its fixture) ask for the "
            "lab_machine fixture (tests/conftest.py)"
        )

    with pytest.MonkeyPatch.context() as patch:
        for lab_class in (Topology, NMLab):
            patch.setattr(lab_class, "__init__", refuse)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    if is_lab_test(item):
        return (yield)
    with labs_refused(item.nodeid):
        return (yield)


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
