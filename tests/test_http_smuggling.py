"""Request smuggling forms: each is refused with the right status, and no request of it
comes out of the reader (so nothing is authorized or forwarded), even after a good one."""

from __future__ import annotations

import pytest

from meshgate.http import BodyKind, EndOfMessage, Framing, HttpError, RequestHead, RequestReader

GOOD = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
FIRST = RequestHead(
    "GET", "/first", "1.1", (("host", "a"),), Framing(BodyKind.NONE), keep_alive=True
)

SMUGGLING: list[tuple[str, bytes, int]] = [
    (
        "CL.TE",
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED"
        ),
        400,
    ),
    (
        "TE.CL",
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            b"8\r\nSMUGGLED\r\n0\r\n\r\n"
        ),
        400,
    ),
    (
        "TE obfuscated with a space before the colon",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n",
        400,
    ),
    (
        "duplicate CL, different",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n",
        400,
    ),
    (
        "duplicate CL, same",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    (
        "bare LF hiding a header",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "bare CR hiding a header",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\rContent-Length: 5\r\n\r\n",
        400,
    ),
    (
        "obs-fold continuing TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n",
        400,
    ),
    (
        "TE on HTTP/1.0",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        400,
    ),
    (
        "TE on HTTP/1.0 alone",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "NUL in a header value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00Content-Length: 5\r\n\r\n",
        400,
    ),
    ("control byte in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: \x0b\r\n\r\n", 400),
    ("fragment in the target", b"GET /public#/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (
        "oversize head",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 16384 + b"\r\n\r\n",
        431,
    ),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-N: 1\r\n" * 150 + b"\r\n", 431),
]


@pytest.mark.parametrize(
    ("data", "status"), [c[1:] for c in SMUGGLING], ids=[c[0] for c in SMUGGLING]
)
def test_smuggling_form_is_refused_and_yields_no_request(data: bytes, status: int) -> None:
    reader = RequestReader()
    reader.feed(GOOD + data)
    assert reader.next_event() == FIRST
    assert reader.next_event() == EndOfMessage()
    with pytest.raises(HttpError) as info:
        reader.next_event()
    assert info.value.status_hint == status, info.value.reason
    with pytest.raises(HttpError):  # and it stays refused: nothing more ever comes out
        reader.next_event()
