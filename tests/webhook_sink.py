"""A webhook receiver for tests, run inside a sandbox upstream namespace:
`python tests/webhook_sink.py OUT PORT [hang]`. Appends one line per POST to OUT: the peer address, a tab,
the body. With `hang` it accepts connections and never answers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


async def main(out: Path, port: int, hang: bool) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if hang:
                await asyncio.sleep(3600)
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            body = await asyncio.wait_for(reader.readexactly(length), 10)
            with out.open("a", encoding="utf-8") as f:
                f.write(f"{writer.get_extra_info('peername')[0]}\t{body.decode()}\n")
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    (out.parent / f"{out.name}.ready").touch()
    # Bounded, like every test server here: it never outlives a forgotten lab for long.
    await asyncio.wait_for(server.serve_forever(), 600)


if __name__ == "__main__":
    try:
        asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["hang"]))
    except TimeoutError:
        pass
