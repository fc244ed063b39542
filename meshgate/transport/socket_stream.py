"""A TCP stream for the HTTP data path that yields to trio only when the kernel says wait.

`trio.SocketStream` makes every `send_all` and `receive_some` a full checkpoint (a trip
through the scheduler) even when the kernel completes the call at once, and wraps each
call in context managers of its own. On this 2-core machine that costs ~35 µs per
send-and-receive against ~4 µs for the two system calls; a proxied request makes about six
of them per sidecar. `LeanSocketStream` calls the socket directly: a call the kernel
completes returns without yielding; one that would block waits for readiness, which is a
checkpoint (cancel scopes and deadlines apply there). Every call first raises `Cancelled`
if its scope was cancelled (revocation, drain), as trio's own calls do. So that a peer
whose bytes are always ready cannot starve other connections, every `_FAIR_EVERY`-th call
in a row without a wait yields anyway.

That is the one deliberate deviation from trio's stream contract, whose conformance checks
(`trio.testing.check_half_closeable_stream`) want every call to be a full checkpoint.
`LeanSocketStream(sock, checkpoint_every=1)` keeps the contract (every call yields); the
checks run over real loopback sockets that way, and tests/test_lean_socket.py tests the
deviation itself (a call that need not wait still raises `Cancelled`, and yields every
`_FAIR_EVERY` calls).

Deadlines without a cancel scope per call: entering and leaving a `trio.CancelScope` costs
~10-15 µs here, and a request used to open eight of them. A handler sets `receive_deadline`
or `send_deadline` (trio time, a plain attribute) before a call instead; a receive that has
to wait puts its stream in the table of the trio run's one deadline sweep
(`meshgate.transport.deadlines`, no scope), a send that has to wait opens a scope, and
either raises `trio.TooSlowError` when it cannot finish by its deadline. `DeadlineStream`
gives any other stream (in-memory streams in tests) the same two attributes, so the
handlers have one code path.

No ~40 ms stalls (Nagle's algorithm meeting delayed ACKs): every TCP socket taken here has
`TCP_NODELAY` set explicitly, so a small write (a response head, one TLS record) leaves at
once; and before a receive waits, the socket is put in quick-ACK mode, which sends the ACK
the kernel was delaying for the bytes just read. A peer that writes a head and a body in two
sends without `TCP_NODELAY` (Python's `http.server`, many apps) holds the body back until
that ACK arrives; on a kept-alive connection Linux delays it by ~40 ms (the inbound's pooled
app connections made that a 44 ms stall per reused connection, where a connection per
request had none).

A `TlsStream` over a lean stream owns its socket and reads and writes it itself
(`recv_now`, `send_now`, `count_call`; the waits `wait_readable`, `wait_writable` only when it
must), so a TLS call pays one guard, one cancellation check and one fairness count, not two.

Why one module: the two `TimedStream` kinds (the lean socket and `DeadlineStream` for any
other stream) share the deadline attributes the handlers use, and the owner's calls above
are the lean stream's own waits; split, each half would import the other's internals.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias, final

import trio

from meshgate.transport import deadlines
from meshgate.transport.one_at_a_time import OneAtATime

__all__ = [
    "DeadlineStream",
    "LeanSocketStream",
    "TimedStream",
    "address_text",
    "lean",
    "peer_address",
]

_DEFAULT_RECEIVE: Final = 64 * 1024
_FAIR_EVERY: Final = 16
_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _ReceiveDeadline:
    """The receive deadline both streams here share: a receive waits in `_receive_wait`
    (a cancel scope at `receive_deadline`), which can be moved or cancelled meanwhile."""

    __slots__ = ("_receive_wait", "receive_deadline")
    receive_deadline: float  # trio time; a wait past it raises TooSlowError
    _receive_wait: trio.CancelScope | None

    @property
    def waiting_to_receive(self) -> bool:
        """A receive waits for bytes now."""
        return self._receive_wait is not None

    def extend_receive_deadline(self, deadline: float) -> None:
        """Move `receive_deadline`, also for a receive that is waiting now."""
        self.receive_deadline = deadline
        if self._receive_wait is not None:
            self._receive_wait.deadline = deadline

    def interrupt_receive(self) -> None:
        """A receive waiting now raises `TooSlowError` (drain: stop waiting for a request)."""
        if self._receive_wait is not None:
            self._receive_wait.cancel()


@final
class LeanSocketStream(_ReceiveDeadline, trio.abc.HalfCloseableStream):
    """A connected, non-blocking TCP socket as a trio stream. Errors are translated as
    `trio.SocketStream` does: `BrokenResourceError` (cause: the `OSError`) for a failed
    call, `ClosedResourceError` after `aclose`, `BusyResourceError` for two concurrent
    senders or receivers."""

    __slots__ = (
        "_closed",
        "_eof_sent",
        "_fast",
        "_overdue",
        "_quickack",
        "_receiving",
        "_sending",
        "_swept",
        "_tcp",
        "_waiting",
        "checkpoint_every",
        "peer",
        "send_deadline",
        "socket",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        checkpoint_every: int = _FAIR_EVERY,
        quickack: bool = True,
        tcp: bool | None = None,
        peer: str | None = None,
    ) -> None:
        """`tcp` and `peer` (``host:port``) when the caller knows them already (an accept
        loop): asking the socket costs two enum conversions and a `getpeername`."""
        sock.setblocking(False)  # noqa: FBT003 - the stdlib signature
        self.socket = sock
        self.peer = peer  # for `peer_address`; None: ask the socket
        # A call the kernel completes at once yields to the scheduler every this many
        # calls in a row (1: every call, as trio's streams do).
        self.checkpoint_every = checkpoint_every
        self._tcp = (
            tcp
            if tcp is not None
            else sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM
        )
        if self._tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Quick ACKs before each receive wait (see the module docstring); a server whose
        # clients send each request in one write (the CA) saves the extra ACK packet.
        self._quickack = quickack and self._tcp and _QUICKACK is not None
        self.receive_deadline = math.inf  # trio time; a wait past it raises TooSlowError
        self.send_deadline = math.inf
        self._fast = 0
        self._closed = False
        self._eof_sent = False
        self._sending = OneAtATime("another task is sending on this stream")
        self._receiving = OneAtATime("another task is receiving on this stream")
        self._receive_wait: trio.CancelScope | None = None  # unused: see `deadlines`
        self._waiting = False  # a receive waits for readability now
        self._swept = False  # in the deadline sweep's table now
        self._overdue = False

    @classmethod
    def take(
        cls,
        stream: trio.SocketStream,
        *,
        checkpoint_every: int = _FAIR_EVERY,
        quickack: bool = True,
    ) -> LeanSocketStream:
        """Take over the socket of `stream`; `stream` must not be used afterwards (its
        socket is detached, so closing it is a no-op)."""
        sock = socket.socket(fileno=stream.socket.detach())
        return cls(sock, checkpoint_every=checkpoint_every, quickack=quickack)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    @property
    def waiting_to_receive(self) -> bool:
        return self._waiting

    def extend_receive_deadline(self, deadline: float) -> None:
        """Move `receive_deadline`, also for a receive that is waiting now."""
        self.receive_deadline = deadline
        if self._waiting and deadline != math.inf:
            self._swept = True
            deadlines.watch(self)  # an earlier deadline wakes the sweep sooner

    def interrupt_receive(self) -> None:
        """A receive waiting now raises `TooSlowError` (drain: stop waiting for a request)."""
        if self._waiting:
            self._swept = False
            deadlines.unwatch(self)
            self.overdue()

    def overdue(self) -> None:
        """The deadline sweep's call: the waiting receive ends with `TooSlowError`."""
        self._overdue = True
        if not self._closed and self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)

    async def wait_readable(self) -> None:
        """Wait until the socket has bytes (or EOF) to read, under `receive_deadline`
        (`TooSlowError` past it): the one receive wait, for `receive_some` and for the
        owner that reads the socket itself (`TlsStream`). A checkpoint."""
        self._fast = 0
        if self._quickack and _QUICKACK is not None:
            # ACK now what was read: a peer's Nagle may hold its next bytes until then.
            # Linux clears quick-ACK mode as it goes, so it is set before every wait.
            with contextlib.suppress(OSError):  # the receive after the wait reports it
                self.socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        # No cancel scope per wait: the run's one deadline sweep ends it (see deadlines).
        # A wait without a deadline (the CA's: its own scope bounds it) is not put in the
        # sweep's table, nor taken out of it after.
        self._overdue = False
        self._waiting = True
        if self.receive_deadline != math.inf:
            self._swept = True
            deadlines.watch(self)
        try:
            await trio.lowlevel.wait_readable(self.socket)
        except trio.ClosedResourceError:
            if self._overdue and not self._closed:
                raise trio.TooSlowError("no bytes to receive before the deadline") from None
            raise
        finally:
            self._waiting = False
            if self._swept:
                self._swept = False
                deadlines.unwatch(self)

    async def wait_writable(self) -> None:
        """Wait until the socket takes more bytes, under `send_deadline` (`TooSlowError`)."""
        self._fast = 0
        while True:
            try:
                if self.send_deadline == math.inf:
                    await trio.lowlevel.wait_writable(self.socket)
                    return
                with trio.move_on_at(self.send_deadline):
                    await trio.lowlevel.wait_writable(self.socket)
                    return
                raise trio.TooSlowError("the peer did not read in time")
            except trio.ClosedResourceError:
                if self._closed:
                    raise
                # Woken by the deadline sweep for a receive on this socket: wait again.

    def count_call(self) -> bool:
        """One call done without a wait since the last count reset: True when it is the
        `checkpoint_every`-th in a row, and the caller must yield
        (`cancel_shielded_checkpoint`) so that a peer whose bytes are always ready cannot
        starve the other connections. A wait resets the count."""
        self._fast += 1
        if self._fast >= self.checkpoint_every:
            self._fast = 0
            return True
        return False

    # -- for the one owner that reads and writes the socket itself (`TlsStream`): no guard,
    # no cancellation check, no fairness count here; the owner does each once per call.

    def recv_now(self, size: int) -> bytes | None:
        """One `recv` that does not wait: the bytes (b"" at EOF), or None if none are there."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        try:
            return self.socket.recv(size)
        except BlockingIOError:
            # None, and the caller waits outside this handler: an idle connection would
            # keep the exception and its traceback alive (~0.5 KB each).
            return None
        except OSError as exc:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed") from exc
            raise trio.BrokenResourceError(f"receive failed: {exc}") from exc

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """One `send` that does not wait: how many bytes the kernel took (0: none, full)."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed") from exc
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            if self._eof_sent:
                # As trio's SocketStream: our own half-close, not a broken peer (EPIPE).
                raise trio.ClosedResourceError("send_eof was called on this stream")
            total = len(data)
            sent = 0
            view = data  # a memoryview once a send was partial (no copies of the rest)
            while sent < total:
                taken = self.send_now(view)
                if not taken:
                    await self.wait_writable()
                    continue
                sent += taken
                if sent < total:
                    view = memoryview(data)[sent:]
            if self.count_call():
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receiving:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            size = max_bytes or _DEFAULT_RECEIVE
            while True:
                data = self.recv_now(size)
                if data is None:
                    await self.wait_readable()
                    continue
                if self.count_call():
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data

    async def send_eof(self) -> None:
        self._sending.check()
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(f"shutdown failed: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        # Inside the send guard, as trio's streams: a send_eof (or a second wait) meanwhile
        # is refused with BusyResourceError.
        with self._sending:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            await trio.lowlevel.wait_writable(self.socket)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """`aclose` without its checkpoint: for a handler whose task ends right after (a
        connection per request pays one trip through the scheduler less). A task blocked
        on the socket (a call of this stream, or of the `TlsStream` that owns it) is woken
        with `ClosedResourceError` before the descriptor goes."""
        if not self._closed:
            self._closed = True
            if self.socket.fileno() != -1:
                trio.lowlevel.notify_closing(self.socket)
                self.socket.close()


@final
class DeadlineStream(_ReceiveDeadline, trio.abc.HalfCloseableStream):
    """Any stream with `LeanSocketStream`'s deadline attributes: each call runs under a
    cancel scope at the deadline (when one is set) and raises `TooSlowError` past it."""

    def __init__(self, transport: trio.abc.Stream) -> None:
        self.transport = transport
        self.receive_deadline = math.inf
        self.send_deadline = math.inf
        self._receive_wait: trio.CancelScope | None = None

    async def _by(self, deadline: float, call: Callable[[], Awaitable[object]]) -> object:
        with trio.CancelScope(deadline=deadline):
            return await call()
        raise trio.TooSlowError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._by(self.send_deadline, lambda: self.transport.send_all(data))

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        with trio.CancelScope(deadline=self.receive_deadline) as scope:
            self._receive_wait = scope
            try:
                return await self.transport.receive_some(max_bytes)
            finally:
                self._receive_wait = None
        raise trio.TooSlowError

    async def send_eof(self) -> None:
        if not isinstance(self.transport, trio.abc.HalfCloseableStream):
            raise TypeError("the transport cannot half-close")
        await self._by(self.send_deadline, self.transport.send_eof)

    async def wait_send_all_might_not_block(self) -> None:
        await self._by(self.send_deadline, self.transport.wait_send_all_might_not_block)

    async def aclose(self) -> None:
        await self.transport.aclose()


TimedStream: TypeAlias = LeanSocketStream | DeadlineStream


def lean(stream: trio.abc.Stream) -> TimedStream:
    """`stream` with deadlines: a `trio.SocketStream` is taken over by a `LeanSocketStream`,
    a timed stream is returned as it is, any other is wrapped in a `DeadlineStream`."""
    if isinstance(stream, LeanSocketStream | DeadlineStream):
        return stream
    if isinstance(stream, trio.SocketStream):
        return LeanSocketStream.take(stream)
    return DeadlineStream(stream)


def peer_address(stream: trio.abc.Stream) -> str:
    """The remote end of a socket stream as ``host:port`` (``[host]:port`` for IPv6), for
    logs; ``in-memory`` for other streams, ``unknown`` once the socket is gone."""
    if isinstance(stream, LeanSocketStream) and stream.peer is not None:
        return stream.peer  # known since the accept
    if not isinstance(stream, trio.SocketStream | LeanSocketStream):
        return "in-memory"
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "unknown"
    return address_text(address)


def address_text(address: tuple[Any, ...]) -> str:
    """An IPv4 or IPv6 socket address as ``host:port`` / ``[host]:port``."""
    host, port, *_ = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
