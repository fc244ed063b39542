"""Rebuild message heads from parsed fields; we never forward the bytes we received.

Every field is checked again on the way out (fails closed with `ValueError`: a bad field
here is our bug, not the peer's). Framing headers come from `Framing` only: any
Content-Length or Transfer-Encoding in `headers` is dropped and written anew.
"""

from __future__ import annotations

import re
from typing import Final

from meshgate.http.events import BodyKind, Framing, Headers

__all__ = ["LAST_CHUNK", "encode_chunk", "serialize_request_head", "serialize_response_head"]

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_RE: Final = re.compile(
    r"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)
_TARGET_RE: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_REASON_RE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_BLOCK_RE: Final = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: " + _VALUE_RE.pattern + r"\r\n)*")
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
_CHECKED_NAMES: set[str] = set()  # header names that passed the token check
_CHECKED_NAMES_MAX: Final = 4096
LAST_CHUNK: Final = b"0\r\n\r\n"


def _checked_line(name: str, value: str) -> str:
    """One header line, checked on its own (the slow path: names the bad header)."""
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a token")
    # Bounded: values were capped by the reader or are ours; no nested backtracking risk
    # beyond one line.
    if not _VALUE_RE.fullmatch(value):
        raise ValueError(f"header {name!r} has a value we must not send")
    return f"{name}: {value}\r\n"


def _header_block(headers: Headers, framing: Framing) -> list[bytes]:
    # Fast path: names are checked once per distinct name (a bounded cache), the values
    # by one regex over the whole block. As strict as checking line by line: a name is a
    # token (no colon, no space) and the block holds exactly one CR and one LF per header,
    # so each line the block regex matches is exactly one header.
    lines = []
    for name, value in headers:
        if name in _FRAMING_HEADERS:
            continue
        if name not in _CHECKED_NAMES:
            _checked_line(name, value)
            if len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
                _CHECKED_NAMES.add(name)
        lines.append(f"{name}: {value}\r\n")
    text = "".join(lines)
    count = len(lines)
    if text.count("\r") != count or text.count("\n") != count or not _BLOCK_RE.fullmatch(text):
        text = "".join(_checked_line(n, v) for n, v in headers if n not in _FRAMING_HEADERS)
    out = [text.encode("latin-1")]
    if framing.kind is BodyKind.LENGTH:
        out.append(b"content-length: %d\r\n" % framing.length)
    elif framing.kind is BodyKind.CHUNKED:
        out.append(b"transfer-encoding: chunked\r\n")
    out.append(b"\r\n")
    return out


def serialize_request_head(
    method: str, target: str, headers: Headers, framing: Framing, version: str = "1.1"
) -> bytes:
    """Request line + headers + framing header + CRLF."""
    if not _TOKEN_RE.fullmatch(method):
        raise ValueError(f"method {method!r} is not a token")
    if not _TARGET_RE.fullmatch(target):
        raise ValueError(f"target {target!r} is not origin-form")
    if version not in ("1.0", "1.1"):
        raise ValueError(f"version {version!r}")
    if framing.kind is BodyKind.UNTIL_CLOSE:
        raise ValueError("a request body cannot be delimited by closing")
    if framing.kind is BodyKind.CHUNKED and version == "1.0":
        raise ValueError("chunked framing needs HTTP/1.1")
    line = f"{method} {target} HTTP/{version}\r\n".encode("ascii")
    return b"".join([line, *_header_block(headers, framing)])


def serialize_response_head(
    status: int, reason: str, headers: Headers, framing: Framing, version: str = "1.1"
) -> bytes:
    """Status line + headers + framing header + CRLF. UNTIL_CLOSE writes no framing header:
    the caller closes the connection after the body."""
    if not 100 <= status <= 999:
        raise ValueError(f"status {status}")
    if not _REASON_RE.fullmatch(reason):
        raise ValueError("reason phrase holds control bytes")
    if version not in ("1.0", "1.1"):
        raise ValueError(f"version {version!r}")
    if framing.kind is BodyKind.CHUNKED and version == "1.0":
        raise ValueError("chunked framing needs HTTP/1.1")
    line = f"HTTP/{version} {status} {reason}\r\n".encode("latin-1")
    return b"".join([line, *_header_block(headers, framing)])


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data gives b"" (the end is `LAST_CHUNK`)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
