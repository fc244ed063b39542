"""One request-body pump for both http directions: client → upstream, re-framed by us.

The inbound sidecar (mesh peer → app) and the outbound one (app → mesh peer) move a request
body the same way: take `Data` / `EndOfMessage` from the strict `RequestReader`, send each
piece on (as a chunk when the body is chunked, then the last chunk), and read more from the
client only when the reader needs it, by the nearer of two deadlines: the idle pause
(``body_idle_timeout_seconds``) and the pace a body must keep (`BodyPace`). Until the
upstream has started answering, every piece sent restarts its response wait, so a slow
upload is never mistaken for a silent upstream.

Errors say which side failed: `BodyTimeoutError` (the client paused or trickled: 408),
`ClientGoneError` (the client reset or closed the connection), `HttpError` from the reader
(a malformed body: the client's fault). A failed send to the upstream raises what the
upstream's stream raised (`trio.BrokenResourceError` …), so the caller can still read an
early answer (an app that refuses an upload with 413 before reading it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal, Protocol

import trio

from meshgate.errors import TransportError
from meshgate.http import LAST_CHUNK, NEED_DATA, Data, EndOfMessage, RequestReader, encode_chunk
from meshgate.http.body_pace import BodyPace
from meshgate.transport.socket_stream import TimedStream
from sidecar.transport.client_gone import ClientGoneError

__all__ = ["BodyCount", "BodyTimeoutError", "pump_body"]

_READ: Final = 64 * 1024


class BodyTimeoutError(TransportError):
    """The client paused longer than the idle timeout (`idle`) or fell behind the pace
    (`slow`)."""

    def __init__(self, kind: Literal["idle", "slow"]) -> None:
        super().__init__(kind)
        self.kind: Literal["idle", "slow"] = kind


class BodyCount(Protocol):
    """Where the pump counts the body bytes it moved (the caller's access record)."""

    bytes_in: int


def _never() -> bool:
    return False


async def pump_body(
    reader: RequestReader,
    source: trio.abc.ReceiveStream,
    source_clock: TimedStream,
    sink: trio.abc.SendStream,
    count: BodyCount,
    *,
    chunked: bool,
    idle_seconds: float,
    pace: BodyPace,
    answer_clock: TimedStream | None = None,
    answer_seconds: float = 0.0,
    answered: Callable[[], bool] = _never,
) -> None:
    """Move one request body from `source` (read through `reader`) to `sink`.

    `source_clock` is the stream whose ``receive_deadline`` bounds reads of `source` (the
    socket under a TLS stream, or `source` itself). With `answer_clock`, each piece sent
    before `answered()` moves its receive deadline to ``now + answer_seconds``.
    """
    began = trio.current_time()
    while True:
        ev = reader.next_event()
        if ev is NEED_DATA:
            pause_ends = trio.current_time() + idle_seconds
            too_slow = pace.deadline(began, count.bytes_in)
            source_clock.receive_deadline = min(pause_ends, too_slow)
            try:
                data = await source.receive_some(_READ)
            except trio.TooSlowError:
                raise BodyTimeoutError("idle" if pause_ends <= too_slow else "slow") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGoneError("client_gone") from exc
            if data:
                reader.feed(bytes(data))
            else:
                reader.feed_eof()
            continue
        if isinstance(ev, Data):
            count.bytes_in += len(ev.data)
            await sink.send_all(encode_chunk(ev.data) if chunked else ev.data)
        elif isinstance(ev, EndOfMessage):
            if chunked:
                await sink.send_all(LAST_CHUNK)
        else:  # the reader ends a body with EndOfMessage or an HttpError, never otherwise
            raise ClientGoneError("client_closed_in_body")
        if answer_clock is not None and not answered():
            answer_clock.extend_receive_deadline(trio.current_time() + answer_seconds)
        if isinstance(ev, EndOfMessage):
            return
