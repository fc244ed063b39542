"""The CA server's strict HTTP/1.1 request reader: what it accepts, what it refuses and how."""

from __future__ import annotations

import pytest

from mesh_ca.server.wire import _REASONS, WireError, parse_request_head, render_response
from meshgate.http import BodyKind, Framing, serialize_response_head

GOOD = b"POST /v1/renew?x=1 HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n"


def test_a_complete_head_gives_method_path_headers_length_and_size() -> None:
    data = GOOD + b"Content-Length: 2\r\n\r\n{}" + b"GET /healthz HTTP/1.1\r\n"
    head = parse_request_head(data)
    assert head is not None
    assert (head.method, head.target, head.path) == ("POST", "/v1/renew?x=1", "/v1/renew")
    assert head.headers["content-type"] == "application/json"
    assert (head.content_length, head.keep_alive) == (2, True)
    assert data[head.size : head.size + 2] == b"{}"


def test_an_incomplete_head_needs_more_bytes() -> None:
    assert parse_request_head(GOOD) is None
    assert parse_request_head(b"") is None


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"POST /v1/renew HTTP/1.1\nHost: ca\r\n\r\n", 400, "bare LF"),
        (GOOD + b"X-A: 1\nX-B: 2\r\n\r\n", 400, "bare LF"),
        (GOOD + b"X-A: 1\r\n  folded\r\n\r\n", 400, "folding"),
        (GOOD + b"Transfer-Encoding: chunked\r\n\r\n", 501, "transfer-encoding"),
        (GOOD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n", 400, "more than one"),
        # The same rules as the sidecar (meshgate/http/rules.py): no merging of equal copies,
        # no second Host (the last one used to win), Host syntax, RFC 3986 targets.
        (GOOD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n", 400, "more than one"),
        (GOOD + b"Host: evil\r\n\r\n", 400, "exactly one Host"),
        (GOOD + b"Content-Type: text/plain\r\n\r\n", 400, "more than one Content-Type"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "malformed Host"),
        (b"GET /a\\b HTTP/1.1\r\nHost: ca\r\n\r\n", 400, "character not allowed"),
        (b"GET /a%zz HTTP/1.1\r\nHost: ca\r\n\r\n", 400, "percent-encoding"),
        (b"GET / HTTP/1.1\r\nHost: ca\rX: 1\r\n\r\n", 400, "bare CR"),
        (GOOD + b"Content-Length: -1\r\n\r\n", 400, "decimal"),
        (GOOD + b"Content-Length: 0x10\r\n\r\n", 400, "decimal"),
        (GOOD + b"X-A: a\x01b\r\n\r\n", 400, "control byte"),
        (GOOD + b"Bad Name: 1\r\n\r\n", 400, "malformed header"),
        (b"POST /v1/renew HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400, "Host"),
        (b"POST http://ca/v1/renew HTTP/1.1\r\nHost: ca\r\n\r\n", 400, "absolute-form"),
        (b"POST /a#b HTTP/1.1\r\nHost: ca\r\n\r\n", 400, "fragment"),
        (b"POST /a HTTP/2\r\nHost: ca\r\n\r\n", 400, "request line"),
        # The sidecar's rule since the CA reads with its reader: an unknown method (methods
        # are case-sensitive) is 501, as RFC 9110 section 9.1 says, not 400.
        (b"post /v1/renew HTTP/1.1\r\nHost: ca\r\n\r\n", 501, "method 'post' is not supported"),
    ],
)
def test_bad_heads_are_refused_with_a_status(data: bytes, status: int, message: str) -> None:
    with pytest.raises(WireError, match=message) as caught:
        parse_request_head(data)
    assert caught.value.status == status


def test_header_block_and_count_have_their_own_caps() -> None:
    with pytest.raises(WireError) as caught:
        parse_request_head(GOOD + b"X: " + b"a" * 200, max_bytes=128)
    assert caught.value.status == 431
    many = GOOD + b"".join(b"X-%d: 1\r\n" % i for i in range(10)) + b"\r\n"
    with pytest.raises(WireError, match="more than 8 header fields") as caught:
        parse_request_head(many, max_headers=8)
    assert caught.value.status == 431


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [("1.1", "", True), ("1.1", "close", False), ("1.0", "", False), ("1.0", "keep-alive", True)],
)
def test_keep_alive_follows_the_version_and_connection_header(
    version: str, connection: str, keep_alive: bool
) -> None:
    extra = f"Connection: {connection}\r\n" if connection else ""
    data = f"GET /healthz HTTP/{version}\r\nHost: ca\r\n{extra}\r\n".encode()
    head = parse_request_head(data)
    assert head is not None
    assert head.keep_alive is keep_alive


def test_a_response_is_one_buffer_with_length_and_close() -> None:
    data = render_response(429, b"{}", "application/json", (("retry-after", "3"),), close=True)
    head, body = data.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"content-length: 2\r\n" in head + b"\r\n"
    assert b"retry-after: 3" in head
    assert b"\r\nconnection: close\r\n" in head + b"\r\n"
    assert body == b"{}"


@pytest.mark.parametrize(
    ("status", "headers", "close"),
    [(200, (), False), (429, (("retry-after", "3"),), True), (405, (("allow", "POST"),), False)],
)
def test_a_response_is_byte_for_byte_the_shared_serializers_also_from_the_head_cache(
    status: int, headers: tuple[tuple[str, str], ...], close: bool
) -> None:
    body = b'{"status":"ok"}'
    expected = (
        serialize_response_head(
            status,
            _REASONS[status],
            (
                ("content-type", "application/json"),
                ("server", "meshgate-ca"),
                ("cache-control", "no-store"),
                *headers,
                *((("connection", "close"),) if close else ()),
            ),
            Framing(BodyKind.LENGTH, len(body)),
        )
        + body
    )
    for _ in range(2):  # the second answer comes from the cached head
        assert render_response(status, body, "application/json", headers, close=close) == expected
    assert render_response(status, b"", "application/json", headers, close=close).endswith(
        b"content-length: 0\r\n\r\n"
    )
