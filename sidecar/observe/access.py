"""One place where the data path reports what happened: metrics and the access log.

Handlers build an `AccessRecord` per HTTP request or tcp connection and call
`Observer.request` (tcp handlers fill a `ConnectionReport` as the connection proceeds and
report it once, whatever the outcome); handshakes, connections and decisions have their
own calls. The
access log is one JSON object per line on the `meshgate.access` logger (its sink — stdout,
a file, or a human-readable terminal format — is chosen at start-up, see `sidecar.observe.logs`).
Never put secrets, tokens or full header sets into a record.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, final

from meshgate.records import record
from sidecar.observe.access_sink import BatchedAccessSink
from sidecar.observe.edges import UNKNOWN, service_of, status_class
from sidecar.observe.metrics import SidecarMetrics

__all__ = ["INCOMPLETE", "AccessRecord", "ConnectionReport", "Direction", "Observer", "trace_ids"]

INCOMPLETE: Final = "response_incomplete"  # reason prefix of a response cut after its head

Direction = Literal["inbound", "outbound"]
access_log = logging.getLogger("meshgate.access")


@final
@record(frozen=True, slots=True)
class AccessRecord:
    time: datetime  # when the request or connection started (wall clock, UTC)
    direction: Direction
    protocol: Literal["http", "tcp"]
    peer_id: str | None  # verified SPIFFE ID of the other sidecar (caller or upstream)
    source: str  # address of the connecting client
    destination: str  # service name (inbound: ours; outbound: the target service)
    method: str | None = None  # HTTP method, or "connect" in tcp mode
    path: str | None = None  # the normalized path that was authorized and forwarded
    status: int | None = None  # HTTP status sent to the client
    decision: str = "none"  # allow | deny | audit_deny | none (outbound, or never decided)
    policies: tuple[str, ...] = ()  # @id of the determining policies
    reason: str | None = None  # why a request was refused or failed, as a short code
    bytes_in: int = 0  # body/payload bytes received from the client side
    bytes_out: int = 0  # body/payload bytes sent back to the client side
    duration_seconds: float = 0.0
    request_id: str | None = None
    traceparent: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def as_log(self) -> dict[str, object]:
        # Written out, in field order: `dataclasses.asdict` deep-copies every value and
        # cost ~20 µs a request here, a tenth of what a sidecar spent on its access line.
        line: dict[str, object] = {
            "time": self.time.isoformat(timespec="milliseconds"),
            "direction": self.direction,
            "protocol": self.protocol,
            "peer_id": self.peer_id,
            "source": self.source,
            "destination": self.destination,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "decision": self.decision,
            "policies": list(self.policies),
            "reason": self.reason,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_seconds": round(self.duration_seconds, 6),
            "request_id": self.request_id,
            "traceparent": self.traceparent,
        }
        if self.extra:
            line |= self.extra
        return line


def trace_ids(forwarded: Iterable[tuple[str, str]]) -> tuple[str | None, str | None]:
    """`(request_id, traceparent)` for an access record, from the headers sent on.

    Pass the output of `forward_request_headers`: it keeps one valid `x-request-id` or
    makes one, and drops invalid or repeated `traceparent`, so what is logged is exactly
    what the next hop sees and a request can be followed across hops.
    """
    request_id = traceparent = None
    for name, value in forwarded:
        if name == "x-request-id":
            request_id = value
        elif name == "traceparent":
            traceparent = value
    return request_id, traceparent


@final
@dataclass(slots=True)
class ConnectionReport:
    """The access record of one tcp connection, filled in stage by stage.

    `record` is called once when the connection ends, however it ends (refused handshake,
    denied, app unreachable, relayed), so every accepted connection yields one line.
    """

    direction: Direction
    source: str
    destination: str
    time: datetime
    started: float  # trio.current_time() at accept (mock-clock friendly), for the duration
    peer_id: str | None = None
    decision: str = "none"
    policies: tuple[str, ...] = ()
    reason: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def record(self, ended: float) -> AccessRecord:
        return AccessRecord(
            time=self.time,
            direction=self.direction,
            protocol="tcp",
            peer_id=self.peer_id,
            source=self.source,
            destination=self.destination,
            method="connect",
            decision=self.decision,
            policies=self.policies,
            reason=self.reason,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration_seconds=max(0.0, ended - self.started),
            extra=self.extra,
        )


# Labelled children are looked up once per label set and kept (`labels()` costs a few µs a
# call); label values are bounded by design, and past this many sets lookups go uncached.
_CACHED_LABEL_SETS: Final = 10_000
_DENIED: Final = frozenset({"deny", "audit_deny"})
# Recent denials kept for the control-plane report (`sidecar.observe.reporter`), so the
# dashboard can show them with the `mesh-sidecar policy explain` command that replays one.
_DENIAL_SAMPLES: Final = 16
_SAMPLE_PATH_CHARS: Final = 512


@final
class Observer:
    def __init__(
        self, metrics: SidecarMetrics | None = None, local_id: str = "", inbound_service: str = ""
    ) -> None:
        self.metrics = metrics or SidecarMetrics()
        self.local_id = local_id
        # Edge labels (`sidecar.observe.edges`): outbound requests come from our own service; an
        # inbound handshake that fails is towards the `[inbound] service`.
        self.local_service = service_of(local_id)
        self.inbound_service = inbound_service or UNKNOWN
        self._request_children: dict[tuple[object, ...], tuple[Any, Any, Any, Any, str]] = {}
        self._children: dict[tuple[object, ...], Any] = {}
        # Newest last; the reporter takes them (`take_denial_samples`).
        self.denial_samples: deque[dict[str, Any]] = deque(maxlen=_DENIAL_SAMPLES)

    @staticmethod
    def access_logged() -> bool:
        """Whether `request` writes an access line: when not, a handler may skip building
        the `AccessRecord` and call `count_request` alone."""
        return access_log.isEnabledFor(logging.INFO)

    def request(self, record: AccessRecord) -> None:
        self.count_request(
            record.direction,
            record.peer_id,
            record.destination,
            record.method,
            record.status,
            record.decision,
            record.duration_seconds,
            record.bytes_in,
            record.bytes_out,
            record.policies,
            sample=False,
        )
        if record.decision in _DENIED and record.direction == "inbound":
            self._sample(
                record.peer_id,
                record.destination,
                record.method,
                record.path,
                record.decision,
                record.policies,
                record.time,
            )
        self.incomplete(record.direction, record.reason)
        if access_log.isEnabledFor(logging.INFO):  # off: skip building the line
            handlers = access_log.handlers
            if len(handlers) == 1 and type(handlers[0]) is BatchedAccessSink:
                handlers[0].line(record.as_log())  # no LogRecord: see access_sink
            else:
                access_log.info("access", extra={"access": record.as_log()})

    def count_request(
        self,
        direction: Direction,
        peer_id: str | None,
        destination: str,
        method: str | None,
        status: int | None,
        decision: str,
        duration_seconds: float,
        bytes_in: int,
        bytes_out: int,
        policies: Sequence[str] = (),
        *,
        sample: bool = True,
    ) -> None:
        """The metrics of one request (what `request` counts, without the access line),
        labelled by edge: `destination` is the listener's configured service; the source
        service comes from the verified `peer_id` (inbound) or our own ID (outbound).
        A denial is also kept as a sample (without its path: only `request` has it)."""
        key = (direction, peer_id, destination, method, status, decision)
        children = self._request_children.get(key)
        if children is None:
            m = self.metrics
            source = service_of(peer_id) if direction == "inbound" else self.local_service
            children = (
                m.requests.labels(
                    direction,
                    source,
                    destination,
                    method or "",
                    str(status) if status is not None else "",
                    status_class(status),
                    decision,
                ),
                m.request_duration.labels(direction, source, destination, method or ""),
                m.bytes.labels(direction, source, destination, "received"),
                m.bytes.labels(direction, source, destination, "sent"),
                source,
            )
            if len(self._request_children) < _CACHED_LABEL_SETS:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(duration_seconds)
        if bytes_in:
            children[2].inc(bytes_in)
        if bytes_out:
            children[3].inc(bytes_out)
        if decision in _DENIED:
            denials = self.metrics.denials
            for policy in policies or ("none",):
                self._child(denials, children[4], destination, decision, policy).inc()
            if sample and direction == "inbound":
                now = datetime.now(UTC)
                self._sample(peer_id, destination, method, None, decision, policies, now)

    def _sample(
        self,
        peer_id: str | None,
        destination: str,
        method: str | None,
        path: str | None,
        decision: str,
        policies: Sequence[str],
        time: datetime,
    ) -> None:
        if not peer_id or not method:  # refused before a verified peer or a method: no replay
            return
        self.denial_samples.append(
            {
                "time": time.isoformat(),
                "principal": peer_id,
                "action": method,
                "resource": destination,
                "path": path[:_SAMPLE_PATH_CHARS] if path is not None else None,
                "decision": decision,
                "policies": list(policies)[:8],
            }
        )

    def take_denial_samples(self) -> list[dict[str, Any]]:
        """The samples kept since the last call, oldest first (and forget them)."""
        taken = list(self.denial_samples)
        self.denial_samples.clear()
        return taken

    def incomplete(self, direction: Direction, reason: str | None) -> None:
        """Count a response cut after its head (reason ``response_incomplete: <cause>``)."""
        if reason is not None and reason.startswith(INCOMPLETE):
            # the cause's code only ("app_error: <text>" → "app_error"): bounded labels
            cause = reason[len(INCOMPLETE) :].lstrip(": ").split(":", 1)[0] or "unknown"
            self._child(self.metrics.requests_incomplete, direction, cause).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)  # the metrics live as long as this observer
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._children) < _CACHED_LABEL_SETS:
                self._children[key] = child
        return child

    def decision(self, result: str, policies: Sequence[str]) -> None:
        """Count one authorization decision (result: allow, deny, audit_deny, error)."""
        decisions = self.metrics.authz_decisions
        if not policies:
            self._child(decisions, result, "").inc()
        for policy in policies:
            self._child(decisions, result, policy).inc()

    def handshake(
        self, direction: Direction, ok: bool, reason: str = "", service: str | None = None
    ) -> None:
        """Count one mesh handshake; `service` is the destination service of the edge
        (default: ours for inbound). A failed inbound one has no verified source."""
        self.metrics.handshakes.labels(direction, "ok" if ok else "failed", reason).inc()
        if not ok:
            if direction == "inbound":
                edge = (UNKNOWN, service or self.inbound_service)
            else:
                edge = (self.local_service, service or UNKNOWN)
            self._child(self.metrics.handshake_failures, direction, *edge, reason).inc()

    def connection_opened(self, direction: Direction) -> None:
        self._child(self.metrics.connections, direction).inc()
        self._child(self.metrics.connections_open, direction).inc()

    def connection_closed(self, direction: Direction) -> None:
        self._child(self.metrics.connections_open, direction).dec()

    def connection_refused(self, direction: Direction, reason: str) -> None:
        """A connection closed before any handshake (e.g. ``max_connections``)."""
        self.metrics.connections_refused.labels(direction, reason).inc()

    def body_timeout(self, direction: Direction, kind: str) -> None:
        """A request body cut with 408: ``idle`` (a pause too long) or ``slow`` (under the
        minimum rate, `meshgate/http/body_pace.py`)."""
        self.metrics.body_timeouts.labels(direction, kind).inc()

    def policy_engine_error(self) -> None:
        """The policy engine raised instead of deciding; the request was denied."""
        self.metrics.policy_engine_errors.inc()
