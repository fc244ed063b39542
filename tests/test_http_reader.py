"""RequestReader and ResponseReader: one table of accepted and rejected inputs, read whole
and byte by byte; plus serializer round trips and response framing."""

from __future__ import annotations

import pytest

from meshgate.http import (
    CONNECTION_CLOSED,
    LAST_CHUNK,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    Event,
    Framing,
    HttpError,
    HttpLimits,
    InterimResponse,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
)
from tests.http_helpers import drain, read_bytewise, read_requests

NONE = Framing(BodyKind.NONE)
CHUNKED = Framing(BodyKind.CHUNKED)


def head(
    method: str = "GET",
    target: str = "/",
    headers: tuple[tuple[str, str], ...] = (("host", "a"),),
    framing: Framing = NONE,
    version: str = "1.1",
    keep_alive: bool = True,
) -> RequestHead:
    return RequestHead(method, target, version, headers, framing, keep_alive)


# (id, bytes on the wire, events expected after EOF)
ACCEPTED: list[tuple[str, bytes, list[Event]]] = [
    (
        "simple get",
        b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n",
        [head(target="/x?y=1"), EndOfMessage(), CONNECTION_CLOSED],
    ),
    (
        "header names lowercased, values stripped, order kept",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-B:  two  \r\nX-A:\tone\r\nX-Empty:\r\n\r\n",
        [
            head(headers=(("host", "a"), ("x-b", "two"), ("x-a", "one"), ("x-empty", ""))),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
    (
        "content-length body",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        [
            head(
                "POST",
                "/p",
                (("host", "a"), ("content-length", "5")),
                Framing(BodyKind.LENGTH, 5),
            ),
            Data(b"hello"),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
    (
        "content-length zero",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        [
            head("POST", "/", (("host", "a"), ("content-length", "0")), Framing(BodyKind.LENGTH)),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
    (
        "chunked with extensions and trailers",
        (
            b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
            b'5;name=val;q="x y"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n'
        ),
        [
            head("PUT", "/", (("host", "a"), ("transfer-encoding", "Chunked")), CHUNKED),
            Data(b"hello world"),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
    (
        "pipelined keep-alive requests",
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        [
            head(target="/1"),
            EndOfMessage(),
            head(target="/2"),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
    (
        "connection close ends the connection, later bytes ignored",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        [
            head(headers=(("host", "a"), ("connection", "close")), keep_alive=False),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
    (
        "http/1.0 without host closes",
        b"GET / HTTP/1.0\r\n\r\n",
        [head(headers=(), version="1.0", keep_alive=False), EndOfMessage(), CONNECTION_CLOSED],
    ),
    (
        "http/1.0 keep-alive",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        [
            head(headers=(("connection", "keep-alive"),), version="1.0"),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
    (
        "obs-text in a value survives",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-T: caf\xe9\r\n\r\n",
        [head(headers=(("host", "a"), ("x-t", "caf\xe9"))), EndOfMessage(), CONNECTION_CLOSED],
    ),
    (
        "upgrade header is an ordinary header to us",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        [
            head(headers=(("host", "a"), ("connection", "upgrade"), ("upgrade", "websocket"))),
            EndOfMessage(),
            CONNECTION_CLOSED,
        ],
    ),
]

# (id, bytes, status hint). Nothing of a rejected request may come out.
REJECTED: list[tuple[str, bytes, int]] = [
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare LF in a header", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("bare CR in a header", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n  z\r\n\r\n", 400),
    ("obs-fold with tab", b"GET / HTTP/1.1\r\nHost: a\r\n\tz\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("invalid header name", b"GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", 400),
    ("empty header name", b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400),
    ("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    ("DEL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400),
    ("ESC in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n", 400),
    (
        "CL and TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "TE and CL",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        400,
    ),
    (
        "duplicate equal CL",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("signed CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    (
        "huge CL digits",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n",
        400,
    ),
    (
        "CL over the body cap",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n",
        413,
    ),
    ("TE not chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (
        "TE chunked not final",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "TE gzip, chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    (
        "TE chunked twice",
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        ),
        400,
    ),
    ("TE empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400),
    ("TE with junk", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("fragment", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute-form", b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("authority-form", b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("non-ascii target", b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("backslash in target", b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bad percent in target", b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    ("HTTP/0.9 style", b"GET /\r\n\r\n", 400),
    ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    ("unknown method", b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ("TRACE", b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ("lowercase method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ("invalid method chars", b"G{T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("two spaces in request line", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("leading empty line", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("missing host on 1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad host", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("oversize head", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"v" * 17000 + b"\r\n\r\n", 431),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 100 + b"\r\n", 431),
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (
        "chunk size not hex",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    (
        "chunk size overflow",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n",
        400,
    ),
    (
        "chunk size negative",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
        400,
    ),
    (
        "chunk size over body cap",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
        413,
    ),
    (
        "chunk size bare LF",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk data without CRLF",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk extension with control byte",
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;a=\x01\r\nabc\r\n0\r\n\r\n"
        ),
        400,
    ),
    (
        "chunk size line too long",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;"
        + b"a" * 5000
        + b"\r\n",
        400,
    ),
    (
        "obs-fold in trailers",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n 2\r\n\r\n",
        400,
    ),
    ("truncated body at EOF", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc", 400),
    ("truncated head at EOF", b"GET / HTTP/1.1\r\nHost: a\r\n", 400),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_accepted_requests_give_the_expected_events(data: bytes, expected: list[Event]) -> None:
    assert read_requests(data, eof=True) == expected
    assert read_bytewise(data, eof=True) == expected


@pytest.mark.parametrize(
    ("data", "status"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rejected_requests_raise_with_the_right_status(data: bytes, status: int) -> None:
    for read in (read_requests, read_bytewise):
        with pytest.raises(HttpError) as info:
            read(data, eof=True)
        assert info.value.status_hint == status, info.value.reason


def test_errors_are_sticky_and_earlier_requests_still_come_out() -> None:
    reader = RequestReader()
    reader.feed(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n")
    assert reader.next_event() == head(target="/ok")
    assert reader.next_event() == EndOfMessage()
    with pytest.raises(HttpError) as first:
        reader.next_event()
    with pytest.raises(HttpError) as again:
        reader.next_event()
    assert again.value is first.value


def test_bare_lf_is_refused_before_the_head_is_complete() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\nHost: a\n")  # no blank line yet: a lenient server would wait
    with pytest.raises(HttpError, match="bare LF"):
        reader.next_event()


def test_head_cap_applies_without_a_terminator_and_is_configurable() -> None:
    reader = RequestReader(HttpLimits(max_head_bytes=1024, max_request_line_bytes=512))
    reader.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200)
    with pytest.raises(HttpError) as info:
        reader.next_event()
    assert info.value.status_hint == 431


def test_header_count_cap_is_configurable() -> None:
    reader = RequestReader(HttpLimits(max_headers=3))
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n")
    assert isinstance(reader.next_event(), RequestHead)
    reader = RequestReader(HttpLimits(max_headers=3))
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    with pytest.raises(HttpError) as info:
        reader.next_event()
    assert info.value.status_hint == 431


def test_chunked_body_over_the_cap_is_refused_across_chunks() -> None:
    reader = RequestReader(HttpLimits(max_body_bytes=10))
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    reader.feed(b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n")
    assert isinstance(reader.next_event(), RequestHead)
    assert reader.next_event() == Data(b"abcdef")
    with pytest.raises(HttpError) as info:
        reader.next_event()
    assert info.value.status_hint == 413


def test_need_data_until_the_head_is_complete() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHo")
    assert reader.next_event() is NEED_DATA
    reader.feed(b"st: a\r\n\r\n")
    assert reader.next_event() == head()


def test_serialized_request_parses_to_the_same_head() -> None:
    headers = (("host", "a"), ("x-y", "z"))
    for framing in (NONE, Framing(BodyKind.LENGTH, 3), CHUNKED):
        wire = serialize_request_head("POST", "/p?q", headers, framing)
        body = {BodyKind.LENGTH: b"abc", BodyKind.CHUNKED: encode_chunk(b"abc") + LAST_CHUNK}
        events = read_requests(wire + body.get(framing.kind, b""), eof=True)
        parsed = events[0]
        assert isinstance(parsed, RequestHead)
        assert (parsed.method, parsed.target, parsed.framing) == ("POST", "/p?q", framing)
        assert (
            tuple(h for h in parsed.headers if h[0] not in ("content-length", "transfer-encoding"))
            == headers
        )


def test_serializer_refuses_what_must_not_go_out() -> None:
    with pytest.raises(ValueError, match="value"):
        serialize_request_head("GET", "/", (("x", "a\r\nInjected: 1"),), NONE)
    with pytest.raises(ValueError, match="token"):
        serialize_request_head("GET", "/", (("x y", "1"),), NONE)
    with pytest.raises(ValueError, match="origin-form"):
        serialize_request_head("GET", "/a b", (), NONE)
    with pytest.raises(ValueError, match="control"):
        serialize_response_head(200, "OK\r\nX: 1", (), NONE)


# -- responses -----------------------------------------------------------------------


def read_responses(data: bytes, methods: list[str], *, eof: bool = True) -> list[Event]:
    reader = ResponseReader()
    for method in methods:
        reader.expect(method)
    reader.feed(data)
    if eof:
        reader.feed_eof()
    return drain(reader)


def test_response_with_content_length_then_keep_alive() -> None:
    events = read_responses(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ["GET", "GET"],
    )
    assert [type(e) for e in events] == [
        ResponseHead,
        Data,
        EndOfMessage,
        ResponseHead,
        EndOfMessage,
        type(CONNECTION_CLOSED),
    ]
    first = events[0]
    assert isinstance(first, ResponseHead)
    assert (first.status, first.reason, first.keep_alive) == (200, "OK", True)


def test_response_to_head_and_204_304_have_no_body() -> None:
    events = read_responses(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n",
        ["HEAD", "GET", "GET"],
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage] * 3 + [type(CONNECTION_CLOSED)]


def test_response_until_close_and_chunked() -> None:
    events = read_responses(b"HTTP/1.1 200 OK\r\n\r\nall of it", ["GET"])
    assert events[1:] == [Data(b"all of it"), EndOfMessage(), CONNECTION_CLOSED]
    resp = events[0]
    assert isinstance(resp, ResponseHead)
    assert resp.framing.kind is BodyKind.UNTIL_CLOSE
    assert not resp.keep_alive
    events = read_responses(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", ["GET"]
    )
    assert events[1:] == [Data(b"ab"), EndOfMessage(), CONNECTION_CLOSED]


def test_interim_responses_precede_the_final_one() -> None:
    events = read_responses(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        ["POST"],
    )
    assert events[0] == InterimResponse(100, "Continue", ())
    assert events[1] == InterimResponse(103, "Early Hints", (("link", "</a>"),))
    assert isinstance(events[2], ResponseHead)
    assert events[2].status == 201


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # closed early
    ],
)
def test_bad_upstream_responses_are_502(data: bytes) -> None:
    with pytest.raises(HttpError) as info:
        read_responses(data, ["GET"])
    assert info.value.status_hint == 502


def test_a_response_to_no_request_is_502() -> None:
    with pytest.raises(HttpError, match="no request"):
        read_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", [])


def test_response_serializer_round_trip() -> None:
    wire = serialize_response_head(200, "OK", (("x", "1"),), Framing(BodyKind.LENGTH, 2))
    events = read_responses(wire + b"hi", ["GET"])
    resp = events[0]
    assert isinstance(resp, ResponseHead)
    assert (resp.status, resp.reason, resp.framing.length) == (200, "OK", 2)
