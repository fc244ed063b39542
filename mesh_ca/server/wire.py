"""A small strict HTTP/1.1 request reader and response writer for the CA API. Pure: bytes in,
values out; no trio, no sockets.

The CA API needs much less than a general HTTP server: small JSON bodies framed by
Content-Length, keep-alive, a handful of headers. h11 did the same job at ~90 µs a request;
this reader does it in a few µs, and refuses everything it does not need rather than
interpreting it (the sidecar has its own, fuller parser; `mesh_ca` never imports it):

- the request line is ``METHOD SP origin-form-target SP HTTP/1.1`` (or ``HTTP/1.0``);
- lines end in CRLF: a bare LF or CR is an error, obs-fold (a line starting with SP or HTAB)
  is an error, a header name is a token and a value holds no control bytes but HTAB;
- the body is framed by Content-Length only: Transfer-Encoding is refused (501), several
  different Content-Lengths or a non-decimal one are refused (400);
- the header block and the header count have their own caps (431), independent of how
  many bytes a read returns; an HTTP/1.1 request needs a Host header.

Errors are `WireError` with the status the peer should get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

__all__ = ["RequestHead", "WireError", "parse_request_head", "render_response"]

# Origin-form targets only, printable ASCII without "#" (a fragment never goes on the wire).
_REQUEST_LINE: Final = re.compile(rb"([A-Z]{1,16}) (/[!-\x22\x24-~]*) HTTP/1\.([01])")
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
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


class WireError(ValueError):
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
    lines = bytes(buffer[:end]).split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        if b"\n" in lines[0] or b"\r" in lines[0]:
            raise WireError(400, "bare LF or CR in the request line")
        raise WireError(400, "request line is not 'METHOD /path HTTP/1.1'")
    if len(lines) - 1 > max_headers:
        raise WireError(431, f"more than {max_headers} header fields")
    headers: dict[str, str] = {}
    lengths: set[bytes] = set()
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise WireError(400, "obsolete line folding in the header block")
        if b"\n" in line or b"\r" in line:
            raise WireError(400, "bare LF or CR in the header block")
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise WireError(400, f"malformed header line {line[:40]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise WireError(400, f"control byte in the {name.decode()} header")
        key = name.decode("ascii").lower()
        if key == "content-length":
            lengths.add(value)
        headers[key] = value.decode("latin-1")
    if "transfer-encoding" in headers:
        raise WireError(501, "transfer-encoding is not supported; send Content-Length")
    length = 0
    if lengths:
        if len(lengths) > 1:
            raise WireError(400, "conflicting Content-Length headers")
        text = lengths.pop()
        if not text.isdigit() or len(text) > 12:
            raise WireError(400, "Content-Length is not a decimal number")
        length = int(text)
    minor = match.group(3)
    if minor == b"1" and "host" not in headers:
        raise WireError(400, "HTTP/1.1 request without a Host header")
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if minor == b"1" else "keep-alive" in connection
    return RequestHead(
        match.group(1).decode("ascii"),
        match.group(2).decode("ascii"),
        headers,
        length,
        keep_alive,
        end + 4,
    )


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
