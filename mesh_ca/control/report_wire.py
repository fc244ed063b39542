"""JSON body of ``POST /v1/control/report``: a sidecar's per-edge deltas and its status.

A sidecar sends one `Report` every few seconds over its mTLS connection to the CA. Edge
counts are *deltas* since the last report the CA accepted (the sidecar keeps its baseline
until a 200, so a report lost to a CA outage is sent again, summed, with the next one).
The caller's SPIFFE ID and SVID expiry come from its verified client certificate, never
from this body. Frozen models, unknown fields forbidden, strict JSON types, every string
and list capped: a body the caps refuse is a 400 naming the field.

Stable: documented in docs/monitoring.md ("The report"); add fields as optional only.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_BUCKETS",
    "MAX_DENIAL_SAMPLES",
    "MAX_EDGES",
    "MAX_REPORT_BYTES",
    "REPORT_PATH",
    "DenialSample",
    "EdgeReport",
    "LatencyHistogram",
    "OutcomeCount",
    "PolicyCount",
    "Report",
    "ReportAccepted",
    "SidecarStatus",
]

REPORT_PATH: Final = "/v1/control/report"
MAX_REPORT_BYTES: Final = 64 * 1024  # the CA refuses a larger body (413)
MAX_EDGES: Final = 256  # edges in one report; a sidecar with more sends the busiest
MAX_BUCKETS: Final = 32
MAX_DENIAL_SAMPLES: Final = 16
_MAX_ROWS: Final = 64
_MAX_COUNT: Final = 2**53  # JSON numbers stay exact in every reader

# A service name as the per-edge labels hold it (`sidecar.observe.edges`): a SPIFFE path
# segment, or one of the fixed values `unknown` / `other`.
ServiceName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+\z")]
_PRINTABLE: Final = r"^[^\x00-\x1f\x7f-\x9f]*\z"
# A label value the sidecar chose (a reason code, a policy's @id): printable, capped.
Code = Annotated[str, Field(max_length=128, pattern=_PRINTABLE)]
Decision = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z_]+\z")]
Count = Annotated[int, Field(ge=0, le=_MAX_COUNT)]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class OutcomeCount(_Wire):
    """Requests (tcp: connections) of one status class and decision."""

    status_class: Literal["1xx", "2xx", "3xx", "4xx", "5xx", "none", "other"]
    decision: Decision  # allow, deny, audit_deny, none (outbound, or never decided)
    protocol: Literal["http", "tcp"] = "http"
    count: Count


class PolicyCount(_Wire):
    """Denials (or audit denials) by the deciding policy's ``@id`` (`none`: default deny)."""

    decision: Literal["deny", "audit_deny"]
    policy: Code
    count: Count


class LatencyHistogram(_Wire):
    """Request durations: `counts[i]` fell in (bounds[i-1], bounds[i]] seconds, the last
    count above the last bound (+Inf). Not cumulative (unlike Prometheus buckets)."""

    bounds: Annotated[list[float], Field(min_length=1, max_length=MAX_BUCKETS)]
    counts: Annotated[list[Count], Field(min_length=2, max_length=MAX_BUCKETS + 1)]
    sum_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _shape(self) -> LatencyHistogram:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("counts needs one more item than bounds (the +Inf bucket)")
        if any(b <= 0 or not math.isfinite(b) for b in self.bounds) or any(
            a >= b for a, b in zip(self.bounds, self.bounds[1:], strict=False)
        ):
            raise ValueError("bounds must be positive and strictly increasing")
        return self


class EdgeReport(_Wire):
    """What one sidecar saw of one edge (source service → destination service) in one
    direction since its last accepted report."""

    direction: Literal["inbound", "outbound"]
    source: ServiceName
    destination: ServiceName
    outcomes: Annotated[list[OutcomeCount], Field(max_length=_MAX_ROWS)] = []
    latency: LatencyHistogram | None = None
    bytes_received: Count = 0
    bytes_sent: Count = 0
    denials: Annotated[list[PolicyCount], Field(max_length=_MAX_ROWS)] = []
    # Failed mTLS handshakes on this edge by reason (inbound source: `unknown`).
    handshake_failures: Annotated[dict[Code, Count], Field(max_length=_MAX_ROWS)] = {}


class DenialSample(_Wire):
    """One recent denied request, enough to replay it with ``mesh-sidecar policy explain``
    (the decision may also have read headers or the query, which are not sent)."""

    time: datetime
    principal: Annotated[str, Field(max_length=2048, pattern=_PRINTABLE)]  # the peer's ID
    action: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+\z")]
    resource: ServiceName  # the destination service
    path: Annotated[str, Field(max_length=512, pattern=_PRINTABLE)] | None = None
    decision: Literal["deny", "audit_deny"]
    policies: Annotated[list[Code], Field(max_length=8)] = []


class SidecarStatus(_Wire):
    """The sidecar's own view of itself. Its SPIFFE ID and SVID expiry are taken from the
    client certificate instead."""

    instance: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+\z")]
    service: ServiceName | None = None  # ``[inbound] service``; None for an outbound-only one
    version: Annotated[str, Field(max_length=64, pattern=_PRINTABLE)]
    ready: bool
    ready_code: Code = ""
    ready_reason: Annotated[str, Field(max_length=512, pattern=_PRINTABLE)] = ""
    started_at: datetime | None = None
    bundle_sequence: Count | None = None
    bundle_fingerprint: Annotated[str, Field(max_length=64, pattern=r"^[0-9a-f]*\z")] = ""
    policy_version: Annotated[str, Field(max_length=128, pattern=_PRINTABLE)] | None = None
    policy_source: Code = ""
    policy_dir: Annotated[str, Field(max_length=1024, pattern=_PRINTABLE)] | None = None
    policy_error: Annotated[str, Field(max_length=1024, pattern=_PRINTABLE)] | None = None
    policy_loaded_at: datetime | None = None
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    outbound_services: Annotated[list[ServiceName], Field(max_length=_MAX_ROWS)] = []


class Report(_Wire):
    """``POST /v1/control/report``: the sidecar's clock (`sent_at`, for skew), how long
    the deltas cover (`interval_seconds`, informative), its status and its edges."""

    sent_at: datetime
    interval_seconds: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)]
    status: SidecarStatus
    edges: Annotated[list[EdgeReport], Field(max_length=MAX_EDGES)] = []
    truncated_edges: Count = 0  # edges left out (over MAX_EDGES); their deltas are kept
    denial_samples: Annotated[list[DenialSample], Field(max_length=MAX_DENIAL_SAMPLES)] = []


class ReportAccepted(_Wire):
    """The CA's answer: its clock and the default report interval (informative: sidecars
    keep their own ``report.interval_seconds``)."""

    accepted: bool
    received_at: datetime
    interval_seconds: float
