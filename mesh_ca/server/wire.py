"""The CA's HTTP/1.1 on the shared core (`meshgate.http`). Pure: bytes in, values out.

Requests are read by the sidecar's own strict reader (`meshgate.http.RequestReader`: the
same code and the same rules, `meshgate/http/rules.py` and `head.py`, with llhttp as a
second opinion), so the CA and the sidecar cannot drift apart on what a request head may
hold (issue 12 item 10). Responses are written by the shared serializer
(`serialize_response_head`). The CA then refuses more than the sidecar, never less:

- Transfer-Encoding is refused (501): the API's bodies are small JSON framed by
  Content-Length;
- a second Content-Type is refused (400), so the body is never read as another type than
  the one checked.

Errors are `WireError` with the status the peer should get (then the close).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

from meshgate.errors import ProtocolError
from meshgate.http import (
    NEED_DATA,
    BodyKind,
    Framing,
    HttpError,
    HttpLimits,
    RequestReader,
    serialize_response_head,
)
from meshgate.http import RequestHead as HttpRequestHead

__all__ = [
    "CaHeads",
    "RequestHead",
    "WireError",
    "ca_head",
    "ca_limits",
    "parse_request_head",
    "render_response",
]

_MAX_REQUEST_LINE_BYTES: Final = 8 * 1024
_SERVER_HEADERS: Final = (("server", "meshgate-ca"), ("cache-control", "no-store"))
_CLOSE: Final = (("connection", "close"),)
_NO_LENGTH: Final = Framing(BodyKind.NONE)
# Heads without their Content-Length line, by (status, content type, headers, close).
_HEADS: dict[tuple[int, str, tuple[tuple[str, str], ...], bool], bytes] = {}
_MAX_HEADS: Final = 256
_MAX_CONNECTION_HEADS: Final = 4
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class WireError(ProtocolError, ValueError):
    """The peer sent bytes we refuse; `status` is the response it gets (then the close)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def of(cls, exc: HttpError) -> WireError:
        """The shared reader's refusal, as the CA reports it."""
        return cls(exc.status_hint, exc.reason)


@final
@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: dict[str, str]  # lowercased names; a repeated header keeps its last value
    content_length: int
    keep_alive: bool
    size: int = 0  # bytes of the head including the blank line (`parse_request_head`)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def ca_limits(*, max_head_bytes: int = 16 * 1024, max_headers: int = 64) -> HttpLimits:
    """The shared reader's caps for the CA. No body cap here: the shell refuses a long
    Content-Length itself (413 `body_too_large`, from `server.max_body_bytes`)."""
    return HttpLimits(
        max_head_bytes=max_head_bytes,
        max_headers=max_headers,
        max_request_line_bytes=min(_MAX_REQUEST_LINE_BYTES, max_head_bytes),
        max_body_bytes=None,
    )


def ca_head(head: HttpRequestHead, size: int = 0) -> RequestHead:
    """A head the shared reader accepted, checked against the CA's extra rules."""
    if head.framing.kind is BodyKind.CHUNKED:
        raise WireError(501, "transfer-encoding is not supported; send Content-Length")
    headers: dict[str, str] = {}
    content_types = 0
    for name, value in head.headers:
        headers[name] = value
        if name == "content-type":
            content_types += 1
    if content_types > 1:
        raise WireError(400, "more than one Content-Type")
    length = head.framing.length if head.framing.kind is BodyKind.LENGTH else 0
    return RequestHead(head.method, head.target, headers, length, head.keep_alive, size)


@final
class CaHeads:
    """`ca_head` for one connection. A keep-alive client repeats a few heads, and the shared
    reader then hands out the same `RequestHead` object again (it parses each distinct head
    once); the CA's view of each is kept beside it, for at most `_MAX_CONNECTION_HEADS`."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        # id -> (the head, the CA's view): the head is held, so its id is not reused.
        self._seen: dict[int, tuple[HttpRequestHead, RequestHead]] = {}

    def of(self, head: HttpRequestHead) -> RequestHead:
        seen = self._seen.get(id(head))
        if seen is not None and seen[0] is head:
            return seen[1]
        ours = ca_head(head)
        if len(self._seen) >= _MAX_CONNECTION_HEADS:
            self._seen.clear()
        self._seen[id(head)] = (head, ours)
        return ours


def parse_request_head(
    buffer: bytes | bytearray, *, max_bytes: int = 16 * 1024, max_headers: int = 64
) -> RequestHead | None:
    """The request head at the start of `buffer`, or None when more bytes are needed. One
    request, read by a fresh shared reader (the admin listener, tests, the fuzz targets;
    the API server keeps one reader per connection)."""
    reader = RequestReader(ca_limits(max_head_bytes=max_bytes, max_headers=max_headers))
    reader.feed(bytes(buffer))
    try:
        event = reader.next_event()
    except HttpError as exc:
        raise WireError.of(exc) from None
    if event is NEED_DATA:
        return None
    assert isinstance(event, HttpRequestHead), event  # a fresh reader's first event
    return ca_head(event, len(buffer) - reader.buffered_bytes)


def render_response(
    status: int,
    body: bytes,
    content_type: str,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    close: bool = False,
) -> bytes:
    """A complete response (head and body) as one buffer: one TLS write, one send.

    The shared serializer writes every distinct head once: the CA answers with a handful
    of them (status, content type, Retry-After, close), so each is kept without its
    Content-Length line, which the serializer writes last, just before the blank line."""
    key = (status, content_type, headers, close)
    prefix = _HEADS.get(key)
    if prefix is None:
        prefix = serialize_response_head(
            status,
            _REASONS.get(status, "Error"),
            (
                ("content-type", content_type),
                *_SERVER_HEADERS,
                *headers,
                *(_CLOSE if close else ()),
            ),
            _NO_LENGTH,
        )[:-2]  # without the blank line
        if len(_HEADS) < _MAX_HEADS:
            _HEADS[key] = prefix
    return b"%bcontent-length: %d\r\n\r\n%b" % (prefix, len(body), body)
