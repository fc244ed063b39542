"""The span exporter: OpenTelemetry's SDK behind `sidecar.observe.tracing.Tracer`. A thin shell.

Imported only when ``[tracing]`` is configured (`sidecar.app`), so a sidecar without it
never loads the SDK. Spans go to a `BatchSpanProcessor`, whose own thread sends them over
OTLP/HTTP: on the request path a span costs an SDK call and a queue append, never a
network wait; a full queue drops spans, a failed export is logged by the SDK and dropped.
Our own provider (not the process-global one) and no atexit hook: `shutdown` is called by
`sidecar.app` from a thread, bounded, when the sidecar stops.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Final, final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from meshgate.http.forwarding import ForwardedRequest
from sidecar.config import TracingConfig
from sidecar.observe.tracing import (
    Direction,
    TraceParent,
    is_error,
    span_attributes,
    span_name,
    trace_headers,
    with_traceparent,
)

__all__ = ["OtelTracer"]

log = logging.getLogger("sidecar.observe.tracing")
_KIND: Final = {"inbound": SpanKind.SERVER, "outbound": SpanKind.CLIENT}


def _version() -> str:
    try:
        return metadata.version("meshgate")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


@final
class _OtelSpan:
    __slots__ = ("_direction", "_method", "_service", "_span", "forwarded")

    def __init__(
        self,
        span: trace.Span,
        forwarded: ForwardedRequest,
        direction: Direction,
        method: str,
        service: str,
    ) -> None:
        self._span = span
        self.forwarded = forwarded
        self._direction: Direction = direction
        self._method = method
        self._service = service

    def finish(
        self,
        *,
        path: str | None,
        status: int | None,
        peer_id: str | None,
        decision: str = "none",
        policies: tuple[str, ...] = (),
        reason: str | None = None,
    ) -> None:
        span = self._span
        try:
            if span.is_recording():
                span.set_attributes(
                    span_attributes(
                        direction=self._direction,
                        method=self._method,
                        service=self._service,
                        request_id=self.forwarded.request_id,
                        path=path,
                        status=status,
                        peer_id=peer_id,
                        decision=decision,
                        policies=policies,
                        reason=reason,
                    )
                )
                if is_error(self._direction, status):
                    span.set_status(StatusCode.ERROR, reason)
            span.end()
        except Exception as exc:  # noqa: BLE001 - a tracing fault must never fail a request
            log.warning("span not recorded: %s: %s", type(exc).__name__, exc)


@final
class _Untraced:
    """What `start` returns if the SDK failed: the request goes on as it came."""

    __slots__ = ("forwarded",)

    def __init__(self, forwarded: ForwardedRequest) -> None:
        self.forwarded = forwarded

    def finish(
        self,
        *,
        path: str | None,
        status: int | None,
        peer_id: str | None,
        decision: str = "none",
        policies: tuple[str, ...] = (),
        reason: str | None = None,
    ) -> None:
        return None


@final
class OtelTracer:
    """`sidecar.observe.tracing.Tracer` over the OpenTelemetry SDK; `exporter` is for tests."""

    def __init__(
        self, config: TracingConfig, service_name: str, exporter: SpanExporter | None = None
    ) -> None:
        version = _version()
        resource = Resource.create({"service.name": service_name, "service.version": version})
        # New traces are sampled by trace id (every hop agrees); continued ones follow the
        # caller's sampled flag.
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self._provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=config.endpoint, timeout=config.export_timeout_seconds
            )
        self._processor = BatchSpanProcessor(
            exporter,
            schedule_delay_millis=config.export_delay_seconds * 1000,
            export_timeout_millis=config.export_timeout_seconds * 1000,
        )
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("meshgate.sidecar", version)
        self._shutdown_millis = int(config.export_timeout_seconds * 1000)

    def start(
        self, direction: Direction, method: str, service: str, forwarded: ForwardedRequest
    ) -> _OtelSpan | _Untraced:
        try:
            parent, states = trace_headers(forwarded.headers)
            context = None
            if parent is not None:
                remote = trace.SpanContext(
                    parent.trace_id,
                    parent.span_id,
                    is_remote=True,
                    trace_flags=trace.TraceFlags(parent.flags & 0xFF),
                    trace_state=trace.TraceState.from_header(list(states)) if states else None,
                )
                context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
            span = self._tracer.start_span(
                span_name(direction, method), context=context, kind=_KIND[direction]
            )
            ours = span.get_span_context()
            sent = TraceParent(ours.trace_id, ours.span_id, int(ours.trace_flags))
            return _OtelSpan(span, with_traceparent(forwarded, sent), direction, method, service)
        except Exception as exc:  # noqa: BLE001 - a tracing fault must never fail a request
            log.warning("span not started: %s: %s", type(exc).__name__, exc)
            return _Untraced(forwarded)

    def flush(self) -> bool:
        """Export what is queued now (blocking); for tests and `shutdown`."""
        return self._provider.force_flush(self._shutdown_millis)

    def shutdown(self) -> None:
        self._provider.shutdown()
