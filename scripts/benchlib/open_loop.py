"""An open-loop HTTP/1.1 load generator: requests at a fixed rate, latency counted from
each request's scheduled send time, so a stall cannot hide behind the requests it delayed.

A closed-loop client (wrk, or one request after another) sends the next request only when
the previous answer is in: while a server stalls, the client stops asking, and the stall
shows as one slow request instead of all those that users would have sent meanwhile
("coordinated omission"). Here request i is due at ``start + i / rate`` whatever happened
before; it goes out on the first idle kept-alive connection, and its latency runs from the
due time to its last response byte, so time it spent queued behind a slow answer counts.
wrk2 does the same; Debian does not package it.

One process, one epoll loop, non-blocking plain-HTTP sockets with `TCP_NODELAY`, responses
framed by the CA load generator's `ResponseReader` (Content-Length only, no pipelining).
epoll waits in whole milliseconds, so the loop wakes a little early and sleeps the rest
(sub-millisecond `time.sleep`): sends leave within ~0.1 ms of their due time when the
machine is not saturated; `send_lag_ms` reports how late they actually were. A response
that lands during such a short sleep is read up to that much later: the same for every
target, so differences between targets in one run are what to read.
"""

from __future__ import annotations

import collections
import math
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from scripts.benchlib.ca_load import ResponseError, ResponseReader

__all__ = ["OpenLoopResult", "percentile", "run_open_loop", "summary"]

_READ_SIZE: Final = 65536
_EARLY: Final = 0.0005  # wake this much before a due time; epoll rounds its timeout up to 1 ms
_DRAIN_SECONDS: Final = 10.0


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `ordered` (0 < fraction <= 1); nan when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of `latencies_ms`, rounded to µs."""
    ordered = sorted(latencies_ms)
    out = {
        name: round(percentile(ordered, q), 3)
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
    }
    out["max"] = round(ordered[-1], 3) if ordered else math.nan
    return out


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    scheduled: int
    latencies_ms: list[float] = field(default_factory=list)  # completed 2xx, from due time
    send_lags_ms: list[float] = field(default_factory=list)  # actual send - due time
    failed: int = 0  # non-2xx, a broken or refused connection, a response not framed
    unfinished: int = 0  # not answered within the drain time after the last due time
    client_cpu_seconds: float = 0.0

    def figures(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "scheduled": self.scheduled,
            "ok": len(self.latencies_ms),
            "failed": self.failed,
            "unfinished": self.unfinished,
            "latency_ms": summary(self.latencies_ms),
            "send_lag_ms": summary(self.send_lags_ms),
            "client_cpu_us_per_request": round(
                self.client_cpu_seconds / max(1, self.scheduled) * 1e6
            ),
        }


class _Connection:
    __slots__ = ("due", "reader", "sock")

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)  # noqa: FBT003 - the stdlib signature
        self.reader = ResponseReader()
        self.due = 0.0  # the due time of the request in flight


def run_open_loop(
    port: int,
    rate: float,
    seconds: float,
    *,
    connections: int = 16,
    request: bytes = b"GET / HTTP/1.1\r\nhost: catalog\r\n\r\n",
    host: str = "127.0.0.1",
) -> OpenLoopResult:
    """`rate` requests a second for `seconds` to `host`:`port` over up to `connections`
    kept-alive connections (a broken one is replaced); then wait for the answers."""
    scheduled = int(rate * seconds)
    result = OpenLoopResult(rate, seconds, scheduled)
    address = (host, port)
    poller = select.epoll()
    by_fd: dict[int, _Connection] = {}
    idle: collections.deque[_Connection] = collections.deque()

    def add() -> None:
        conn = _Connection(address)
        by_fd[conn.sock.fileno()] = conn
        poller.register(conn.sock.fileno(), select.EPOLLIN)
        idle.append(conn)

    def drop(conn: _Connection) -> None:
        fd = conn.sock.fileno()
        poller.unregister(fd)
        del by_fd[fd]
        conn.sock.close()

    for _ in range(connections):
        add()
    cpu0 = time.process_time()
    start = time.perf_counter() + 0.05
    interval = 1.0 / rate
    deadline = start + seconds + _DRAIN_SECONDS
    sent = 0
    busy = 0
    try:
        while sent < scheduled or busy:
            now = time.perf_counter()
            if now > deadline:
                break
            while sent < scheduled and idle and start + sent * interval <= now:
                conn = idle.popleft()
                conn.due = start + sent * interval
                sent += 1
                try:
                    conn.sock.send(request)  # a small request into an empty send buffer
                except OSError:
                    result.failed += 1
                    drop(conn)
                    add()
                    continue
                result.send_lags_ms.append((time.perf_counter() - conn.due) * 1000)
                busy += 1
            wait = 0.1
            if sent < scheduled and idle:
                wait = start + sent * interval - time.perf_counter()
            if wait > 0.001:
                events = poller.poll(wait - _EARLY)
            else:
                events = poller.poll(0)
                if not events and wait > 0:
                    time.sleep(wait)
                    continue
            for fd, _ in events:
                conn = by_fd[fd]
                try:
                    data = conn.sock.recv(_READ_SIZE)
                    status = conn.reader.feed(data) if data else -1
                except (OSError, ResponseError):
                    status = -1
                if status is None:
                    continue
                busy -= 1
                if 200 <= status < 300:
                    result.latencies_ms.append((time.perf_counter() - conn.due) * 1000)
                else:
                    result.failed += 1
                if status < 0 or conn.reader.close:
                    drop(conn)
                    add()
                else:
                    idle.append(conn)
        result.unfinished = scheduled - sent + busy
    finally:
        result.client_cpu_seconds = time.process_time() - cpu0
        for conn in list(by_fd.values()):
            conn.sock.close()
        poller.close()
    return result
