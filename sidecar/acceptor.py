"""Accept loops of the data listeners: one task per listening socket, one per connection.

Accepts from the listening socket directly rather than by `trio.SocketListener.accept`: on
this 2-core machine a trio server that accepts that way, wraps each connection in a
`trio.SocketStream` and closes it with `trio.aclose_forcefully` spends ~195 µs of CPU per
connection, against 27-56 µs for the same accept, read, answer and close on plain sockets
and 34-36 µs with this loop (`bench.py accept-floor`; docs/benchmarks.md, "a new client
connection per request"). Per connection the
trio path pays a scheduler round trip after every accept, a trio socket object and a
`SocketStream` (three socket options), and, in the http handlers, a detach into a
`LeanSocketStream` and a `getpeername`.

Here a listener takes the connections waiting in its backlog in one go (`batch` of them,
then it yields to the scheduler, so a flood cannot starve the connections already open),
waits for readability only when the backlog is empty, and hands each connection to its
handler as the stream it will use: a `LeanSocketStream` that already knows it is TCP and
who its peer is (http listeners), or a `trio.SocketStream` (tcp listeners, whose relay is
written against trio's stream). Errors are handled as trio handles them: the errnos of a
connection that went away before it was accepted are skipped; any other error (EMFILE and
friends) is logged, and the loop waits 0.1 s and goes on listening.

Batches are for the outbound (`BATCH`), whose local clients may open a connection per
request. The inbound takes one connection per trip through the scheduler (``batch=1``),
as trio's accept did: an inbound connection is admitted as a pending handshake, and a new
one may evict the oldest pending one (`sidecar.connections`); the evicted one must get to
give its slot back before the next is admitted, or a burst of silent sockets would fill
``max_connections`` with evicted slots and refuse a verified peer.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final, TypeAlias

import trio

from meshgate.transport.socket_stream import LeanSocketStream, address_text
from sidecar.observe.logs import event

__all__ = ["BATCH", "Accepted", "Handler", "accept_loop"]

log = logging.getLogger("sidecar.app")
Accepted: TypeAlias = LeanSocketStream | trio.SocketStream  # what a handler is given
Handler = Callable[[Accepted], Awaitable[None]]

BATCH: Final = 16  # accepts in a row before the new tasks run (fairness)
# As trio.SocketListener: the peer went away between its SYN and our accept; not our error.
_GONE_ERRNOS: Final = frozenset(
    getattr(errno, code)
    for code in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, code)
)


async def accept_loop(
    listeners: list[trio.SocketListener],
    handler: Handler,
    handlers: trio.Nursery,
    name: str,
    *,
    lean: bool,
    batch: int,
) -> None:
    """Accept on every listener until cancelled (drain), then close them; each connection
    runs `handler` in `handlers`. `lean`: hand it a `LeanSocketStream`, else a
    `trio.SocketStream`. `batch`: accepts in a row before the scheduler runs the new
    tasks (1 for the inbound, see the module docstring)."""

    async def guarded(stream: Accepted) -> None:
        try:
            await handler(stream)
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not stop the sidecar
            event(
                log,
                "connection handler crashed",
                level=logging.ERROR,
                listener=name,
                error=f"{type(exc).__name__}: {exc}",
            )
            await trio.aclose_forcefully(stream)

    async def loop(listener: trio.SocketListener) -> None:
        async with listener:  # closes the listening socket when the loop ends
            listening = listener.socket
            tcp = listening.family in (socket.AF_INET, socket.AF_INET6)
            # A second socket object on the listener's descriptor, to call accept() without
            # trio's wrapper; detached (not closed) on the way out: the listener closes it.
            raw = socket.socket(
                listening.family, listening.type, listening.proto, fileno=listening.fileno()
            )
            try:
                raw.setblocking(False)  # noqa: FBT003 - the stdlib signature
                await _accept_forever(raw, name, handlers, guarded, tcp=tcp, lean=lean, batch=batch)
            finally:
                raw.detach()

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(loop, listener)


async def _accept_forever(
    raw: socket.socket,
    name: str,
    handlers: trio.Nursery,
    guarded: Handler,
    *,
    tcp: bool,
    lean: bool,
    batch: int,
) -> None:
    in_a_row = 0
    while True:
        try:
            sock, address = raw.accept()
        except BlockingIOError:
            in_a_row = 0
            await trio.lowlevel.wait_readable(raw)  # a checkpoint: drain cancels it here
            continue
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                continue
            event(log, "accept failed", level=logging.ERROR, listener=name, error=str(exc))
            await trio.sleep(0.1)
            continue
        try:
            stream: Accepted = (
                LeanSocketStream(sock, tcp=tcp, peer=address_text(address) if tcp else None)
                if lean
                else trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            )
        except OSError as exc:  # the peer reset it already (a socket option failed)
            sock.close()
            event(log, "accept failed", level=logging.WARNING, listener=name, error=str(exc))
            continue
        in_a_row += 1
        if in_a_row >= batch:  # let the tasks started so far run first (shielded: the
            in_a_row = 0  # stream in hand is never dropped unclosed)
            await trio.lowlevel.cancel_shielded_checkpoint()
        handlers.start_soon(guarded, stream)
        await trio.lowlevel.checkpoint_if_cancelled()  # a drain stops even a flood here
