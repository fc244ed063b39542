"""A lean HTTPS load generator for the CA benchmark: keep-alive POSTs, one at a time per
connection, over non-blocking sockets and `ssl.MemoryBIO`, driven by one epoll loop.

Why not trio + `SSLStream` + h11: that client cost ~750 µs of CPU per request, as much as
the CA server it measured, so on 2 cores the client nearly saturated a core and the server
idled between requests (a wake-up per request). Here a request is one `SSLObject.write`,
one `send`, one `epoll.poll` share, one `recv`, one `SSLObject.read` and a small response
reader: status line, headers up to CRLFCRLF, Content-Length framing. A response without
Content-Length, a malformed head or bytes nobody asked for count as a failed request and
close that connection (the CA always sends Content-Length); 200 counts as issued, any
other status as failed. The next request goes out only after the previous response is
complete: no pipelining.

`run_load` drives the connections in this process, or in N forked processes (each with its
share of the connections and its own stride of the bodies: join tokens are single-use).
Progress goes to stderr once a second.

Why one module: one epoll load generator whose connection, response reader
and driver share one loop and one set of counters; it has no other users.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import multiprocessing.connection
import select
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "LoadError",
    "LoadResult",
    "ResponseError",
    "ResponseReader",
    "Target",
    "run_load",
]

_READ_SIZE: Final = 65536
_MAX_HEAD: Final = 16384
# How long in-flight responses may take after the deadline before they count as failed.
_DRAIN_SECONDS: Final = 30.0
_IN: Final = select.EPOLLIN | select.EPOLLRDHUP
_IN_OUT: Final = _IN | select.EPOLLOUT


class LoadError(Exception):
    """The load could not run at all (connect or TLS handshake refused, a worker died)."""


class ResponseError(Exception):
    """The server's bytes are not one well-framed HTTP/1.1 response (the peer's fault)."""


@dataclass(frozen=True)
class Target:
    """One connection to make: the server's address and the client context to use."""

    address: tuple[str, int]
    context: ssl.SSLContext


@dataclass(frozen=True)
class LoadResult:
    ok: int
    failed: int
    seconds: float
    client_cpu_seconds: float


@final
class ResponseReader:
    """Bytes in, one response's status out: a pure reader for responses to one request at a
    time. Fails closed: anything but a well-framed response with Content-Length raises
    `ResponseError`."""

    __slots__ = ("_buffer", "_close", "_need", "_status")

    def __init__(self) -> None:
        self._buffer = b""
        self._need = -1  # total bytes of the response once its head is read
        self._status = 0
        self._close = False

    @property
    def idle(self) -> bool:
        """No part of a response read yet."""
        return not self._buffer

    @property
    def close(self) -> bool:
        """The last complete response said ``Connection: close``."""
        return self._close

    def feed(self, data: bytes) -> int | None:
        """Add bytes; the status once the response is complete, else None."""
        buffer = self._buffer + data if self._buffer else data
        if self._need < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise ResponseError(f"response head longer than {_MAX_HEAD} bytes")
                self._buffer = buffer
                return None
            self._status, length, self._close = parse_head(buffer[:end])
            self._need = end + 4 + length
        if len(buffer) < self._need:
            self._buffer = buffer
            return None
        if len(buffer) > self._need:
            raise ResponseError(f"{len(buffer) - self._need} bytes after the response")
        self._buffer, self._need = b"", -1
        return self._status


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, connection close) of a response head without its CRLFCRLF."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ResponseError(f"bad status line {lines[0][:80]!r}")
    length = -1
    close = version == b"HTTP/1.0"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ResponseError(f"header line without a colon: {line[:80]!r}")
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length >= 0 and int(value) != length):
                raise ResponseError(f"bad or conflicting Content-Length {value[:40]!r}")
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ResponseError("Transfer-Encoding in a response (only Content-Length is read)")
    if length < 0:
        raise ResponseError("response without Content-Length")
    return int(code), length, close


def request_prefix(path: str, address: tuple[str, int]) -> bytes:
    """A POST's head up to the Content-Length value (the length and body follow)."""
    return (
        f"POST {path} HTTP/1.1\r\nhost: {address[0]}:{address[1]}\r\n"
        "content-type: application/json\r\ncontent-length: "
    ).encode("ascii")


@final
class _Connection:
    __slots__ = (
        "closed",
        "fd",
        "handshaken",
        "in_flight",
        "incoming",
        "outgoing",
        "pending",
        "prefix",
        "reader",
        "served",
        "sock",
        "target",
        "tls",
    )

    def __init__(self, target: Target, prefix: bytes) -> None:
        try:
            sock = socket.create_connection(target.address, timeout=10)
        except OSError as exc:
            raise LoadError(f"connect to {target.address[0]}:{target.address[1]}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)  # noqa: FBT003 - the stdlib signature
        self.sock = sock
        self.fd = sock.fileno()
        self.closed = False
        self.target = target
        self.prefix = prefix
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = target.context.wrap_bio(self.incoming, self.outgoing, server_side=False)
        self.handshaken = False
        self.in_flight = False
        self.served = 0
        self.pending = b""  # ciphertext the socket has not taken yet
        self.reader = ResponseReader()


@final
class _Driver:
    """The epoll loop over one process's connections."""

    def __init__(
        self,
        targets: Sequence[Target],
        path: str,
        bodies: Iterator[bytes],
        deadline: float,
        on_tick: Callable[[int, int], None],
        tick_seconds: float,
    ) -> None:
        self.targets = targets
        self.path = path
        self.bodies = bodies
        self.deadline = deadline
        self.on_tick = on_tick
        self.tick_seconds = tick_seconds
        self.ok = 0
        self.failed = 0
        self.pulled = 0  # bodies taken from the iterator
        self.ticked = (-1, -1)  # the counts last reported
        self.exhausted = False
        self.epoll = select.epoll()
        self.connections: dict[int, _Connection] = {}

    def run(self) -> None:
        try:
            for target in self.targets:
                self._open(target)
            self._loop()
        finally:
            for conn in list(self.connections.values()):
                self._close(conn)
            self.epoll.close()
        if (self.ok, self.failed) != self.ticked:
            self._tick()

    def _loop(self) -> None:
        connections, poll = self.connections, self.epoll.poll
        next_tick = time.monotonic() + self.tick_seconds
        give_up = self.deadline + _DRAIN_SECONDS
        while connections:
            for fd, mask in poll(0.2):
                conn = connections.get(fd)
                if conn is None:
                    continue
                if mask & select.EPOLLOUT:
                    self._flush(conn)
                if mask & ~select.EPOLLOUT and not conn.closed:
                    self._readable(conn)
            now = time.monotonic()
            if now >= next_tick:
                self._tick()
                next_tick = now + self.tick_seconds
            if now >= give_up:
                for conn in list(connections.values()):
                    self._lost(conn, reopen=False)

    def _tick(self) -> None:
        self.ticked = (self.ok, self.failed)
        self.on_tick(*self.ticked)

    def _open(self, target: Target) -> None:
        prefix = request_prefix(self.path, target.address)
        conn = _Connection(target, prefix)
        self.connections[conn.fd] = conn
        self.epoll.register(conn.fd, _IN)
        self._handshake(conn)

    def _handshake(self, conn: _Connection) -> None:
        try:
            conn.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush(conn)
            return
        except ssl.SSLError as exc:
            host, port = conn.target.address
            raise LoadError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        conn.handshaken = True
        self._flush(conn)
        self._send_next(conn)

    def _readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if not conn.handshaken:
                host, port = conn.target.address
                raise LoadError(f"{host}:{port} closed the connection during the TLS handshake")
            self._lost(conn)
            return
        conn.incoming.write(data)
        if not conn.handshaken:
            self._handshake(conn)
            return
        plain = b""
        try:
            # A response is usually one TLS record: read until the BIO is drained rather
            # than until SSLWantReadError (an exception per request).
            while conn.incoming.pending or conn.tls.pending():
                chunk = conn.tls.read(_READ_SIZE)
                if not chunk:  # close_notify
                    self._lost(conn)
                    return
                plain += chunk
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLError:
            self._lost(conn)
            return
        if conn.outgoing.pending:
            self._flush(conn)
        if not plain or conn.closed:
            return
        try:
            if not conn.in_flight:
                raise ResponseError("bytes from the server before any request")
            status = conn.reader.feed(plain)
        except ResponseError:
            self._lost(conn)
            return
        if status is None:
            return
        conn.in_flight = False
        conn.served += 1
        if status == 200:
            self.ok += 1
        else:
            self.failed += 1
        if conn.reader.close:
            self._lost(conn)
        else:
            self._send_next(conn)

    def _send_next(self, conn: _Connection) -> None:
        """The next request on `conn`, or close it when time or bodies ran out."""
        if conn.closed:
            return
        body = None
        if not self.exhausted and time.monotonic() < self.deadline:
            body = next(self.bodies, None)
            if body is None:
                self.exhausted = True
            else:
                self.pulled += 1
        if body is None:
            self._close(conn)
            return
        conn.tls.write(conn.prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn.in_flight = True
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        """Send what TLS produced; what the socket does not take waits for EPOLLOUT."""
        data = conn.pending + conn.outgoing.read() if conn.pending else conn.outgoing.read()
        if not data:
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost(conn)
            return
        if sent < len(data):
            if not conn.pending:
                self.epoll.modify(conn.fd, _IN_OUT)
            conn.pending = data[sent:]
        elif conn.pending:
            conn.pending = b""
            self.epoll.modify(conn.fd, _IN)

    def _lost(self, conn: _Connection, *, reopen: bool = True) -> None:
        """The connection broke or misbehaved: its request (if any) failed. A new connection
        takes its place while there is time and a body left, if this one served at least
        one response (a server that drops every connection at once ends the load)."""
        if conn.closed:
            return
        if conn.in_flight:
            conn.in_flight = False
            self.failed += 1
        self._close(conn)
        more = not self.exhausted and time.monotonic() < self.deadline
        if reopen and more and conn.served:
            self._open(conn.target)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        del self.connections[conn.fd]
        self.epoll.unregister(conn.fd)
        conn.sock.close()


def _print_progress(path: str) -> Callable[[int, int], None]:
    def tick(ok: int, failed: int) -> None:
        sys.stderr.write(f"[bench]   {path}: {ok} issued, {failed} failed\n")
        sys.stderr.flush()

    return tick


def run_load(
    targets: Sequence[Target],
    path: str,
    bodies: Iterator[bytes],
    seconds: float,
    *,
    processes: int = 1,
) -> LoadResult:
    """POST `bodies` to `path` over one keep-alive connection per target for `seconds`
    (responses in flight then complete), in this process or in `processes` forked ones.
    Client CPU is summed over every process that did the work."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    started, cpu_started = time.monotonic(), time.process_time()
    deadline = started + seconds
    if processes == 1 or len(targets) <= 1:
        driver = _Driver(targets, path, bodies, deadline, _print_progress(path), 1.0)
        driver.run()
        return LoadResult(
            driver.ok,
            driver.failed,
            time.monotonic() - started,
            time.process_time() - cpu_started,
        )
    return _run_forked(targets, path, bodies, deadline, processes, started, cpu_started)


def _run_forked(
    targets: Sequence[Target],
    path: str,
    bodies: Iterator[bytes],
    deadline: float,
    processes: int,
    started: float,
    cpu_started: float,
) -> LoadResult:
    # fork, not spawn: SSL contexts cannot be pickled, and the child needs nothing re-imported.
    mp = multiprocessing.get_context("fork")
    shares = [list(targets[k::processes]) for k in range(processes)]
    shares = [share for share in shares if share]
    stride = len(shares)
    counters = mp.RawArray("q", 2 * stride)  # ok, failed of each worker, for progress
    workers = []
    for index, share in enumerate(shares):
        receiver, sender = mp.Pipe(duplex=False)
        # Each worker takes every `stride`-th body from its own (forked) copy of the iterator.
        own = itertools.islice(bodies, index, None, stride)
        process = mp.Process(
            target=_worker,
            args=(share, path, own, deadline, counters, index, sender),
            name=f"ca-load-{index}",
        )
        process.start()
        sender.close()
        workers.append((process, receiver))
    results: dict[int, tuple[int, int, float, int, str]] = {}
    tick = _print_progress(path)
    ticked = (-1, -1)
    next_tick = time.monotonic() + 1.0
    waiting = {receiver: index for index, (_, receiver) in enumerate(workers)}
    while waiting:
        for ready in multiprocessing.connection.wait(list(waiting), timeout=0.2):
            assert isinstance(ready, multiprocessing.connection.Connection)
            index = waiting.pop(ready)
            try:
                results[index] = ready.recv()
            except EOFError:
                results[index] = (0, 0, 0.0, 0, f"load worker {index} died without a result")
        if time.monotonic() >= next_tick:
            ticked = (sum(counters[0::2]), sum(counters[1::2]))
            tick(*ticked)
            next_tick += 1.0
    for process, receiver in workers:
        process.join()
        receiver.close()
    errors = [r[4] for r in results.values() if r[4]]
    if errors:
        raise LoadError("; ".join(errors))
    # Skip past every body any worker may have taken, so the caller's next phase never
    # reuses a single-use token.
    collections.deque(itertools.islice(bodies, stride * max(r[3] for r in results.values())), 0)
    ok = sum(r[0] for r in results.values())
    failed = sum(r[1] for r in results.values())
    if (ok, failed) != ticked:
        tick(ok, failed)
    own_cpu = time.process_time() - cpu_started
    return LoadResult(
        ok,
        failed,
        time.monotonic() - started,
        own_cpu + sum(r[2] for r in results.values()),
    )


def _worker(
    targets: list[Target],
    path: str,
    bodies: Iterator[bytes],
    deadline: float,
    counters: Sequence[int],
    index: int,
    result: multiprocessing.connection.Connection,
) -> None:
    """One forked load process; sends (ok, failed, CPU seconds, bodies taken, error)."""

    def tick(ok: int, failed: int) -> None:
        counters[2 * index] = ok  # type: ignore[index]
        counters[2 * index + 1] = failed  # type: ignore[index]

    driver = _Driver(targets, path, bodies, deadline, tick, 0.25)
    error = ""
    try:
        driver.run()
    except LoadError as exc:
        error = str(exc)
    # A forked child's CPU clock starts at zero: this is all of its CPU.
    result.send((driver.ok, driver.failed, time.process_time(), driver.pulled, error))
    result.close()
