"""The read stage of the inbound http session: the client's side of one mesh connection.

`ClientSide` holds the verified TLS stream, the socket under it (whose deadlines bound our
reads and writes: one deadline attribute per direction, no cancel scope per call) and the
strict `RequestReader`. `next_head` waits for the next request head: up to
``keepalive_idle_timeout_seconds`` for its first byte (interrupted by a drain), then
``header_timeout_seconds`` for the rest. `send` gives every write
``body_idle_timeout_seconds`` to be taken by the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Literal, final

import trio

from meshgate.errors import TransportError
from meshgate.http import CONNECTION_CLOSED, NEED_DATA, RequestHead, RequestReader
from meshgate.transport.socket_stream import TimedStream
from meshgate.transport.tls_stream import TlsStream
from sidecar.config import TimeoutsConfig
from sidecar.transport.client_gone import ClientGoneError

__all__ = ["ClientSide", "ClientTimeoutError"]

_READ: Final = 64 * 1024


class ClientTimeoutError(TransportError):
    """The client was too slow between requests (`idle`) or inside a head (`head`)."""

    def __init__(self, phase: Literal["idle", "head"]) -> None:
        super().__init__(phase)
        self.phase = phase


@final
class ClientSide:
    """Reads requests from and writes responses to one client connection."""

    __slots__ = (
        "_draining",
        "_idle_waits",
        "head_started",
        "reader",
        "stream",
        "timeouts",
        "transport",
    )

    def __init__(
        self,
        stream: TlsStream,
        transport: TimedStream,
        reader: RequestReader,
        timeouts: TimeoutsConfig,
        *,
        idle_waits: set[TimedStream],
        draining: Callable[[], bool],
    ) -> None:
        self.stream = stream
        self.transport = transport  # under the TLS stream: its deadlines bound our reads
        self.reader = reader
        self.timeouts = timeouts
        self._idle_waits = idle_waits  # `drain` interrupts the connections waiting here
        self._draining = draining
        # `time.monotonic()` when the current head's first byte was here: a request's
        # duration counts from it, not from the idle wait before it on a kept-alive
        # connection.
        self.head_started = 0.0

    async def next_head(self) -> RequestHead | None:
        """The next request head; None when the client closed or a drain ended the wait.
        Raises `HttpError` for a head we refuse, `ClientTimeoutError`, `ClientGoneError`."""
        reader = self.reader
        idle_deadline = trio.current_time() + self.timeouts.keepalive_idle_timeout_seconds
        head_deadline: float | None = None
        self.head_started = time.monotonic()  # pipelined: its bytes are already here
        while True:
            ev = reader.next_event()
            if isinstance(ev, RequestHead):
                return ev
            if ev is CONNECTION_CLOSED:
                return None
            if ev is not NEED_DATA:  # bodies are always consumed before the next head
                raise AssertionError(f"unexpected {ev!r} between requests")
            if head_deadline is None and reader.buffered_bytes:
                head_deadline = trio.current_time() + self.timeouts.header_timeout_seconds
            if head_deadline is None:
                if self._draining():
                    return None
                # `drain` interrupts this wait: it ends like an idle timeout, quietly.
                waits = self._idle_waits
                waits.add(self.transport)
                try:
                    await self.read(idle_deadline, "idle")
                finally:
                    waits.discard(self.transport)
                self.head_started = time.monotonic()  # the head's first bytes came now
            else:
                await self.read(head_deadline, "head")

    async def read(self, deadline: float, phase: Literal["idle", "head"]) -> None:
        """Feed the reader what the client sent by `deadline` (EOF included)."""
        self.transport.receive_deadline = deadline
        try:
            data = await self.stream.receive_some(_READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGoneError("client_gone") from exc
        except trio.TooSlowError:
            raise ClientTimeoutError(phase) from None
        if data:
            self.reader.feed(data)
        else:
            self.reader.feed_eof()

    async def send(self, data: bytes) -> None:
        """Write to the client; `ClientGoneError` when it is gone or does not read in time."""
        self.transport.send_deadline = trio.current_time() + self.timeouts.body_idle_timeout_seconds
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGoneError("client_gone") from exc
        except trio.TooSlowError:
            raise ClientGoneError("client_stalled") from None
