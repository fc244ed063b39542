"""The inbound's server span over in-memory mTLS: the app gets a traceparent naming it, the
span holds the decision, and a request cut by revocation still ends its span."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.config import TracingConfig
from sidecar.identity.credentials import Revocations
from sidecar.observe.tracing import TraceParent
from sidecar.observe.tracing_otel import OtelTracer
from tests.http_inbound_harness import Harness, closed, copy_policies, read_responses

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
GET_ORDER = (
    b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\n"
    + f"traceparent: 00-{TRACE}-{CALLER_SPAN}-01\r\ntracestate: shop=1\r\n\r\n".encode()
)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return copy_policies(tmp_path / "policies")


@pytest.fixture
def exported() -> Iterator[tuple[OtelTracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer(TracingConfig(endpoint="http://127.0.0.1:9"), "orders", exporter)
    yield tracer, exporter
    tracer.shutdown()


def _spans(tracer: OtelTracer, exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    assert tracer.flush()
    return exporter.get_finished_spans()


async def test_the_app_gets_a_traceparent_naming_the_server_span_that_holds_the_decision(
    shop: Path, exported: tuple[OtelTracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = exported
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop, tracer=tracer)
        stream = await h.connect()
        await stream.send_all(GET_ORDER)
        [response] = await read_responses(stream, ["GET"])
        assert response.status == 200
        [seen] = h.app.requests
        nursery.cancel_scope.cancel()
    [span] = _spans(tracer, exporter)
    assert span.kind is SpanKind.SERVER
    assert span.context is not None
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    [sent] = seen.values("traceparent")
    assert sent == str(TraceParent(int(TRACE, 16), span.context.span_id, 1))
    assert seen.values("tracestate") == ["shop=1"]
    attributes = dict(span.attributes or {})
    assert attributes["meshgate.decision"] == "allow"
    assert attributes["meshgate.policy_ids"] == ("web-reads-orders",)
    assert attributes["meshgate.peer.spiffe_id"] == str(h.peer_id)
    assert attributes["url.path"] == "/orders/1"
    assert attributes["http.response.status_code"] == 200


async def test_a_request_cut_by_revocation_still_ends_its_span_with_the_cause(
    shop: Path, exported: tuple[OtelTracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = exported
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop, tracer=tracer)
        h.app.hold = trio.Event()  # the app sits on the request
        stream = await h.connect()
        await stream.send_all(GET_ORDER)
        with trio.fail_after(5):
            while not h.app.requests:
                await trio.sleep(0.01)
        h.store.publish_revocations(Revocations(spiffe_ids=frozenset({h.peer_id})))
        with trio.fail_after(5):
            assert await closed(stream)
        nursery.cancel_scope.cancel()
    [span] = _spans(tracer, exporter)
    attributes = dict(span.attributes or {})
    assert "revoked" in str(attributes["meshgate.reason"])
    assert "http.response.status_code" not in attributes
    assert attributes["meshgate.decision"] == "allow"
