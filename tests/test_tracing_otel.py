"""The span exporter shell over OpenTelemetry's SDK, with the SDK's in-memory exporter."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshgate.http.forwarding import ForwardedRequest, forward_request_headers
from sidecar.config import TracingConfig
from sidecar.observe.tracing import TraceParent
from sidecar.observe.tracing_otel import OtelTracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE}-00f067aa0ba902b7-01"
NOT_SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-00"


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _tracer(exporter: InMemorySpanExporter, ratio: float = 1.0) -> OtelTracer:
    config = TracingConfig(endpoint="http://127.0.0.1:9/v1/traces", sample_ratio=ratio)
    return OtelTracer(config, "orders", exporter)


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> Iterator[OtelTracer]:
    tracer = _tracer(exported)
    yield tracer
    tracer.shutdown()


def _request(*headers: tuple[str, str]) -> ForwardedRequest:
    return forward_request_headers(headers, our_id=None, peer=None, new_request_id=lambda: "rid")


def _only(tracer: OtelTracer, exported: InMemorySpanExporter) -> ReadableSpan:
    assert tracer.flush()
    (span,) = exported.get_finished_spans()
    return span


def test_an_incoming_traceparent_is_continued_and_our_span_is_sent_on_as_its_child(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    span = tracer.start(
        "outbound", "POST", "payments", _request(("traceparent", INCOMING), ("tracestate", "v=1"))
    )
    sent = TraceParent.parse(span.forwarded.traceparent or "")
    assert sent is not None
    assert sent.trace_id == int(TRACE, 16)
    assert sent.span_id != 0x00F067AA0BA902B7
    assert sent.sampled
    assert ("tracestate", "v=1") in span.forwarded.headers
    assert [n for n, _ in span.forwarded.headers].count("traceparent") == 1
    span.finish(path="/charge", status=200, peer_id="spiffe://example.org/ns/shop/svc/payments")
    done = _only(tracer, exported)
    assert done.kind is SpanKind.CLIENT
    assert done.name == "outbound POST"
    assert done.context is not None
    assert done.context.trace_id == int(TRACE, 16)
    assert done.context.span_id == sent.span_id
    assert done.parent is not None
    assert done.parent.span_id == 0x00F067AA0BA902B7
    assert done.parent.is_remote
    assert done.context.trace_state.to_header() == "v=1"
    assert done.resource.attributes["service.name"] == "orders"
    attributes = dict(done.attributes or {})
    assert attributes["url.path"] == "/charge"
    assert attributes["http.response.status_code"] == 200
    assert attributes["meshgate.peer.spiffe_id"] == "spiffe://example.org/ns/shop/svc/payments"
    assert attributes["meshgate.request_id"] == "rid"
    assert done.status.status_code is StatusCode.UNSET


def test_without_a_traceparent_a_new_trace_starts_at_a_root_span(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    span = tracer.start("outbound", "GET", "orders", _request(("host", "orders")))
    sent = TraceParent.parse(span.forwarded.traceparent or "")
    assert sent is not None
    assert sent.trace_id != int(TRACE, 16)
    span.finish(path="/", status=503, peer_id=None, reason="no_endpoint")
    done = _only(tracer, exported)
    assert done.parent is None
    assert done.context is not None
    assert done.context.trace_id == sent.trace_id
    assert done.status.status_code is StatusCode.ERROR


def test_a_malformed_traceparent_starts_a_new_trace_and_is_not_sent_on(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    bad = f"00-{TRACE}-00f067aa0ba902b7-1"  # one flag digit short
    span = tracer.start("outbound", "GET", "orders", _request(("traceparent", bad)))
    values = [v for n, v in span.forwarded.headers if n == "traceparent"]
    assert len(values) == 1
    assert values[0] != bad
    assert TraceParent.parse(values[0]) is not None
    assert TRACE not in values[0]
    span.finish(path="/", status=200, peer_id=None)
    assert _only(tracer, exported).parent is None


def test_a_server_span_carries_the_decision_and_the_deciding_policies(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    span = tracer.start("inbound", "DELETE", "orders", _request(("traceparent", INCOMING)))
    span.finish(
        path="/orders/7",
        status=403,
        peer_id="spiffe://example.org/ns/shop/svc/web",
        decision="deny",
        policies=("no-deletes", "shop-default"),
        reason="denied",
    )
    done = _only(tracer, exported)
    assert done.kind is SpanKind.SERVER
    attributes = dict(done.attributes or {})
    assert attributes["meshgate.decision"] == "deny"
    assert attributes["meshgate.policy_ids"] == ("no-deletes", "shop-default")
    assert attributes["meshgate.direction"] == "inbound"
    assert done.status.status_code is StatusCode.UNSET  # a 403 is the server doing its job


def test_a_zero_ratio_records_no_new_trace_but_still_sends_a_traceparent(
    exported: InMemorySpanExporter,
) -> None:
    tracer = _tracer(exported, ratio=0.0)
    try:
        fresh = tracer.start("outbound", "GET", "orders", _request())
        sent = TraceParent.parse(fresh.forwarded.traceparent or "")
        assert sent is not None
        assert not sent.sampled
        fresh.finish(path="/", status=200, peer_id=None)
        # A caller that sampled its trace is followed: that span is recorded.
        followed = tracer.start("inbound", "GET", "orders", _request(("traceparent", INCOMING)))
        followed.finish(path="/", status=200, peer_id=None)
        unsampled = tracer.start("inbound", "GET", "orders", _request(("traceparent", NOT_SAMPLED)))
        assert (unsampled.forwarded.traceparent or "").endswith("-00")
        unsampled.finish(path="/", status=200, peer_id=None)
        done = _only(tracer, exported)
        assert done.context is not None
        assert done.context.trace_id == int(TRACE, 16)
        assert done.kind is SpanKind.SERVER
    finally:
        tracer.shutdown()


class _BrokenExporter(SpanExporter):
    """A collector that is down: every export raises."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise ConnectionRefusedError("collector down")

    def shutdown(self) -> None:
        pass


def test_a_failing_collector_and_a_stopped_tracer_cost_the_request_nothing() -> None:
    broken = _BrokenExporter()
    tracer = OtelTracer(TracingConfig(endpoint="http://127.0.0.1:9"), "orders", broken)
    span = tracer.start("outbound", "GET", "orders", _request())
    span.finish(path="/", status=200, peer_id=None)
    tracer.flush()
    assert broken.calls == 1  # the span reached the exporter, whose error stayed in the SDK
    tracer.shutdown()
    late = tracer.start("inbound", "GET", "orders", _request(("traceparent", INCOMING)))
    assert TraceParent.parse(late.forwarded.traceparent or "") is not None
    late.finish(path="/", status=200, peer_id=None)  # dropped quietly after shutdown
    assert broken.calls == 1


class _StuckExporter(SpanExporter):
    """A collector that takes each batch and does not answer until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_a_full_queue_drops_spans_with_one_warning_not_one_per_span(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stuck collector fills the SDK's queue (2048 spans); the rest are dropped, and the
    SDK says so once (1.27: once ever; 1.45: a duplicate filter), not once per request."""
    stuck = _StuckExporter()
    tracer = OtelTracer(TracingConfig(endpoint="http://127.0.0.1:9"), "orders", stuck)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3000):  # the SDK's queue holds 2048
                span = tracer.start("outbound", "GET", "orders", _request())
                span.finish(path="/", status=200, peer_id=None)
        full = [r for r in caplog.records if "full" in r.getMessage().lower()]
        assert len(full) == 1
    finally:
        stuck.release.set()
        tracer.shutdown()
