"""The strict HTTP/1.1 request rules of the one request reader (`head.py`, `reader.py`). Pure.

One place for what a request head may hold (issue 12: the CA once took two identical
Content-Lengths and two Hosts, last one winning, which the sidecar refused). Since issue 13
the CA reads requests with the sidecar's `RequestReader` itself (`mesh_ca/server/wire.py`
adds the CA's extra refusals: no chunked bodies, one Content-Type), so there is one reader
and these rules are applied by one piece of code. `tests/test_http_rules_shared.py` and the
fuzz targets check that whatever the sidecar refuses the CA refuses too.

The rules:
- lines end in CRLF; a bare CR or LF anywhere in the head is refused;
- a header name is a token (RFC 9110 section 5.6.2), with nothing between it and the
  colon; a value holds no control byte but HTAB (obs-text 0x80-0xFF is allowed);
- the target is origin-form: ``/`` then RFC 3986 path and query characters, percent
  escapes well formed, no ``#``;
- exactly one Host in HTTP/1.1 (at most one in 1.0), of RFC 3986 authority syntax;
- at most one Content-Length, even when the copies agree, of 1 to 18 decimal digits.

Each check returns the value it validated or raises `HttpRuleError` with the status the
peer should get and a reason naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from meshgate.errors import ProtocolError

__all__ = [
    "BAD_PERCENT_RE",
    "CONTENT_LENGTH_RE",
    "HOST_RE",
    "ORIGIN_TARGET_RE",
    "TOKEN",
    "TOKEN_RE",
    "HttpRuleError",
    "check_field_value",
    "check_line_endings",
    "check_origin_target",
    "content_length",
    "single_host",
]

# RFC 9110 token characters (header names, methods).
TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN_RE: Final = re.compile(TOKEN.decode())
# RFC 3986 characters of an origin-form target (path-abempty ["?" query]).
ORIGIN_TARGET_RE: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
BAD_PERCENT_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
# A Host value: an IP literal or a reg-name, then an optional port (syntax only; the
# sidecar canonicalizes it further for policy).
HOST_RE: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?")
CONTENT_LENGTH_RE: Final = re.compile(r"[0-9]{1,18}")
_BAD_VALUE_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class HttpRuleError(ProtocolError, ValueError):
    """The head breaks a rule; `status` is the response the peer gets, then the close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_line_endings(head: bytes | bytearray, what: str = "request") -> None:
    """Every CR and LF in `head` pairs up as CRLF."""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf:
        raise HttpRuleError(400, f"bare LF in the {what} head")
    if head.count(b"\r") != crlf:
        raise HttpRuleError(400, f"bare CR in the {what} head")


def check_field_value(name: str, value: str) -> None:
    """No control byte but HTAB in a header value (latin-1 text, one code point a byte)."""
    if _BAD_VALUE_RE.search(value):
        raise HttpRuleError(400, f"control byte in the value of {name[:40]!r}")


def check_origin_target(raw: str, max_bytes: int) -> str:
    """An origin-form target: refused with 414 when longer than `max_bytes`, else 400."""
    if len(raw) > max_bytes:
        raise HttpRuleError(414, f"target longer than {max_bytes} bytes")
    if "#" in raw:
        raise HttpRuleError(400, "'#' (fragment) in the target")
    if not raw.startswith("/"):
        if raw == "*":
            raise HttpRuleError(400, "asterisk-form target is not supported")
        if "://" in raw:
            raise HttpRuleError(400, "absolute-form target is not accepted; send origin-form")
        raise HttpRuleError(400, "target is not origin-form")
    if not ORIGIN_TARGET_RE.fullmatch(raw):
        raise HttpRuleError(400, "character not allowed in the target")
    if BAD_PERCENT_RE.search(raw):
        raise HttpRuleError(400, "malformed percent-encoding in the target")
    return raw


def single_host(values: Sequence[str], version: str) -> str | None:
    """The one Host value (None for an HTTP/1.0 request without one)."""
    if len(values) > 1 or (version == "1.1" and not values):
        raise HttpRuleError(400, "an HTTP/1.1 request needs exactly one Host header")
    if not values:
        return None
    if not HOST_RE.fullmatch(values[0]):
        raise HttpRuleError(400, "malformed Host header")
    return values[0]


def content_length(values: Sequence[str]) -> int | None:
    """The body length from the Content-Length values (None without one). Two copies are
    refused even when equal: RFC 9112 lets a recipient merge them, and a reader that does
    while another does not is how request smuggling starts."""
    if not values:
        return None
    if len(values) > 1:
        raise HttpRuleError(400, "more than one Content-Length")
    if not CONTENT_LENGTH_RE.fullmatch(values[0]):
        raise HttpRuleError(400, "Content-Length is not a decimal number")
    return int(values[0])
