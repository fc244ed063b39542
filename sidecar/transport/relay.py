"""Bidirectional byte relay between two half-closeable streams.

Each direction copies until its source ends, then passes the end on with `send_eof`:
plain TCP shuts down its write side, `TlsStream` sends close_notify (TLS 1.3 half-close),
so a client that sends a request and shuts down still gets the reply. The relay ends when
both directions have ended. An error in either direction (reset, truncated TLS) aborts
both sides at once: a reset TCP side is reset on the other end too, never turned into a
clean EOF that would hide a truncation. No byte moves for `idle_timeout_seconds` in either
direction: both sides are aborted.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import final

import trio

from meshgate.transport.socket_stream import LeanSocketStream
from meshgate.transport.tls_stream import TlsStream

__all__ = ["RelayResult", "abort", "relay"]

_CHUNK = 64 * 1024


@final
@dataclass(slots=True)
class RelayResult:
    bytes_a_to_b: int = 0
    bytes_b_to_a: int = 0
    outcome: str = "closed"  # closed | idle_timeout | error: <what>


async def abort(stream: trio.abc.Stream) -> None:
    """Close without a graceful goodbye: a TCP socket sends RST (SO_LINGER 0)."""
    inner: trio.abc.Stream = stream.transport if isinstance(stream, TlsStream) else stream
    if isinstance(inner, trio.SocketStream | LeanSocketStream):
        with contextlib.suppress(OSError):  # already gone: a plain close is all that is left
            inner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(inner)
    if inner is not stream:
        await trio.aclose_forcefully(stream)


async def relay(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    *,
    idle_timeout_seconds: float,
) -> RelayResult:
    """Copy a→b and b→a until both ends are done; always closes both streams."""
    result = RelayResult()
    idle = trio.CancelScope(deadline=trio.current_time() + idle_timeout_seconds)

    def active() -> None:
        idle.deadline = trio.current_time() + idle_timeout_seconds

    counts = [0, 0]

    async def pump(src: trio.abc.Stream, dst: trio.abc.HalfCloseableStream, index: int) -> None:
        while True:
            data = await src.receive_some(_CHUNK)
            if not data:
                await dst.send_eof()
                return
            await dst.send_all(data)
            counts[index] += len(data)
            active()

    clean = False
    try:
        with idle:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, a, b, 0)
                nursery.start_soon(pump, b, a, 1)
        if idle.cancelled_caught:
            result.outcome = "idle_timeout"
        else:
            clean = True
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
        first = group.exceptions[0]
        result.outcome = f"error: {type(first).__name__}: {first}".rstrip(": ")
    finally:
        result.bytes_a_to_b, result.bytes_b_to_a = counts
        # Anything but both directions ending cleanly (error, idle, an outer cancel for
        # revocation, expiry or drain) aborts both sides.
        with trio.CancelScope(shield=True):
            if clean:
                await a.aclose()
                await b.aclose()
            else:
                await abort(a)
                await abort(b)
    return result
