"""The response-head rule both sidecars relay with (`meshgate.http.relay`). Pure."""

from __future__ import annotations

import pytest

from meshgate.http.events import BodyKind, Framing, InterimResponse, ResponseHead
from meshgate.http.relay import head_length, relay_interim, relay_response_head

LENGTH_5 = Framing(BodyKind.LENGTH, 5)


def _resp(framing: Framing, *headers: tuple[str, str], status: int = 200) -> ResponseHead:
    return ResponseHead(status, "OK", "1.1", headers, framing, keep_alive=True)


def test_a_1xx_loses_hop_by_hop_headers_and_those_its_connection_names() -> None:
    interim = InterimResponse(
        103,
        "Early Hints",
        (
            ("link", "</a.css>; rel=preload"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-thing", "p"),
        ),
    )
    assert relay_interim(interim, "1.1") == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
    )


def test_an_http10_client_gets_no_1xx() -> None:
    assert relay_interim(InterimResponse(100, "Continue", ()), "1.0") is None


def test_head_keeps_the_upstream_content_length_but_no_body() -> None:
    resp = _resp(Framing(BodyKind.NONE), ("content-length", "5"), ("x-a", "b"))
    relayed = relay_response_head(resp, method="HEAD", client_version="1.1", keep_client=True)
    assert relayed.wire == b"HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 5\r\n\r\n"
    assert relayed.framing.kind is BodyKind.NONE
    assert relayed.keep_client


@pytest.mark.parametrize("value", ["5, 5", "-1", "0x5", "1" * 19])
def test_head_drops_a_content_length_that_is_not_one_plain_number(value: str) -> None:
    resp = _resp(Framing(BodyKind.NONE), ("content-length", value))
    assert head_length(resp).kind is BodyKind.NONE


def test_an_http10_client_that_asked_is_kept_alive_and_told_so() -> None:
    relayed = relay_response_head(
        _resp(LENGTH_5), method="GET", client_version="1.0", keep_client=True
    )
    assert relayed.wire == (
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\n"
    )
    assert relayed.keep_client


def test_a_chunked_body_goes_to_an_http10_client_until_close() -> None:
    relayed = relay_response_head(
        _resp(Framing(BodyKind.CHUNKED)), method="GET", client_version="1.0", keep_client=True
    )
    assert relayed.framing.kind is BodyKind.UNTIL_CLOSE
    assert not relayed.keep_client
    assert relayed.wire == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"


def test_a_body_until_close_is_chunked_for_an_http11_client_that_stays() -> None:
    relayed = relay_response_head(
        _resp(Framing(BodyKind.UNTIL_CLOSE)), method="GET", client_version="1.1", keep_client=True
    )
    assert relayed.framing.kind is BodyKind.CHUNKED
    assert relayed.keep_client
    assert relayed.wire == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_client_the_caller_will_not_keep_is_told_close(version: str) -> None:
    resp = _resp(LENGTH_5, ("connection", "keep-alive"), ("keep-alive", "timeout=5"))
    relayed = relay_response_head(resp, method="GET", client_version=version, keep_client=False)
    assert relayed.wire == b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\n"
    assert not relayed.keep_client


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_carry_no_framing_header(status: int) -> None:
    resp = _resp(Framing(BodyKind.NONE), ("etag", '"v"'), status=status)
    relayed = relay_response_head(resp, method="GET", client_version="1.1", keep_client=True)
    assert relayed.wire == b'HTTP/1.1 %d OK\r\netag: "v"\r\n\r\n' % status
    assert relayed.keep_client
