"""Time sequential HTTP/1.1 requests on one kept-alive client connection (real sockets).

For the tests that guard against ~40 ms stalls (Nagle's algorithm meeting delayed ACKs):
those show only from the second request on a connection, so every request here goes over
the same socket, one after another, and each is timed from its send to its last body byte.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Timed:
    status: int
    body: bytes
    ms: float


def sequential(port: int, request: bytes, count: int) -> list[Timed]:
    """Send `request` `count` times on one connection to 127.0.0.1:`port`; each answer
    must carry a Content-Length (the apps tested here all do)."""
    answers: list[Timed] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as curl does
        reader = sock.makefile("rb")
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(request)
            status_line = reader.readline()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = reader.read(length)
            elapsed = (time.perf_counter() - start) * 1000
            answers.append(Timed(int(status_line.split()[1]), body, elapsed))
    return answers
