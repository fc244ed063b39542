"""``accept-floor`` section of scripts/bench.py: what one new connection costs a trio server.

    python scripts/bench.py accept-floor [--seconds 12] [--rounds 4] [--concurrency 16]

Minimal servers, each a child process, answer wrk's ``Connection: close`` requests (one
request per connection: accept, read the request, send a fixed 64-byte response, close),
interleaved over `--rounds`; the figure is the server's CPU (utime + stime) per
connection. They bound from below what the outbound sidecar can spend on the connection
part of a new-connection request:

- ``trio_stream``: `trio.serve_tcp` (`SocketListener.accept`, a `SocketStream` per
  connection, `aclose_forcefully`), the idiomatic trio shape and the sidecar's until this
  pass (it then also detached the socket into a `LeanSocketStream`);
- ``acceptor``: the sidecar's accept loop (`sidecar.acceptor.accept_loop`, batches of
  `BATCH`, a `LeanSocketStream` per connection, a task per connection) with a handler
  that only reads, answers and `close()`s;
- ``raw_1`` / ``raw_16``: plain non-blocking sockets under trio, one task per connection,
  one accept per wait for readability or up to 16 in a row: the floor of trio's scheduler
  and the kernel's accept, read, write and close on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.benchlib.datapath import progress, run_wrk, wrk_slices  # noqa: E402
from tests.procs import free_port  # noqa: E402

Figures = dict[str, Any]
KINDS = ("trio_stream", "acceptor", "raw_1", "raw_16")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\nConnection: close\r\n\r\n" + b"x" * 64


async def _trio_stream(port: int) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(RESPONSE)
        await trio.aclose_forcefully(stream)

    await trio.serve_tcp(handler, port, host="127.0.0.1")


async def _acceptor(port: int) -> None:
    from meshgate.transport.socket_stream import LeanSocketStream
    from sidecar.acceptor import BATCH, Accepted, accept_loop

    async def handler(stream: Accepted) -> None:
        assert isinstance(stream, LeanSocketStream)
        await stream.receive_some(65536)
        await stream.send_all(RESPONSE)
        stream.close()

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    async with trio.open_nursery() as handlers:
        await accept_loop(listeners, handler, handlers, "floor", lean=True, batch=BATCH)


async def _raw(port: int, batch: int) -> None:
    listening = socket.create_server(("127.0.0.1", port), backlog=4096)
    listening.setblocking(False)  # noqa: FBT003 - the stdlib signature

    async def handler(sock: socket.socket) -> None:
        while True:
            try:
                sock.recv(65536)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
        sock.send(RESPONSE)
        sock.close()

    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listening)
            for _ in range(batch):
                try:
                    sock, _ = listening.accept()
                except BlockingIOError:
                    break
                sock.setblocking(False)  # noqa: FBT003
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(handler, sock)


def serve(kind: str, port: int) -> None:
    if kind == "trio_stream":
        trio.run(_trio_stream, port)
    elif kind == "acceptor":
        trio.run(_acceptor, port)
    else:
        trio.run(_raw, port, int(kind.split("_")[1]))


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"floor server exited {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"floor server on {port} not listening")


def bench_accept_floor(args: argparse.Namespace) -> Figures:
    rounds, slice_seconds = wrk_slices(args)
    figures: Figures = {
        "connections": args.concurrency,
        "seconds_per_server": slice_seconds * rounds,
        "load_average_before": os.getloadavg()[0],
    }
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    totals = {kind: [0, 0.0, 0] for kind in KINDS}
    try:
        for kind in KINDS:
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "scripts.benchlib.accept_floor", kind, str(port)],
                cwd=ROOT,
            )
            servers[kind] = (port, process)
            _wait_listening(port, process)
            run_wrk(port, 1, args.concurrency, close=True, pids=[])  # warm up
        for index in range(rounds):
            progress(f"accept-floor: round {index + 1}/{rounds}, {slice_seconds:g} s per server")
            for kind, (port, process) in servers.items():
                result = run_wrk(
                    port, slice_seconds, args.concurrency, close=True, pids=[process.pid]
                )
                total = totals[kind]
                total[0] += result.requests
                total[1] += result.cpu_seconds
                total[2] += result.errors
    finally:
        for _, process in servers.values():
            process.kill()
            process.wait(10)
    figures["results"] = {
        kind: {
            "requests_per_second": round(requests / (slice_seconds * rounds)),
            "cpu_us_per_connection": round(cpu / max(1, requests) * 1e6, 1),
            "errors": errors,
        }
        for kind, (requests, cpu, errors) in totals.items()
    }
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


SECTIONS = {"accept-floor": bench_accept_floor}

if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
