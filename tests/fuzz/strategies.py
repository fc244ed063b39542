"""Hypothesis strategies for the fuzz targets: raw bytes, the committed corpus mutated,
and (for HTTP) heads assembled from the lines that smuggling and normalization attacks use.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from hypothesis import strategies as st

__all__ = ["CORPUS", "corpus", "http_heads", "inputs_for", "mutated"]

CORPUS = Path(__file__).parent / "corpus"

# Header lines an attacker reaches for: framing, Host and identity look-alikes, whitespace
# and case tricks, obs-fold, bare CR/LF, control bytes.
_LINES = [
    b"Host: svc.ns",
    b"Host: svc.ns:443",
    b"Host: internal.svc.",
    b"Host: [::1]:80",
    b"Host:",
    b"Host: a b",
    b"host: other",
    b"Content-Length: 0",
    b"Content-Length: 5",
    b"Content-Length: 05",
    b"Content-Length: 5, 5",
    b"Content-Length: +5",
    b"Content-Length : 5",
    b"content-length:5",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding:\tchunked",
    b"Transfer-Encoding: xchunked",
    b"Transfer_Encoding: chunked",
    b"Content_Length: 5",
    b"X-Forwarded-Client-Cert: By=spiffe://evil",
    b"Connection: close",
    b"Connection: keep-alive, Upgrade",
    b"Upgrade: h2c",
    b"Expect: 100-continue",
    b"X: a\x00b",
    b"X: a\rb",
    b" folded",
    b"\tfolded",
    b"X-Role: admin",
    b"Content-Type: application/json",
]
_REQUEST_LINES = [
    b"GET / HTTP/1.1",
    b"POST /v1/renew HTTP/1.1",
    b"GET /a/../admin HTTP/1.1",
    b"GET /%2e%2e/admin HTTP/1.1",
    b"GET //admin HTTP/1.0",
    b"GET http://svc/ HTTP/1.1",
    b"GET * HTTP/1.1",
    b"get / HTTP/1.1",
    b"GET / HTTP/1.2",
    b"GET /a#b HTTP/1.1",
    b"GET  / HTTP/1.1",
    b"CONNECT svc:443 HTTP/1.1",
    b"PATCH /x?y=%zz HTTP/1.1",
]
_EOLS = [b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n"]
_BODIES = [b"", b"hello", b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]


@st.composite
def http_heads(draw: st.DrawFn) -> bytes:
    """A request head (and maybe a body) from attack lines, mostly well terminated."""
    line = draw(st.sampled_from(_REQUEST_LINES))
    fields = draw(st.lists(st.sampled_from(_LINES), max_size=6))
    eols = [draw(st.sampled_from(_EOLS)) for _ in range(len(fields) + 1)]
    head = line + b"".join(eol + f for eol, f in zip(eols, fields, strict=False)) + eols[-1]
    return head + b"\r\n" + draw(st.sampled_from(_BODIES))


@cache
def corpus(target: str) -> tuple[bytes, ...]:
    directory = CORPUS / target
    if not directory.is_dir():
        return (b"",)
    return tuple(path.read_bytes() for path in sorted(directory.iterdir())) or (b"",)


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    """A corpus input with a few random edits: flip, insert, delete, or splice."""
    data = bytearray(draw(st.sampled_from(corpus(target))))
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        if edit == "flip" and data:
            at = min(where, len(data) - 1)
            data[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        else:
            other = draw(st.sampled_from(corpus(target)))
            data[where:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


def inputs_for(target: str) -> st.SearchStrategy[bytes]:
    choices = [st.binary(max_size=512), mutated(target)]
    if target in ("http_request", "ca_request", "http_response"):
        choices.append(http_heads())
    return st.one_of(*choices)
