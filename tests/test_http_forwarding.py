"""Header policy for the next hop and for the Cedar context."""

from __future__ import annotations

import hashlib

import pytest

from meshgate.http import (
    PeerCertificate,
    context_headers,
    forward_request_headers,
    forward_response_headers,
    is_valid_traceparent,
    xfcc_value,
)
from meshgate.identity import SpiffeId

US = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")
PEER = PeerCertificate(SpiffeId.parse("spiffe://example.org/ns/shop/svc/web"), b"leaf-der")
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def names(headers: tuple[tuple[str, str], ...]) -> list[str]:
    return [n for n, _ in headers]


def test_hop_by_hop_and_nominated_headers_are_stripped() -> None:
    out = forward_request_headers(
        (
            ("host", "orders"),
            ("connection", "keep-alive, X-Secret, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
            ("x-request-id", "abc-1"),
            ("accept", "*/*"),
        ),
        our_id=None,
        peer=None,
    )
    # host survives even when Connection names it; framing is re-written by the serializer
    assert out.headers == (("host", "orders"), ("x-request-id", "abc-1"), ("accept", "*/*"))
    assert out.request_id == "abc-1"


def test_spoofed_identity_headers_are_replaced_by_ours() -> None:
    out = forward_request_headers(
        (
            ("host", "orders"),
            (
                "X-Forwarded-Client-Cert".lower(),
                "By=spiffe://evil/x;URI=spiffe://example.org/ns/shop/svc/admin",
            ),
            ("x-spiffe-id", "spiffe://example.org/ns/shop/svc/admin"),
        ),
        our_id=US,
        peer=PEER,
        new_request_id=lambda: "rid-1",
    )
    digest = hashlib.sha256(b"leaf-der").hexdigest()
    assert out.headers == (
        ("host", "orders"),
        ("x-request-id", "rid-1"),
        (
            "x-forwarded-client-cert",
            (
                f"By=spiffe://example.org/ns/shop/svc/orders;Hash={digest};"
                "URI=spiffe://example.org/ns/shop/svc/web"
            ),
        ),
    )
    assert xfcc_value(US, PEER) == out.headers[-1][1]


def test_identity_header_list_is_configurable() -> None:
    out = forward_request_headers(
        (("host", "a"), ("x-user", "root"), ("x-spiffe-id", "kept")),
        our_id=None,
        peer=None,
        identity_headers=["X-User"],
        new_request_id=lambda: "r",
    )
    assert names(out.headers) == ["host", "x-spiffe-id", "x-request-id"]


def test_peer_without_our_id_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="our_id"):
        forward_request_headers((("host", "a"),), our_id=None, peer=PEER)


@pytest.mark.parametrize(
    ("request_ids", "kept"),
    [([], None), (["ok-1"], "ok-1"), (["a", "b"], None), (["bad id\t"], None), (["x" * 200], None)],
)
def test_request_id_is_kept_only_when_single_and_sane(
    request_ids: list[str], kept: str | None
) -> None:
    headers = (("host", "a"), *(("x-request-id", r) for r in request_ids))
    out = forward_request_headers(headers, our_id=None, peer=None, new_request_id=lambda: "gen")
    assert out.request_id == (kept or "gen")
    assert [v for n, v in out.headers if n == "x-request-id"] == [out.request_id]


def test_default_request_id_is_a_uuid4() -> None:
    out = forward_request_headers((("host", "a"),), our_id=None, peer=None)
    assert len(out.request_id) == 36
    assert out.request_id[14] == "4"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACE, True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),
        (TRACE + "-extra", False),  # version 00 has no extra fields
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", False),
        ("garbage", False),
    ],
)
def test_traceparent_validation(value: str, valid: bool) -> None:
    assert is_valid_traceparent(value) is valid


def test_invalid_traceparent_is_dropped_with_its_tracestate() -> None:
    keep = forward_request_headers(
        (("host", "a"), ("traceparent", TRACE), ("tracestate", "k=v")), our_id=None, peer=None
    )
    assert ("traceparent", TRACE) in keep.headers
    assert ("tracestate", "k=v") in keep.headers
    for bad in ((("traceparent", "junk"),), (("traceparent", TRACE), ("traceparent", TRACE))):
        out = forward_request_headers(
            (("host", "a"), *bad, ("tracestate", "k=v")), our_id=None, peer=None
        )
        assert "traceparent" not in names(out.headers)
        assert "tracestate" not in names(out.headers)


def test_response_headers_lose_hop_by_hop_and_framing() -> None:
    assert forward_response_headers(
        (
            ("content-type", "text/plain"),
            ("connection", "close, x-internal"),
            ("x-internal", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("set-cookie", "a=1"),
        )
    ) == (("content-type", "text/plain"), ("set-cookie", "a=1"))


def test_context_headers_selects_and_joins() -> None:
    headers = (("host", "a"), ("accept", "text/html"), ("accept", "*/*"), ("user-agent", "curl"))
    assert context_headers(headers, ["Accept", "X-Missing", "host"]) == {
        "accept": "text/html, */*",
        "host": "a",
    }
