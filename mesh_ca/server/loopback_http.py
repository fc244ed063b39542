"""One request per connection on a plain-HTTP loopback listener, as the CA admin listener
and the dashboard serve: a few slots (a connection beyond them is closed at once), a short
deadline for the request head, and a client that went away ends its connection quietly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from mesh_ca.server.wire import RequestHead, parse_request_head

__all__ = ["read_request_head", "serve_in_slot"]


async def serve_in_slot(
    slots: trio.CapacityLimiter,
    stream: trio.SocketStream,
    answer: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """`answer(stream)` if a slot is free, else close at once; then close the stream."""
    async with stream:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            return  # every slot taken: close at once
        try:
            await answer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            slots.release()


async def read_request_head(
    stream: trio.SocketStream, *, max_bytes: int, seconds: float
) -> RequestHead | None:
    """The request head; None if the client closed or took longer than `seconds`. A head
    that breaks the rules raises `WireError` (answer it with its status)."""
    buffer = bytearray()
    with trio.move_on_after(seconds):
        while (head := parse_request_head(buffer, max_bytes=max_bytes)) is None:
            data = await stream.receive_some(4096)
            if not data:
                return None
            buffer += data
        return head
    return None
