"""W3C Trace Context on the data path: `traceparent` values, span names and attributes. Pure.

Each hop of a request is one span. The outbound sidecar continues the app's valid
`traceparent` (or starts a trace) with a client span; the inbound sidecar continues that
with a server span; each sends on a `traceparent` whose parent is its own span, so the next
hop's span hangs under it. `tracestate` passes through untouched. A malformed or repeated
`traceparent` never reaches this module: `forward_request_headers` drops it (and its
`tracestate`), so such a request starts a fresh trace.

This module imports no OpenTelemetry: with ``[tracing]`` absent the data path only tests
``runtime.tracer is None``. The exporter is `sidecar.observe.tracing_otel`, loaded only when
tracing is configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol, final

from meshgate.http.events import Headers
from meshgate.http.forwarding import ForwardedRequest, is_valid_traceparent
from meshgate.identity import SpiffeId

__all__ = [
    "Direction",
    "Span",
    "TraceParent",
    "Tracer",
    "default_service_name",
    "is_error",
    "span_attributes",
    "span_name",
    "trace_headers",
    "with_traceparent",
]

Direction = Literal["inbound", "outbound"]
AttributeValue = str | int | tuple[str, ...]
_FIELDS: Final = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
SAMPLED: Final = 0x01


@final
@dataclass(frozen=True, slots=True)
class TraceParent:
    """The fields of a `traceparent` header; `str()` writes version 00."""

    trace_id: int
    span_id: int
    flags: int

    @classmethod
    def parse(cls, value: str) -> TraceParent | None:
        """None for anything the W3C spec says to ignore (bad shape, version ff, zero ids).
        A later version is read by its version-00 prefix, as the spec asks."""
        if not is_valid_traceparent(value):
            return None
        m = _FIELDS.match(value)
        assert m is not None  # is_valid_traceparent checked the same shape
        return cls(int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16))

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def __str__(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags & 0xFF:02x}"


def trace_headers(headers: Headers) -> tuple[TraceParent | None, tuple[str, ...]]:
    """The incoming trace context of headers that `forward_request_headers` produced:
    the one valid `traceparent` (or None) and every `tracestate` value, in order."""
    parent: TraceParent | None = None
    states: list[str] = []
    for name, value in headers:
        if name == "traceparent":
            parent = TraceParent.parse(value)
        elif name == "tracestate":
            states.append(value)
    return parent, tuple(states)


def with_traceparent(forwarded: ForwardedRequest, traceparent: TraceParent) -> ForwardedRequest:
    """`forwarded` with its `traceparent` replaced by ours (appended when it had none)."""
    value = str(traceparent)
    headers = [(n, v) for n, v in forwarded.headers if n != "traceparent"]
    headers.append(("traceparent", value))
    return ForwardedRequest(tuple(headers), forwarded.request_id, value)


def default_service_name(spiffe_id: SpiffeId) -> str:
    """SERVICE of ``spiffe://TD/ns/NS/svc/SERVICE``, else the ID's last path segment."""
    segments = spiffe_id.path.strip("/").split("/")
    if len(segments) >= 2 and segments[-2] == "svc":
        return segments[-1]
    return segments[-1] or str(spiffe_id)


def span_name(direction: Direction, method: str) -> str:
    """Low-cardinality, like OpenTelemetry's HTTP conventions (no path in the name)."""
    return f"{direction} {method}"


def is_error(direction: Direction, status: int | None) -> bool:
    """OpenTelemetry's HTTP rule: a server span fails on 5xx, a client span on 4xx too;
    no status at all (the exchange broke) is a failure either way."""
    if status is None:
        return True
    return status >= (500 if direction == "inbound" else 400)


def span_attributes(
    *,
    direction: Direction,
    method: str,
    service: str,
    request_id: str,
    path: str | None,
    status: int | None,
    peer_id: str | None,
    decision: str,
    policies: tuple[str, ...],
    reason: str | None,
) -> Mapping[str, AttributeValue]:
    """What one hop's span says. `path` is the normalized path (the one authorized and
    forwarded), never the raw target; no header values and no query strings go in."""
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "meshgate.direction": direction,
        "meshgate.service": service,
        "meshgate.request_id": request_id,
        "meshgate.decision": decision,
    }
    if path is not None:
        attributes["url.path"] = path
    if status is not None:
        attributes["http.response.status_code"] = status
    if peer_id is not None:
        attributes["meshgate.peer.spiffe_id"] = peer_id
    if policies:
        attributes["meshgate.policy_ids"] = policies
    if reason is not None:
        attributes["meshgate.reason"] = reason
    return attributes


class Span(Protocol):
    """One hop in progress. `forwarded` is the request to send on: its `traceparent` names
    this span as the parent."""

    @property
    def forwarded(self) -> ForwardedRequest: ...

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
        """End the span with what the hop did; never raises, never blocks."""


class Tracer(Protocol):
    def start(
        self, direction: Direction, method: str, service: str, forwarded: ForwardedRequest
    ) -> Span:
        """A span continuing `forwarded`'s trace (or a new trace); never raises."""

    def shutdown(self) -> None:
        """Flush what is queued and stop the exporter (blocking: call from a thread)."""
