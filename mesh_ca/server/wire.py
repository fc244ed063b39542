"""A small strict HTTP/1.1 request reader and response writer for the CA API. Pure: bytes in,
values out; no trio, no sockets.

The CA API needs much less than a general HTTP server: small JSON bodies framed by
Content-Length, keep-alive, a handful of headers. h11 did the same job at ~90 µs a request;
this reader does it in a few µs, and refuses everything it does not need rather than
interpreting it. It applies the same rules as the sidecar's reader (`meshgate.http.rules`,
which both import; `mesh_ca` never imports `sidecar`) and refuses more:

- the request line is ``METHOD SP origin-form-target SP HTTP/1.1`` (or ``HTTP/1.0``), the
  method upper-case letters only;
- lines end in CRLF: a bare LF or CR is an error, obs-fold (a line starting with SP or HTAB)
  is an error, a header name is a token and a value holds no control bytes but HTAB;
- the body is framed by Content-Length only: Transfer-Encoding is refused (501), a second
  Content-Length (even an equal one) or a non-decimal one is refused (400);
- exactly one Host (HTTP/1.1), at most one Content-Type;
- the header block and the header count have their own caps (431), independent of how
  many bytes a read returns.

Errors are `WireError` with the status the peer should get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

from meshgate.errors import ProtocolError
from meshgate.http import rules
from meshgate.http.rules import HttpRuleError

__all__ = ["RequestHead", "WireError", "parse_request_head", "render_response"]

# The target is checked by the shared rules (origin-form, RFC 3986 characters).
_REQUEST_LINE: Final = re.compile(rb"([A-Z]{1,16}) ([!-~]+) HTTP/1\.([01])")
_TOKEN: Final = re.compile(rules.TOKEN)
# Headers whose every copy is looked at: a second Host, Content-Length or Content-Type is
# refused rather than letting the last one win.
_SPECIAL: Final = frozenset({"host", "content-length", "content-type", "connection"})
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class WireError(ProtocolError, ValueError):
    """The peer sent bytes we refuse; `status` is the response it gets (then the close)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@final
@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: dict[str, str]  # lowercased names; a repeated header keeps its last value
    content_length: int
    keep_alive: bool
    size: int  # bytes of the head including the blank line

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def parse_request_head(
    buffer: bytes | bytearray, *, max_bytes: int = 16 * 1024, max_headers: int = 64
) -> RequestHead | None:
    """The request head at the start of `buffer`, or None when more bytes are needed."""
    end = buffer.find(b"\r\n\r\n", 0, max_bytes + 4)
    if end < 0:
        if len(buffer) > max_bytes:
            raise WireError(431, f"request head larger than {max_bytes} bytes")
        return None
    try:
        return _parse(bytes(buffer[:end]), end + 4, max_bytes, max_headers)
    except HttpRuleError as exc:
        raise WireError(exc.status, exc.reason) from None


def _parse(raw: bytes, size: int, max_bytes: int, max_headers: int) -> RequestHead:
    rules.check_line_endings(raw)
    lines = raw.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise WireError(400, "request line is not 'METHOD /path HTTP/1.1'")
    target = rules.check_origin_target(match.group(2).decode("ascii"), max_bytes)
    if len(lines) - 1 > max_headers:
        raise WireError(431, f"more than {max_headers} header fields")
    headers: dict[str, str] = {}
    special: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise WireError(400, "obsolete line folding in the header block")
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise WireError(400, f"malformed header line {line[:40]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        rules.check_field_value(key, text)
        if key in _SPECIAL:
            special.setdefault(key, []).append(text)
        headers[key] = text
    if "transfer-encoding" in headers:
        raise WireError(501, "transfer-encoding is not supported; send Content-Length")
    if len(special.get("content-type", ())) > 1:
        raise WireError(400, "more than one Content-Type")
    minor = match.group(3)
    version = "1.1" if minor == b"1" else "1.0"
    rules.single_host(special.get("host", []), version)
    length = rules.content_length(special.get("content-length", [])) or 0
    tokens = {item.strip().lower() for v in special.get("connection", ()) for item in v.split(",")}
    keep_alive = "close" not in tokens if minor == b"1" else "keep-alive" in tokens
    return RequestHead(match.group(1).decode("ascii"), target, headers, length, keep_alive, size)


def render_response(
    status: int,
    body: bytes,
    content_type: str,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    close: bool = False,
) -> bytes:
    """A complete response (head and body) as one buffer: one TLS write, one send."""
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"content-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n"
        "server: meshgate-ca\r\n"
        "cache-control: no-store\r\n"
    )
    for name, value in headers:
        head += f"{name}: {value}\r\n"
    if close:
        head += "connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body
