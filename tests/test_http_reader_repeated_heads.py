"""A connection that repeats its heads: the reader parses each distinct head once and hands
out the same verdict for the same bytes; a head that differs by one byte is read afresh.
And a buffered Content-Length body taken in one call (`take_buffered_body`)."""

from __future__ import annotations

import pytest

from mesh_ca.server.wire import CaHeads, ca_head, ca_limits
from meshgate.http import (
    CONNECTION_CLOSED,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    HttpError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
)

GET = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
POST = (
    b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


def _head(reader: RequestReader) -> RequestHead:
    event = reader.next_event()
    assert isinstance(event, RequestHead), event
    return event


def test_a_repeated_head_is_parsed_once_and_gives_the_same_verdict() -> None:
    reader = RequestReader()
    reader.feed(GET * 3)
    heads = []
    for _ in range(3):
        heads.append(_head(reader))
        assert reader.next_event() == EndOfMessage()
    assert heads[0] is heads[1] is heads[2]
    assert heads[0].target == "/a"


def test_a_head_that_differs_by_one_byte_is_parsed_afresh_and_refused() -> None:
    reader = RequestReader()
    reader.feed(GET)
    _head(reader)
    reader.next_event()
    # The same head with a space before the colon: never accepted, whatever came before.
    reader.feed(GET.replace(b"Host:", b"Host :"))
    with pytest.raises(HttpError, match="whitespace before the colon"):
        reader.next_event()
    with pytest.raises(HttpError):  # still sticky
        reader.next_event()


def test_a_refused_head_is_refused_again_on_another_connection() -> None:
    bad = b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    for _ in range(2):
        reader = RequestReader()
        reader.feed(bad)
        with pytest.raises(HttpError, match="exactly one Host"):
            reader.next_event()


def test_more_distinct_heads_than_kept_are_all_read_correctly() -> None:
    reader = RequestReader()
    seen: dict[str, RequestHead] = {}
    for target in [f"/t{i}" for i in range(7)] * 2:  # 7 distinct heads, 4 places
        reader.feed(f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        head = _head(reader)
        assert head.target == target
        assert head == seen.get(target, head)
        seen[target] = head
        assert reader.next_event() == EndOfMessage()
    reader.feed(b"GET /t6 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert _head(reader) is seen["/t6"]  # the last ones are still kept


def test_a_long_head_is_parsed_every_time() -> None:
    long_head = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 2000 + b"\r\n\r\n"
    reader = RequestReader()
    reader.feed(long_head * 2)
    first = _head(reader)
    reader.next_event()
    second = _head(reader)
    assert first == second
    assert first is not second


def test_the_framing_and_persistence_of_a_remembered_head_apply_again() -> None:
    close = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    reader = RequestReader()
    reader.feed(POST + POST)
    for _ in range(2):
        head = _head(reader)
        assert head.framing.length == 2
        assert reader.next_event() == Data(b"{}")
        assert reader.next_event() == EndOfMessage()
    reader.feed(close + b"abc" + close + b"abc")
    assert _head(reader).keep_alive is False
    assert reader.next_event() == Data(b"abc")
    assert reader.next_event() == EndOfMessage()
    assert reader.next_event() is CONNECTION_CLOSED  # nothing after a close is read


# -- take_buffered_body --------------------------------------------------------------


def test_a_buffered_body_comes_whole_in_one_call_and_the_next_head_follows() -> None:
    reader = RequestReader()
    reader.feed(POST + GET)
    _head(reader)
    assert reader.take_buffered_body() == b"{}"
    assert _head(reader).method == "GET"
    assert reader.take_buffered_body() == b""  # no body: just its end
    assert reader.next_event() is NEED_DATA


def test_a_body_not_yet_whole_is_left_to_the_events() -> None:
    reader = RequestReader()
    reader.feed(POST[:-1])
    _head(reader)
    assert reader.take_buffered_body() is None  # nothing changed
    assert reader.next_event() == Data(b"{")
    reader.feed(b"}")
    assert reader.take_buffered_body() == b"}"  # the rest, and the end
    assert reader.next_event() is NEED_DATA


def test_a_chunked_body_is_left_to_the_events() -> None:
    reader = RequestReader()
    reader.feed(
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    _head(reader)
    assert reader.take_buffered_body() is None
    assert reader.next_event() == Data(b"{}")


def test_after_a_closing_request_nothing_more_is_read() -> None:
    reader = RequestReader()
    reader.feed(b"POST /a HTTP/1.0\r\nContent-Length: 1\r\n\r\nx" + GET)
    _head(reader)
    assert reader.take_buffered_body() == b"x"
    assert reader.next_event() is CONNECTION_CLOSED
    assert reader.take_buffered_body() is None


def test_between_messages_there_is_no_body_to_take() -> None:
    reader = RequestReader()
    assert reader.take_buffered_body() is None
    reader.feed(GET)
    assert reader.take_buffered_body() is None  # the head is not read yet
    _head(reader)


# -- the CA's view of a remembered head ------------------------------------------------


def test_the_ca_keeps_its_view_of_each_head_the_reader_repeats() -> None:
    reader = RequestReader(ca_limits())
    heads = CaHeads()
    reader.feed(POST * 2)
    first = _head(reader)
    view = heads.of(first)
    assert view == ca_head(first)
    assert view.content_length == 2
    assert view.content_type == "application/json"
    reader.take_buffered_body()
    second = _head(reader)
    assert second is first
    assert heads.of(second) is view
    other = RequestReader(ca_limits())
    other.feed(POST)
    fresh = _head(other)  # equal, but another object: its own view
    assert fresh is not first
    assert heads.of(fresh) is not view
    assert heads.of(fresh) == view


# -- responses -------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def _response(reader: ResponseReader) -> ResponseHead:
    event = reader.next_event()
    assert isinstance(event, ResponseHead), event
    return event


def test_a_repeated_response_head_is_parsed_once() -> None:
    reader = ResponseReader()
    reader.expect("GET")
    reader.expect("GET")
    reader.feed(OK + OK)
    first = _response(reader)
    assert reader.next_event() == Data(b"hi")
    assert reader.next_event() == EndOfMessage()
    assert _response(reader) is first


def test_a_response_to_head_is_never_taken_from_a_get() -> None:
    # The same bytes answering HEAD carry no body: the verdict differs, so it is not kept.
    reader = ResponseReader()
    for method in ("GET", "HEAD", "GET"):
        reader.expect(method)
    reader.feed(OK)
    get = _response(reader)
    assert get.framing.length == 2
    assert reader.next_event() == Data(b"hi")
    assert reader.next_event() == EndOfMessage()
    reader.feed(OK[: -len(b"hi")])
    head = _response(reader)
    assert head.framing.kind is BodyKind.NONE
    assert head is not get
    assert reader.next_event() == EndOfMessage()
    reader.feed(OK)
    assert _response(reader) is get


def test_a_response_head_that_differs_by_one_byte_is_refused() -> None:
    reader = ResponseReader()
    reader.expect("GET")
    reader.expect("GET")
    reader.feed(OK)
    _response(reader)
    reader.next_event()
    reader.next_event()
    reader.feed(OK.replace(b"Content-Length:", b"Content-Length :"))
    with pytest.raises(HttpError, match="whitespace before the colon"):
        reader.next_event()
