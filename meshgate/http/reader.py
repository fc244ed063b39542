"""Incremental, sans-IO readers: bytes in, events out. No sockets, no trio.

`RequestReader` reads what a client sends (keep-alive and pipelined requests, bodies framed
by Content-Length or chunked); `ResponseReader` reads what an upstream answers. Usage:

    reader.feed(data)            # or reader.feed_eof() when the peer closed
    while (event := reader.next_event()) is not NEED_DATA: ...

Pipelined requests come out one at a time: a bad second request cannot hide a good first
one, and nothing of the bad one is handed out. Errors are sticky (fail closed): after an
`HttpError`, every call raises it again. We decide message boundaries ourselves, so the
request that is authorized is byte for byte the one that is forwarded.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from typing import Final, TypeVar, final

from meshgate.http.errors import HttpError
from meshgate.http.events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    Event,
    Framing,
    HttpLimits,
    InterimResponse,
    RequestHead,
    ResponseHead,
)
from meshgate.http.head import _HEADER_RE, parse_request_head, parse_response_head

__all__ = ["RequestReader", "ResponseReader"]

_BARE_LF_RE: Final = re.compile(rb"(?<!\r)\n")
# Heads a connection repeats (a keep-alive client sends the same few requests, an app the
# same few responses) are parsed once each: parsing is a pure function of the bytes and the
# limits (and, for a response, of whether it answers HEAD: those are not kept), so the same
# bytes get the same verdict. Errors are never kept (they are sticky anyway). Small, so an
# idle connection stays small; heads over `_MEMO_HEAD_BYTES` are parsed every time.
_MEMO_ENTRIES: Final = 4
_MEMO_HEAD_BYTES: Final = 1024
_Verdict = TypeVar("_Verdict")
_END: Final = EndOfMessage()  # immutable and field-less: one instance serves every message
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE_RE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*)[ \t]*"
)


def _remember(
    memo: dict[bytes, _Verdict] | None, head: bytes, verdict: _Verdict
) -> dict[bytes, _Verdict] | None:
    """`memo` (made on first use) with `verdict` kept for `head`; see `_MEMO_ENTRIES`."""
    if len(head) > _MEMO_HEAD_BYTES:
        return memo
    if memo is None:
        memo = {}
    elif len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    memo[head] = verdict
    return memo


class _State(enum.Enum):
    HEAD = enum.auto()
    LENGTH = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()
    TRAILERS = enum.auto()
    UNTIL_CLOSE = enum.auto()
    END = enum.auto()  # EndOfMessage is due
    CLOSED = enum.auto()


class _Reader:
    """Buffer and body framing shared by both readers; subclasses parse heads."""

    _status: int  # status hint for the peer's protocol errors (a class attribute)
    # No __dict__: one reader lives as long as each client and app connection.
    __slots__ = (
        "_body_seen",
        "_buf",
        "_eof",
        "_error",
        "_keep_alive",
        "_limits",
        "_pos",
        "_remaining",
        "_scanned",
        "_state",
    )

    def __init__(self, limits: HttpLimits) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: HttpError | None = None
        self._state = _State.HEAD
        self._scanned = 0  # head bytes already searched for the terminator
        self._remaining = 0  # body bytes left (LENGTH) or chunk bytes left (CHUNK_DATA)
        self._body_seen = 0
        self._keep_alive = True

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet consumed; a shell stops reading while this is large."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise ValueError("feed() after feed_eof()")
        if self._state is _State.CLOSED:
            return  # nothing more is read on this connection
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def next_event(self) -> Event:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except HttpError as exc:
            self._error = exc
            self._state = _State.CLOSED
            raise

    def _next(self) -> Event:
        raise NotImplementedError

    # -- head ------------------------------------------------------------------------

    def _take_head(self) -> bytes | None:
        """The next complete head (without CRLF CRLF), or None while incomplete."""
        buf, start = self._buf, self._pos
        cap = self._limits.max_head_bytes
        from_ = max(start, start + self._scanned - 3)
        end = buf.find(b"\r\n\r\n", from_, start + cap + 4)
        if end < 0:
            available = len(buf) - start
            if _BARE_LF_RE.search(buf, from_):
                raise HttpError(self._status, "bare LF in the head")
            self._check_incomplete_head(available)
            if available >= cap + 4:
                raise HttpError(
                    431 if self._status == 400 else self._status, f"head over {cap} bytes"
                )
            self._scanned = available
            return None
        self._scanned = 0
        self._pos = end + 4
        return bytes(buf[start:end])

    def _head_or_event(self, closed_inside: str) -> bytes | Event:
        """The next head, or the event that stands instead: closed, need data, or a body
        event while a message body is still being read. EOF inside a head is an error."""
        if self._state is _State.CLOSED:
            return CONNECTION_CLOSED
        if self._state is not _State.HEAD:
            return self._body_event()
        head = self._take_head()
        if head is not None:
            return head
        if not self._eof:
            return NEED_DATA
        if self._pos == len(self._buf):
            self._state = _State.CLOSED
            return CONNECTION_CLOSED
        raise HttpError(self._status, closed_inside)

    def _check_incomplete_head(self, available: int) -> None:
        """Hook to fail early on an unfinished head."""

    # -- body ------------------------------------------------------------------------

    def _start_body(self, framing: Framing) -> None:
        self._body_seen = 0
        kind = framing.kind
        if kind is BodyKind.LENGTH and framing.length:
            self._state, self._remaining = _State.LENGTH, framing.length
        elif kind is BodyKind.CHUNKED:
            self._state = _State.CHUNK_SIZE
        elif kind is BodyKind.UNTIL_CLOSE:
            self._state = _State.UNTIL_CLOSE
        else:
            self._state = _State.END

    def take_buffered_body(self) -> bytes | None:
        """The rest of the current message's body, and its end, in one call: when it is
        framed by Content-Length (or there is none) and all of it is buffered. Otherwise
        None, and nothing changed: read it as events. The same state change as the `Data`
        and `EndOfMessage` events it stands for (a small request usually comes whole)."""
        state = self._state
        if state is _State.END:
            body = b""
        elif state is _State.LENGTH and len(self._buf) - self._pos >= self._remaining:
            start = self._pos
            self._pos = start + self._remaining
            self._remaining = 0
            body = bytes(self._buf[start : self._pos])
        else:
            return None
        self._state = _State.HEAD if self._keep_alive else _State.CLOSED
        return body

    def _take(self, n: int) -> Data:
        start = self._pos
        self._pos = start + n
        return Data(bytes(self._buf[start : start + n]))

    def _body_event(self) -> Event:
        """One body event, or NEED_DATA. Called in every state but HEAD and CLOSED."""
        available = len(self._buf) - self._pos
        state = self._state
        if state is _State.LENGTH or state is _State.CHUNK_DATA:
            if not available:
                return self._need_body()
            n = min(available, self._remaining)
            self._remaining -= n
            if not self._remaining:
                self._state = _State.END if state is _State.LENGTH else _State.CHUNK_END
            return self._take(n)
        if state is _State.UNTIL_CLOSE:
            if available:
                return self._take(available)
            if self._eof:
                self._state = _State.END
                self._keep_alive = False
                return self._body_event()
            return NEED_DATA
        if state is _State.END:
            self._state = _State.HEAD if self._keep_alive else _State.CLOSED
            return _END
        if state is _State.CHUNK_SIZE:
            return self._chunk_size() or self._body_event()
        if state is _State.CHUNK_END:
            if available < 2:
                return self._need_body()
            if self._buf[self._pos : self._pos + 2] != b"\r\n":
                raise HttpError(self._status, "chunk data not followed by CRLF")
            self._pos += 2
            self._state = _State.CHUNK_SIZE
            return self._body_event()
        if state is _State.TRAILERS:
            return self._trailers() or self._body_event()
        raise AssertionError(state)

    def _need_body(self) -> Event:
        if self._eof:
            raise HttpError(self._status, "connection closed inside a message body")
        return NEED_DATA

    def _chunk_size(self) -> Event | None:
        buf, start = self._buf, self._pos
        cap = self._limits.max_chunk_line_bytes
        end = buf.find(b"\r\n", start, start + cap + 2)
        if end < 0:
            if len(buf) - start >= cap + 2:
                raise HttpError(self._status, f"chunk size line over {cap} bytes")
            return self._need_body()
        line = bytes(buf[start:end])
        m = _CHUNK_LINE_RE.fullmatch(line)
        if m is None:
            raise HttpError(self._status, "malformed chunk size line")
        size = int(m.group(1), 16)
        self._body_seen += size
        cap_body = self._limits.max_body_bytes
        if cap_body is not None and self._body_seen > cap_body:
            raise HttpError(
                413 if self._status == 400 else self._status, f"body over {cap_body} bytes"
            )
        self._pos = end + 2
        if size:
            self._state, self._remaining = _State.CHUNK_DATA, size
        else:
            self._state = _State.TRAILERS
        return None

    def _trailers(self) -> Event | None:
        """Validate the trailer section (same rules as header lines) and drop it."""
        buf, start = self._buf, self._pos
        if len(buf) - start >= 2 and buf[start : start + 2] == b"\r\n":
            self._pos = start + 2
            self._state = _State.END
            return None
        cap = self._limits.max_head_bytes
        end = buf.find(b"\r\n\r\n", start, start + cap + 4)
        if end < 0:
            if _BARE_LF_RE.search(buf, start):
                raise HttpError(self._status, "bare LF in the trailers")
            if len(buf) - start >= cap + 4:
                raise HttpError(self._status, f"trailers over {cap} bytes")
            return self._need_body()
        section = bytes(buf[start:end])
        lines = section.split(b"\r\n")
        if section.count(b"\n") != len(lines) - 1 or section.count(b"\r") != len(lines) - 1:
            raise HttpError(self._status, "bare CR or LF in the trailers")
        if len(lines) > self._limits.max_headers:
            raise HttpError(self._status, f"more than {self._limits.max_headers} trailers")
        for line in lines:
            if _HEADER_RE.fullmatch(line) is None:
                raise HttpError(self._status, "malformed trailer line")
        self._pos = end + 4
        self._state = _State.END
        return None


@final
class RequestReader(_Reader):
    """Reads requests from a client connection. Fails closed: see the module docstring."""

    __slots__ = ("_memo",)
    _status = 400

    def __init__(self, limits: HttpLimits | None = None) -> None:
        super().__init__(limits or HttpLimits())
        self._memo: dict[bytes, RequestHead] | None = None  # see `_MEMO_ENTRIES`

    def _next(self) -> Event:
        head = self._head_or_event("connection closed inside a request head")
        if not isinstance(head, bytes):
            return head
        memo = self._memo
        request = memo.get(head) if memo is not None else None
        if request is None:
            request = parse_request_head(head, self._limits)
            self._memo = _remember(memo, head, request)
        self._keep_alive = request.keep_alive
        self._start_body(request.framing)
        return request

    def _check_incomplete_head(self, available: int) -> None:
        # A request line that is already too long gets 414 without waiting for the rest.
        line_end = self._buf.find(b"\r\n", self._pos, self._pos + available)
        if line_end < 0 and available > self._limits.max_request_line_bytes:
            raise HttpError(
                414, f"request line longer than {self._limits.max_request_line_bytes} bytes"
            )


@final
class ResponseReader(_Reader):
    """Reads an upstream's responses, in the order of the requests sent on that connection.

    Call `expect(method)` for every request written, before its response can be read: the
    method decides whether a body follows (HEAD). Fails closed with status hint 502.
    """

    __slots__ = ("_memo", "_pending")
    _status = 502

    def __init__(self, limits: HttpLimits | None = None) -> None:
        super().__init__(limits or HttpLimits(max_body_bytes=None))
        self._pending: deque[str] = deque()
        # Responses to requests other than HEAD (their framing depends on the head only).
        self._memo: dict[bytes, ResponseHead | InterimResponse] | None = None

    def expect(self, method: str) -> None:
        self._pending.append(method)

    def _next(self) -> Event:
        head = self._head_or_event("upstream closed inside a response head")
        if not isinstance(head, bytes):
            return head
        if not self._pending:
            raise HttpError(502, "upstream sent a response to no request")
        method = self._pending[0]
        memo = self._memo
        response = memo.get(head) if memo is not None and method != "HEAD" else None
        if response is None:
            response = parse_response_head(head, self._limits, method)
            if method != "HEAD":
                self._memo = _remember(memo, head, response)
        if isinstance(response, InterimResponse):
            return response
        self._pending.popleft()
        self._keep_alive = response.keep_alive
        self._start_body(response.framing)
        return response
