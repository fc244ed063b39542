"""Access records carry the request id and traceparent that the next hop receives."""

from __future__ import annotations

from datetime import UTC, datetime

from meshgate.http.forwarding import PeerCertificate, forward_request_headers
from meshgate.identity import SpiffeId
from sidecar.observe.access import AccessRecord, trace_ids

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ORDERS = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")
WEB = PeerCertificate(SpiffeId.parse("spiffe://example.org/ns/shop/svc/web"), b"leaf")


def _record(request_id: str | None, traceparent: str | None) -> dict[str, object]:
    return AccessRecord(
        datetime.now(UTC), "inbound", "http", str(WEB.spiffe_id), "127.0.0.1:1", "orders",
        "GET", "/", 200, request_id=request_id, traceparent=traceparent,
    ).as_log()  # fmt: skip


def test_generated_request_id_and_propagated_traceparent_reach_the_record() -> None:
    sent = forward_request_headers(
        (("host", "orders"), ("traceparent", TRACEPARENT)),
        our_id=ORDERS,
        peer=WEB,
        new_request_id=lambda: "generated-1",
    )
    request_id, traceparent = trace_ids(sent.headers)
    assert (request_id, traceparent) == ("generated-1", TRACEPARENT)
    assert request_id == sent.request_id
    line = _record(request_id, traceparent)
    assert (line["request_id"], line["traceparent"]) == ("generated-1", TRACEPARENT)


def test_client_request_id_is_kept_and_an_invalid_traceparent_is_not_logged() -> None:
    sent = forward_request_headers(
        (("x-request-id", "abc-123"), ("traceparent", "00-zz-bad-01")),
        our_id=ORDERS,
        peer=WEB,
    )
    assert trace_ids(sent.headers) == ("abc-123", None)


def test_two_traceparents_are_dropped_not_logged() -> None:
    sent = forward_request_headers(
        (("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)), our_id=None, peer=None
    )
    request_id, traceparent = trace_ids(sent.headers)
    assert traceparent is None
    assert request_id == sent.request_id
