"""The report stage of the inbound http session: one access record (or, with the access log
off, only the metrics) and the span of each request, decided or refused."""

from __future__ import annotations

import time
from datetime import datetime

from meshgate.http import NormalizedTarget, RequestHead
from sidecar.inbound.decide import PeerFacts
from sidecar.inbound.outcome import Outcome
from sidecar.observe.access import AccessRecord, Observer
from sidecar.observe.tracing import Span

__all__ = ["finish_span", "report"]


def report(
    observer: Observer,
    service: str,
    facts: PeerFacts,
    started: float,
    wall: datetime,
    head: RequestHead | None,
    target: NormalizedTarget | None,
    outcome: Outcome,
    *,
    request_id: str,
    decision: str = "none",
    policies: tuple[str, ...] = (),
    extra: dict[str, str] | None = None,
    traceparent: str | None = None,
) -> None:
    """Count and log one request; `started` is its `time.monotonic()` start."""
    duration = time.monotonic() - started
    method = head.method if head else None
    if not observer.access_logged():  # metrics only: no record to build
        observer.count_request(
            "inbound",
            facts.peer_id_text,
            service,
            method,
            outcome.status,
            decision,
            duration,
            outcome.bytes_in,
            outcome.bytes_out,
            policies,
        )
        observer.incomplete("inbound", outcome.reason)
        return
    observer.request(
        AccessRecord(
            time=wall,
            direction="inbound",
            protocol="http",
            peer_id=facts.peer_id_text,
            source=facts.source,
            destination=service,
            method=method,
            path=target.path if target else None,
            status=outcome.status,
            decision=decision,
            policies=policies,
            reason=outcome.reason,
            bytes_in=outcome.bytes_in,
            bytes_out=outcome.bytes_out,
            duration_seconds=duration,
            request_id=request_id,
            traceparent=traceparent,
            extra=extra or {},
        )
    )


def finish_span(
    span: Span | None,
    facts: PeerFacts,
    target: NormalizedTarget,
    outcome: Outcome,
    decision: str,
    policies: tuple[str, ...],
) -> None:
    if span is not None:
        span.finish(
            path=target.path,
            status=outcome.status,
            peer_id=facts.peer_id_text,
            decision=decision,
            policies=policies,
            reason=outcome.reason,
        )
