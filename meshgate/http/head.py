"""Strict parsing of one complete message head (request or response). Fails closed.

The reader finds the head's end (CRLF CRLF) and hands the bytes here. Every rule of
DESIGN.md is checked by our own code, whatever llhttp would tolerate: bare CR or LF,
obs-fold, control bytes, header-name syntax, `#` and non-origin targets, CL with TE,
duplicate CL, TE other than a single final `chunked`, TE on HTTP/1.0, caps, versions and
methods, and in requests `_` look-alikes of the headers we own (`header_names.py`).
Then llhttp (httptools) parses the same bytes as a second opinion: the head is accepted
only when both parsers accept it and agree on every field. Chosen by measurement,
see docs/http-parser.md.
"""

from __future__ import annotations

import re
from typing import Final

import httptools

from meshgate.http import rules
from meshgate.http.errors import HttpError
from meshgate.http.events import (
    NO_BODY,
    BodyKind,
    Framing,
    Headers,
    HttpLimits,
    InterimResponse,
    RequestHead,
    ResponseHead,
)
from meshgate.http.header_names import check_look_alikes

__all__ = ["parse_request_head", "parse_response_head"]

# Character-level rules shared with the CA's reader (meshgate/http/rules.py).
_TOKEN: Final = rules.TOKEN
_TOKEN_STR_RE: Final = rules.TOKEN_RE
_REQUEST_LINE_RE: Final = re.compile(
    "(" + _TOKEN.decode() + r") ([\x21-\x7e\x80-\xff]+) HTTP/([0-9])\.([0-9])"
)
_STATUS_LINE_RE: Final = re.compile(
    r"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?"
)
# Linear on purpose (no nested quantifiers; values are stripped afterwards). Header lines
# are matched as latin-1 text, one code point per byte. No CR or LF can hide in a value.
_HEADER_LINE: Final = _TOKEN.decode() + r":[\t\x20-\x7e\x80-\xff]*"
_HEADER_LINE_RE: Final = re.compile(_HEADER_LINE)
_HEADER_BLOCK_RE: Final = re.compile(r"(?:" + _HEADER_LINE + r"\r\n)*")
_HEADER_RE: Final = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
# Name and value (without surrounding spaces and tabs) of each line of a checked block.
_HEADER_PAIR_RE: Final = re.compile(
    "(" + _TOKEN.decode() + r"):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r\n"
)
_SPECIAL_NAMES: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_TARGET_RE: Final = rules.ORIGIN_TARGET_RE
_HOST_RE: Final = rules.HOST_RE
_CONTENT_LENGTH_RE: Final = rules.CONTENT_LENGTH_RE
_RESPONSE_ERROR: Final = 502
# Framing is immutable: small lengths (most messages) share one instance each.
_CACHED_LENGTHS: Final = 4096
_LENGTHS: dict[int, Framing] = {}


def _fail(status: int, reason: str) -> HttpError:
    return HttpError(status, reason)


def _check_line_endings(head: bytes, status: int, what: str) -> None:
    """Every CR and LF in `head` (without the final CRLF CRLF) must pair up as CRLF."""
    try:
        rules.check_line_endings(head, what)
    except rules.HttpRuleError as exc:
        raise _fail(status, exc.reason) from None


def _diagnose_header_line(line: str, index: int, status: int) -> HttpError:
    """Why a header line failed the block regex (slow path, errors only)."""
    where = f"header line {index}"
    if line[:1] in (" ", "\t"):
        return _fail(status, f"{where}: obsolete line folding (obs-fold)")
    name, colon, _ = line.partition(":")
    if not colon:
        return _fail(status, f"{where}: no colon")
    if not name:
        return _fail(status, f"{where}: empty header name")
    if name != name.rstrip(" \t"):
        return _fail(status, f"{where}: whitespace before the colon")
    if not _TOKEN_STR_RE.fullmatch(name):
        return _fail(status, f"{where}: malformed header line, the name is not a token")
    return _fail(status, f"{where}: control byte in the value of {name[:40]!r}")


def _parse_headers(block: str, limits: HttpLimits, status: int) -> Headers:
    """Header lines (latin-1 text, each ending in CRLF) to (lowercase name, value) pairs."""
    if not block:
        return ()
    if block.count("\r\n") > limits.max_headers:
        raise _fail(
            431 if status == 400 else status, f"more than {limits.max_headers} header fields"
        )
    if _HEADER_BLOCK_RE.fullmatch(block) is None:
        for index, line in enumerate(block.split("\r\n"), start=1):
            if _HEADER_LINE_RE.fullmatch(line) is None:
                raise _diagnose_header_line(line, index, status)
        raise AssertionError("header block rejected but every line passes")
    # The block regex fixed every line's shape; one C-level pass splits and strips them.
    return tuple([(name.lower(), value) for name, value in _HEADER_PAIR_RE.findall(block)])


def _special(headers: Headers) -> dict[str, list[str]]:
    """The values of the headers that decide framing, routing and persistence."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        if name in _SPECIAL_NAMES:
            found.setdefault(name, []).append(value)
    return found


def _comma_tokens(values: list[str]) -> list[str]:
    return [item.strip().lower() for v in values for item in v.split(",") if item.strip()]


def _framing(
    special: dict[str, list[str]], version: str, limits: HttpLimits, status: int
) -> Framing:
    """Body framing from CL / TE, refusing every ambiguous combination."""
    lengths = special.get("content-length")
    te = special.get("transfer-encoding")
    if te is not None:
        if version == "1.0":
            raise _fail(status, "Transfer-Encoding in an HTTP/1.0 message")
        if lengths:
            raise _fail(status, "both Content-Length and Transfer-Encoding")
        codings = _comma_tokens(te)
        if not codings or codings[-1] != "chunked":
            raise _fail(status, "Transfer-Encoding does not end in chunked")
        if "chunked" in codings[:-1]:
            raise _fail(status, "chunked applied more than once")
        if len(codings) > 1:
            # gzip, chunked and the like: we re-frame bodies, so we cannot carry them.
            raise _fail(501 if status == 400 else status, "transfer codings other than chunked")
        return Framing(BodyKind.CHUNKED)
    if not lengths:
        return NO_BODY
    if len(lengths) > 1:
        raise _fail(status, "more than one Content-Length")
    if not _CONTENT_LENGTH_RE.fullmatch(lengths[0]):
        raise _fail(status, "Content-Length is not a decimal number")
    length = int(lengths[0])
    if limits.max_body_bytes is not None and length > limits.max_body_bytes:
        raise _fail(413 if status == 400 else status, f"body over {limits.max_body_bytes} bytes")
    framing = _LENGTHS.get(length)
    if framing is None:
        framing = Framing(BodyKind.LENGTH, length)
        if length < _CACHED_LENGTHS:
            _LENGTHS[length] = framing
    return framing


def _keep_alive(special: dict[str, list[str]], version: str) -> bool:
    tokens = _comma_tokens(special.get("connection", []))
    if "close" in tokens:
        return False
    return version == "1.1" or "keep-alive" in tokens


class _Collector:
    """llhttp callbacks: only what we compare. No on_header: a Python call per header would
    double the cost, and our block regex has already fixed every header line's shape."""

    __slots__ = ("complete", "url")

    def __init__(self) -> None:
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.complete = True


def _second_opinion(head: bytes, *, request: bool, status: int) -> _Collector:
    """Parse the same head with llhttp; refuse unless it accepts it too."""
    sink = _Collector()
    parser = httptools.HttpRequestParser(sink) if request else httptools.HttpResponseParser(sink)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # llhttp stops after an Upgrade head; we ignore upgrades and strip the header
    except httptools.HttpParserError as exc:
        raise _fail(status, f"llhttp rejects the head: {exc}") from exc
    if not sink.complete:
        raise _fail(status, "llhttp did not finish the head")
    return sink


def _check_target(raw: str, limits: HttpLimits) -> str:
    try:
        return rules.check_origin_target(raw, limits.max_request_line_bytes)
    except rules.HttpRuleError as exc:
        raise _fail(exc.status, exc.reason) from None


def parse_request_head(head: bytes, limits: HttpLimits) -> RequestHead:
    """Parse and check one request head (`head` excludes the final CRLF CRLF). Fails closed:
    anything doubtful raises `HttpError` and nothing of the request is returned."""
    _check_line_endings(head, 400, "request")
    text = head.decode("latin-1")
    line, _, block = text.partition("\r\n")
    if len(line) > limits.max_request_line_bytes:
        raise _fail(414, f"request line longer than {limits.max_request_line_bytes} bytes")
    m = _REQUEST_LINE_RE.fullmatch(line)
    if m is None:
        raise _fail(400, "malformed request line")
    method, raw_target, major, minor = m.groups()
    version = f"{major}.{minor}"
    if version not in ("1.0", "1.1"):
        raise _fail(505, f"HTTP/{version} is not supported")
    if method not in limits.allowed_methods:
        raise _fail(501, f"method {method[:16]!r} is not supported")
    target = _check_target(raw_target, limits)
    headers = _parse_headers(block + "\r\n" if block else "", limits, 400)
    if "_" in block:  # rare: only then can a name be a look-alike of one we own
        check_look_alikes(headers)
    special = _special(headers)
    hosts = special.get("host", [])
    if len(hosts) > 1 or (version == "1.1" and not hosts):
        raise _fail(400, "an HTTP/1.1 request needs exactly one Host header")
    if hosts and not _HOST_RE.fullmatch(hosts[0]):
        raise _fail(400, "malformed Host header")
    framing = _framing(special, version, limits, 400)
    sink = _second_opinion(head + b"\r\n\r\n", request=True, status=400)
    if sink.url != raw_target.encode("ascii"):
        raise _fail(400, "the two parsers disagree on the target")
    return RequestHead(method, target, version, headers, framing, _keep_alive(special, version))


def parse_response_head(
    head: bytes, limits: HttpLimits, request_method: str
) -> ResponseHead | InterimResponse:
    """Parse and check an upstream response head. Fails closed with 502 (upstream's fault).

    `request_method` is the method of the request it answers: a response to HEAD, a 1xx,
    204 or 304 has no body whatever its headers say (RFC 9112 section 6.3).
    """
    _check_line_endings(head, _RESPONSE_ERROR, "response")
    text = head.decode("latin-1")
    line, _, block = text.partition("\r\n")
    m = _STATUS_LINE_RE.fullmatch(line)
    if m is None:
        raise _fail(_RESPONSE_ERROR, "malformed status line")
    major, minor, raw_status, raw_reason = m.groups()
    version = f"{major}.{minor}"
    if version not in ("1.0", "1.1"):
        raise _fail(_RESPONSE_ERROR, f"upstream answered HTTP/{version}")
    status = int(raw_status)
    if status < 100:
        raise _fail(_RESPONSE_ERROR, f"status {status} out of range")
    reason = raw_reason or ""
    headers = _parse_headers(block + "\r\n" if block else "", limits, _RESPONSE_ERROR)
    _second_opinion(head + b"\r\n\r\n", request=False, status=_RESPONSE_ERROR)
    if status == 101:
        raise _fail(_RESPONSE_ERROR, "upstream switched protocols, which we never ask for")
    if status < 200:
        return InterimResponse(status, reason, headers)
    special = _special(headers)
    if request_method == "HEAD" or status in (204, 304):
        framing = NO_BODY
        if status == 204 and ("content-length" in special or "transfer-encoding" in special):
            raise _fail(_RESPONSE_ERROR, "204 response with body framing headers")
    else:
        framing = _framing(special, version, limits, _RESPONSE_ERROR)
        if framing.kind is BodyKind.NONE:
            framing = Framing(BodyKind.UNTIL_CLOSE)
    keep_alive = _keep_alive(special, version) and framing.kind is not BodyKind.UNTIL_CLOSE
    return ResponseHead(status, reason, version, headers, framing, keep_alive)
