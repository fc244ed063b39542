"""One response relay for both http directions: upstream → client, re-framed by us.

The inbound sidecar (app → mesh peer) and the outbound one (mesh peer → local app) relay a
response the same way: read the upstream's events with the strict `ResponseReader`, pass
1xx on and re-frame the final head by the shared rule (`meshgate.http.relay`), forward the
body (as chunks when the client gets it chunked), and send the head together with whatever
of the body is already read, in one write. Pending bytes are flushed before every wait and
before a failure is reported.

Deadlines: the final head must come within ``response_seconds`` of the start (a body pump
running beside may move that deadline on while it sends); after the head, each pause of the
upstream and each write to the client may last ``idle_seconds``.

Nothing is raised for either side's fault: the result (`Relayed`) says how far it got and,
on failure, which side failed and how (`Failure`). Each direction maps that onto its own
answers and access-log reasons. `count` (the caller's record) gets the status and body bytes
as they go out, so a request cut from outside still knows what was sent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Protocol, final

import trio

from meshgate.http import (
    LAST_CHUNK,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    HttpError,
    InterimResponse,
    ResponseHead,
    ResponseReader,
    encode_chunk,
)
from meshgate.http.relay import relay_interim, relay_response_head
from meshgate.transport.socket_stream import TimedStream

__all__ = ["Failure", "Relayed", "ResponseCount", "relay_response"]

_READ: Final = 64 * 1024
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Failure(enum.Enum):
    """Which side failed and how; `Relayed.started` tells before or after our head."""

    INVALID = "invalid"  # the upstream sent bytes the strict reader refuses (detail: why)
    CLOSED = "closed"  # the upstream closed its connection before a final head
    RESET = "reset"  # reading from the upstream failed (reset, truncated TLS)
    STALLED = "stalled"  # no head within response_seconds, or a body pause over idle_seconds
    CLIENT_GONE = "client_gone"  # the client reset, closed, or did not read in time


class ResponseCount(Protocol):
    """Where the relay records what went out (the caller's record)."""

    status: int | None  # the final status, set when its head is sent
    bytes_out: int  # body bytes relayed, before any chunk framing


@final
class Relayed:
    """How one relay ended; read-only: the complete ones are shared constants, since
    building one per response cost ~1.5 µs."""

    __slots__ = (
        "complete",
        "detail",
        "failure",
        "keep_client",
        "keep_upstream",
        "received",
        "started",
    )

    def __init__(
        self,
        *,
        complete: bool,
        started: bool = True,
        keep_client: bool = False,
        keep_upstream: bool = False,
        received: bool = True,
        failure: Failure | None = None,
        detail: str = "",
    ) -> None:
        self.complete = complete  # the whole response reached the client
        self.started = started  # our final head was handed to the client: no answer of ours
        self.keep_client = keep_client  # the head we sent lets the client connection go on
        self.keep_upstream = keep_upstream  # the upstream connection may carry another request
        self.received = received  # the upstream sent at least one byte
        self.failure = failure
        self.detail = detail  # the reader's reason for INVALID, else ""


# The complete outcomes, by [keep_client][keep_upstream]: no allocation on the common path.
_COMPLETE: Final = tuple(
    tuple(
        Relayed(complete=True, keep_client=client, keep_upstream=upstream)
        for upstream in (False, True)
    )
    for client in (False, True)
)


def _failed(
    failure: Failure, head: ResponseHead | None, received: bool, detail: str = ""
) -> Relayed:
    return Relayed(
        complete=False, started=head is not None, received=received, failure=failure, detail=detail
    )


async def relay_response(
    reader: ResponseReader,
    upstream: trio.abc.ReceiveStream,
    upstream_clock: TimedStream,
    client: trio.abc.SendStream,
    client_clock: TimedStream,
    count: ResponseCount,
    *,
    method: str,
    client_version: str,
    keep_client: Callable[[], bool],
    response_seconds: float,
    idle_seconds: float,
) -> Relayed:
    """Relay the response to the request `reader` expects (`reader.expect(method)` done).

    `upstream_clock` / `client_clock`: the streams whose ``receive_deadline`` /
    ``send_deadline`` bound reads of `upstream` and writes to `client` (the socket under a
    TLS stream, or the stream itself). `keep_client()` is asked when the final head arrives:
    may the client connection go on, as far as the caller knows (the request asked for it,
    the upload ended, the connection is not retiring)?
    """
    upstream_clock.receive_deadline = trio.current_time() + response_seconds
    received = False
    chunked = False
    head: ResponseHead | None = None
    keep = False
    pieces: list[bytes] = []
    failure: Relayed
    while True:
        try:
            ev = reader.next_event()
        except HttpError as exc:
            failure = _failed(Failure.INVALID, head, received, exc.reason)
            break
        if ev is NEED_DATA:
            if pieces:
                if not await _send(client, client_clock, pieces, idle_seconds):
                    return _failed(Failure.CLIENT_GONE, head, received)
                pieces = []
            if head is not None:
                upstream_clock.receive_deadline = trio.current_time() + idle_seconds
            try:
                data = await upstream.receive_some(_READ)
            except trio.TooSlowError:
                failure = _failed(Failure.STALLED, head, received)
                break
            except _BROKEN:
                failure = _failed(Failure.RESET, head, received)
                break
            if data:
                received = True
                reader.feed(bytes(data))
            else:
                reader.feed_eof()
        elif isinstance(ev, Data):
            count.bytes_out += len(ev.data)
            pieces.append(encode_chunk(ev.data) if chunked else ev.data)
        elif isinstance(ev, EndOfMessage):
            if chunked:
                pieces.append(LAST_CHUNK)
            if not await _send(client, client_clock, pieces, idle_seconds):
                return _failed(Failure.CLIENT_GONE, head, received)
            assert head is not None
            return _COMPLETE[keep][head.keep_alive]
        elif isinstance(ev, ResponseHead):
            head = ev
            relayed = relay_response_head(
                ev, method=method, client_version=client_version, keep_client=keep_client()
            )
            keep = relayed.keep_client
            chunked = relayed.framing.kind is BodyKind.CHUNKED
            pieces.append(relayed.wire)
            count.status = ev.status
        elif isinstance(ev, InterimResponse):
            interim = relay_interim(ev, client_version)
            if interim is not None:
                pieces.append(interim)
        else:  # CONNECTION_CLOSED: the upstream closed between messages, before our head
            failure = _failed(Failure.CLOSED, head, received)
            break
    # What was read before the failure (1xx, the head, body pieces) still goes out.
    if pieces and not await _send(client, client_clock, pieces, idle_seconds):
        return _failed(Failure.CLIENT_GONE, head, received)
    return failure


async def _send(
    client: trio.abc.SendStream, clock: TimedStream, pieces: list[bytes], idle_seconds: float
) -> bool:
    """One write of `pieces`; False when the client is gone or does not read in time."""
    clock.send_deadline = trio.current_time() + idle_seconds
    try:
        await client.send_all(pieces[0] if len(pieces) == 1 else b"".join(pieces))
    except (*_BROKEN, trio.TooSlowError):
        return False
    return True
