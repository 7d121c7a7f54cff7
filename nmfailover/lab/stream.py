"""A paced byte stream over one long TCP or Multipath TCP connection, for the lab's MPTCP proof (issue 18).

`server` (in the shared internet's namespace) accepts connections and sends each one a stream whose n-th byte
is n % 251, at a fixed rate, until the client closes; `client` (in the host namespace) connects, checks every
byte it receives against that pattern (a lost, repeated or reordered byte breaks it at once), and writes
one JSON line for every pause in the stream longer than --gap (one still under way at the end too), then a
last line with its totals. Times are
the wall clock (time.time()), the one clock the namespaces share with the test that reads them.

    python -m nmfailover.lab.stream server --port 5201 --state-dir DIR [--tcp]
    python -m nmfailover.lab.stream client --address 203.0.113.100 --port 5201 --out FILE [--tcp] [--device D]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

PATTERN_MODULUS = 251  # a prime: a shift by any chunk size shows
CHUNK = 1024
RATE = 200_000  # bytes a second the server sends each connection
GAP = 0.05  # seconds: a pause shorter than this is the pacing, not a stall


def pattern(offset: int, size: int) -> bytes:
    """The stream's bytes from `offset` on."""
    start = offset % PATTERN_MODULUS
    period = bytes(range(PATTERN_MODULUS))
    repeated = period[start:] + period * (size // PATTERN_MODULUS + 1)
    return repeated[:size]


def _socket(family: int, tcp: bool) -> socket.socket:
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP if tcp else socket.IPPROTO_MPTCP)


def _serve_one(conn: socket.socket, rate: int) -> None:
    sent, started = 0, time.monotonic()
    with conn:
        try:
            while True:
                due = int((time.monotonic() - started) * rate)
                if sent < due:
                    block = pattern(sent, min(CHUNK, due - sent))
                    conn.sendall(block)
                    sent += len(block)
                else:
                    time.sleep(CHUNK / rate / 4)
        except OSError:
            return


def serve(port: int, state_dir: Path, tcp: bool, rate: int) -> None:
    listeners = []
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = _socket(family, tcp)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(16)
        listeners.append(sock)

    def accept(listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_serve_one, args=(conn, rate), daemon=True).start()

    for listener in listeners[1:]:
        threading.Thread(target=accept, args=(listener,), daemon=True).start()
    (state_dir / "ready").write_text("ready\n", encoding="utf-8")
    accept(listeners[0])


@dataclass
class _Received:
    total: int = 0
    broken_at: int | None = None  # the offset of the first byte that is not the pattern's


def run_client(address: str, port: int, out: Path, tcp: bool, gap: float, device: str | None = None) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    received = _Received()
    error = ""
    with out.open("w", encoding="utf-8") as log, _socket(family, tcp) as sock:
        sock.settimeout(10)
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.connect((address, port))
        local = sock.getsockname()[0]
        log.write(json.dumps({"connected": time.time(), "local": local}) + "\n")
        log.flush()
        sock.settimeout(0.2)
        last = time.time()
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                error = str(exc)
                break
            if not data:
                error = "closed by the server"
                break
            now = time.time()
            if now - last > gap:
                log.write(json.dumps({"gap_start": last, "gap": now - last}) + "\n")
                log.flush()
            last = now
            if received.broken_at is None and data != pattern(received.total, len(data)):
                received.broken_at = received.total
            received.total += len(data)
        if time.time() - last > gap:  # a pause still under way at the end is one too
            log.write(json.dumps({"gap_start": last, "gap": time.time() - last}) + "\n")
        log.write(
            json.dumps(
                {"bytes": received.total, "broken_at": received.broken_at, "error": error, "end": time.time()}
            )
            + "\n"
        )
    return 0 if received.broken_at is None and not error else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nmfailover.lab.stream")
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--port", type=int, default=5201)
    parser.add_argument("--tcp", action="store_true", help="plain TCP instead of Multipath TCP")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument("--address")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--gap", type=float, default=GAP)
    parser.add_argument("--device", help="leave through this device, whatever the default route")
    args = parser.parse_args(argv)
    if args.role == "server":
        if args.state_dir is None:
            parser.error("server needs --state-dir")
        serve(args.port, args.state_dir, args.tcp, args.rate)
        return 0
    if args.address is None or args.out is None:
        parser.error("client needs --address and --out")
    return run_client(args.address, args.port, args.out, args.tcp, args.gap, args.device)


if __name__ == "__main__":
    sys.exit(main())
