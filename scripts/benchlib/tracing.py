"""The ``tracing`` section of scripts/bench.py: CPU per span on the request path.

What `[tracing]` adds to one hop: `OtelTracer.start` (continue or start a trace, our
`traceparent` into the forwarded headers) and `Span.finish` (attributes, end, queue
append), timed in this process over ``--seconds`` per case. The exporter is a stand-in
that drops batches at once, so the figures are the request path's cost plus whatever the
SDK's export thread takes from it under the GIL (its protobuf encoding is skipped here).
The ``off`` case is the data path's test of ``runtime.tracer is None``, for scale.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meshgate.http.forwarding import ForwardedRequest, forward_request_headers
from sidecar.config import TracingConfig
from sidecar.observe.tracing import Tracer
from sidecar.observe.tracing_otel import OtelTracer

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADERS = (("host", "orders"), ("accept", "*/*"), ("user-agent", "bench"))


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _per_span_us(tracer: Tracer | None, forwarded: ForwardedRequest, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(200):
            if tracer is None:  # what the hooks do when tracing is off
                continue
            span = tracer.start("inbound", "GET", "orders", forwarded)
            span.finish(
                path="/orders/7",
                status=200,
                peer_id="spiffe://example.org/ns/shop/svc/web",
                decision="allow",
                policies=("web-reads-orders",),
            )
        done += 200
    return (time.perf_counter() - started) / done * 1e6


def bench_tracing(args: argparse.Namespace) -> dict[str, Any]:
    continued = forward_request_headers(
        (*HEADERS, ("traceparent", TRACEPARENT)), our_id=None, peer=None
    )
    fresh = forward_request_headers(HEADERS, our_id=None, peer=None)
    figures: dict[str, Any] = {"off_us": round(_per_span_us(None, fresh, args.seconds), 3)}
    for ratio, cases in ((1.0, ("continued", "new")), (0.0, ("new",))):
        config = TracingConfig(endpoint="http://127.0.0.1:9/v1/traces", sample_ratio=ratio)
        tracer = OtelTracer(config, "orders", _Discard())
        try:
            for case in cases:
                forwarded = continued if case == "continued" else fresh
                key = f"ratio_{ratio:g}_{case}_trace_us"
                figures[key] = round(_per_span_us(tracer, forwarded, args.seconds), 1)
        finally:
            tracer.shutdown()
    return figures
