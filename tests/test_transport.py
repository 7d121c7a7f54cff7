"""BoundTransport as an httpx transport, and post_json (the webhook's way out), against loopback peers.

Binding itself (which device the packets leave through) is proven with two uplinks in
tests/test_probe_binding.py; here: the httpx <-> httpcore layering, which errors come out, what is sent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from nmfailover import __version__
from nmfailover.errors import NmfailoverError
from nmfailover.transport import BoundTransport, Link, LinkError, Reason, client, post_json

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs CAP_NET_RAW")

LO = Link("lo")


@dataclass
class Peer:
    """A loopback HTTP peer: what it received, per connection, and whether each connection has ended."""

    port: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)
    connections: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


Answer = Callable[[Peer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Peer]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Peer:
        peer = Peer()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer.connections += 1
            try:
                await answer(peer, reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
                peer.ended.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        peer.port = server.sockets[0].getsockname()[1]
        return peer

    yield start
    for server in servers:
        server.close()


async def read_request(peer: Peer, reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    peer.requests.append((head, await reader.readexactly(length)))


def answering(response: bytes, *, then_wait: bool = False) -> Answer:
    async def answer(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(peer, reader)
        writer.write(response)
        await writer.drain()
        if then_wait:  # keep the connection until the client ends it
            await reader.read()

    return answer


async def silent(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


# ---------------------------------------------------------------- BoundTransport under httpx.AsyncClient


@needs_root
async def test_request_and_streamed_response_cross_the_layers(
    serve: Callable[[Answer], Awaitable[Peer]],
) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nX-Answer: 42\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    peer = await serve(answering(response))
    deadline = asyncio.get_running_loop().time() + 2.0
    async with httpx.AsyncClient(transport=BoundTransport(LO, deadline)) as http:
        reply = await http.put(f"{peer.url}/a/b?c=d%20e", headers={"X-Ask": "yes"}, content=b"payload")
    assert (reply.status_code, reply.headers["x-answer"], reply.text) == (200, "42", "hello world")
    ((head, body),) = peer.requests
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "put /a/b?c=d%20e http/1.1"
    assert {f"host: 127.0.0.1:{peer.port}", "x-ask: yes", "content-length: 7"} <= set(lines)
    assert body == b"payload"


@needs_root
@pytest.mark.parametrize("response", [b"SPAM\r\n\r\n", b""], ids=["garbage", "closed"])
async def test_httpcore_protocol_errors_come_out_as_httpx_errors(
    serve: Callable[[Answer], Awaitable[Peer]], response: bytes
) -> None:
    peer = await serve(answering(response))
    deadline = asyncio.get_running_loop().time() + 2.0
    async with httpx.AsyncClient(transport=BoundTransport(LO, deadline)) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(peer.url)


@needs_root
@pytest.mark.parametrize(
    ("link", "url", "reason", "detail"),
    [
        (Link("nosuchdev0"), "http://127.0.0.1:1/", Reason.NO_DEVICE, "no device nosuchdev0"),
        (Link(None), "http://127.0.0.1:1/", Reason.NO_DEVICE, "no device"),
        (LO, "http://name.test/", Reason.DNS, "no nameservers for lo"),
        (LO, "http://127.0.0.1:1/", Reason.CONNECT, "127.0.0.1:1: connection refused"),
    ],
)
async def test_our_verdicts_pass_through_httpx_untouched(
    link: Link, url: str, reason: Reason, detail: str
) -> None:
    deadline = asyncio.get_running_loop().time() + 2.0
    async with httpx.AsyncClient(transport=BoundTransport(link, deadline)) as http:
        with pytest.raises(LinkError) as info:
            await http.get(url)
    assert (info.value.reason, str(info.value)) == (reason, detail)


@needs_root
async def test_closing_the_client_closes_pooled_connections(
    serve: Callable[[Answer], Awaitable[Peer]],
) -> None:
    peer = await serve(answering(b"HTTP/1.1 204 No Content\r\n\r\n", then_wait=True))
    deadline = asyncio.get_running_loop().time() + 2.0
    # A plain client asks for keep-alive: the connection stays in the pool after the response...
    async with httpx.AsyncClient(transport=BoundTransport(LO, deadline)) as http:
        assert (await http.get(peer.url)).status_code == 204
        await asyncio.sleep(0.05)
        assert not peer.ended.is_set()
    # ...until the transport is closed with the client.
    await asyncio.wait_for(peer.ended.wait(), 1.0)


@needs_root
async def test_our_client_asks_the_peer_to_close(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    peer = await serve(answering(b"HTTP/1.1 204 No Content\r\n\r\n", then_wait=True))
    deadline = asyncio.get_running_loop().time() + 2.0
    async with client(BoundTransport(LO, deadline)) as http:
        assert (await http.get(peer.url)).status_code == 204
        # Connection: close, so the connection ends with the response, not with the client.
        await asyncio.wait_for(peer.ended.wait(), 1.0)
    ((head, _),) = peer.requests
    assert b"\r\nconnection: close\r\n" in head.lower()


# ---------------------------------------------------------------- post_json


@needs_root
@pytest.mark.parametrize("status", [200, 204, 404, 503])
async def test_post_json_sends_json_and_returns_the_status(
    serve: Callable[[Answer], Awaitable[Peer]], status: int
) -> None:
    peer = await serve(answering(b"HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\n\r\nok" % status))
    body = b'{"event": "switch"}'
    assert await post_json(LO, f"{peer.url}/hook?x=1", body, 2.0) == status
    ((head, received),) = peer.requests
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "post /hook?x=1 http/1.1"
    assert {
        "content-type: application/json",
        f"user-agent: nmfailover/{__version__}",
        f"content-length: {len(body)}",
    } <= set(lines)
    assert received == body


@needs_root
async def test_post_json_does_not_wait_for_the_response_body(
    serve: Callable[[Answer], Awaitable[Peer]],
) -> None:
    # A receiver that sends its headers and then stalls must not hold the webhook until the timeout.
    peer = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nstart", then_wait=True))
    started = time.monotonic()
    assert await post_json(LO, peer.url, b"{}", 2.0) == 200
    assert time.monotonic() - started < 1.0
    await asyncio.wait_for(peer.ended.wait(), 1.0)  # and the connection is not left open


@needs_root
async def test_post_json_timeout_is_timeout_error(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    peer = await serve(silent)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await post_json(LO, peer.url, b"{}", 0.3)
    assert 0.3 <= time.monotonic() - started < 0.6
    await asyncio.wait_for(peer.ended.wait(), 1.0)


@needs_root
@pytest.mark.parametrize(
    ("link", "url", "reason", "detail"),
    [
        (LO, "http://127.0.0.1:1/", Reason.CONNECT, "127.0.0.1:1: connection refused"),
        (Link("nosuchdev0"), "http://127.0.0.1:1/", Reason.NO_DEVICE, "no device nosuchdev0"),
        (LO, "http://hooks.test/", Reason.DNS, "no nameservers for lo"),
    ],
)
async def test_post_json_failures_are_one_line(link: Link, url: str, reason: Reason, detail: str) -> None:
    with pytest.raises(LinkError) as info:
        await post_json(link, url, b"{}", 2.0)
    assert (info.value.reason, str(info.value)) == (reason, detail)
    assert isinstance(info.value, NmfailoverError)


@needs_root
async def test_post_json_broken_receiver_is_http(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    peer = await serve(answering(b"NOT HTTP AT ALL\r\n\r\n"))
    with pytest.raises(LinkError) as info:
        await post_json(LO, peer.url, b"{}", 2.0)
    assert info.value.reason is Reason.HTTP
    assert str(info.value).startswith(f"127.0.0.1:{peer.port}: ")
    assert "\n" not in str(info.value)


async def test_post_json_without_device_sends_nothing(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    peer = await serve(silent)
    with pytest.raises(LinkError) as info:
        await post_json(Link(None), peer.url, b"{}", 1.0)
    assert (info.value.reason, str(info.value)) == (Reason.NO_DEVICE, "no device")
    await asyncio.sleep(0.05)
    assert peer.connections == 0
