"""The rolling window of sidecar reports: per instance and per edge, 15 minutes. Pure.

`MeshWindow.add` takes one accepted `Report` (with what the CA verified: the caller's
SPIFFE ID, its SVID's validity, its address) at CA time `now`; `MeshWindow.totals` sums
what arrived in the last 1, 5 or 15 minutes. Nothing here does I/O or reads a clock;
`MeshWindow` has its own lock (reports arrive on the event loop, views are read from the
admin listener, maybe from a thread).

Sums are differences of running totals, so a view costs one subtraction per instance and
edge whatever the window: each instance keeps its running totals per edge since it was
first heard, and before each report with edges a mark (the receive time and the totals
so far; copy-on-write, so only the edges that report touches are new objects), at most one
every 10 s. The sum over (now - window, now] is the running total minus the first mark
after now - window: what arrived in the window, less at most 10 s at its start. Marks
older than the longest window are dropped.

Bounded: at most `max_instances` instances (and `max_instances_per_id` per SPIFFE ID); an
instance silent for the longest window is forgotten.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, final

from mesh_ca.control.histogram import Histogram
from mesh_ca.control.report_wire import DenialSample, EdgeReport, Report, SidecarStatus
from meshgate.errors import MeshgateError

__all__ = [
    "WINDOWS",
    "EdgeKey",
    "EdgeTotals",
    "InstanceState",
    "MeshWindow",
    "TooManyInstances",
    "parse_window",
]

# The windows the views offer, by name; the longest is what is kept.
WINDOWS: Final[dict[str, timedelta]] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
}
_KEPT: Final = max(WINDOWS.values())
_SAMPLES_PER_INSTANCE: Final = 32
# A window starts at the first mark inside it: its start is exact to this many seconds
# (fewer marks, less memory: each holds a copy of the edges the next report touched).
_MARK_SECONDS: Final = 10.0

# (direction, source service, destination service)
EdgeKey = tuple[str, str, str]


def parse_window(text: str) -> timedelta:
    """``1m``, ``5m`` or ``15m``; ValueError naming the choices otherwise."""
    try:
        return WINDOWS[text]
    except KeyError:
        raise ValueError(f"window {text!r}: use one of {', '.join(WINDOWS)}") from None


class TooManyInstances(MeshgateError):  # noqa: N818 - a refusal, answered 429
    """The window holds as many instances (in all, or of this SPIFFE ID) as it may."""


@final
@dataclass(slots=True)
class EdgeTotals:
    """Summed deltas of one edge seen from one direction. `outcomes` is keyed by
    (status class, decision, protocol); `denials` by (decision, policy)."""

    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latency: Histogram | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    denials: Counter[tuple[str, str]] = field(default_factory=Counter)
    handshake_failures: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def successes(self) -> int:
        """HTTP answers of class 1xx-4xx (a 403 denial is an answer: denials are counted
        apart), tcp connections not denied; never a 5xx or a request left unanswered."""
        ok = 0
        for (status_class, decision, protocol), n in self.outcomes.items():
            if protocol == "tcp":
                ok += n if decision != "deny" else 0
            elif status_class in ("1xx", "2xx", "3xx", "4xx"):
                ok += n
        return ok

    def add_report(self, edge: EdgeReport) -> None:
        for row in edge.outcomes:
            self.outcomes[(row.status_class, row.decision, row.protocol)] += row.count
        if edge.latency is not None:
            if self.latency is None:
                self.latency = Histogram.empty(edge.latency.bounds)
            self.latency.add(edge.latency.bounds, edge.latency.counts, edge.latency.sum_seconds)
        self.bytes_received += edge.bytes_received
        self.bytes_sent += edge.bytes_sent
        for denial in edge.denials:
            self.denials[(denial.decision, denial.policy)] += denial.count
        self.handshake_failures.update(edge.handshake_failures)

    def copy(self) -> EdgeTotals:
        latency = self.latency
        return EdgeTotals(
            Counter(self.outcomes),
            Histogram(latency.bounds, list(latency.counts), latency.sum_seconds)
            if latency is not None
            else None,
            self.bytes_received,
            self.bytes_sent,
            Counter(self.denials),
            Counter(self.handshake_failures),
        )

    def minus(self, earlier: EdgeTotals | None) -> EdgeTotals:
        """What was added since `earlier`, a copy of these running totals taken before."""
        if earlier is None:
            return self
        latency = self.latency
        if latency is not None and earlier.latency is not None:
            latency = Histogram(
                latency.bounds,
                [a - b for a, b in zip(latency.counts, earlier.latency.counts, strict=True)],
                latency.sum_seconds - earlier.latency.sum_seconds,
            )
        return EdgeTotals(
            self.outcomes - earlier.outcomes,
            latency,
            self.bytes_received - earlier.bytes_received,
            self.bytes_sent - earlier.bytes_sent,
            self.denials - earlier.denials,
            self.handshake_failures - earlier.handshake_failures,
        )

    def empty(self) -> bool:
        return not (
            self.requests
            or self.bytes_received
            or self.bytes_sent
            or self.denials.total()
            or self.handshake_failures.total()
        )

    def merge(self, other: EdgeTotals) -> None:
        self.outcomes.update(other.outcomes)
        if other.latency is not None:
            if self.latency is None:
                self.latency = Histogram.empty(other.latency.bounds)
            self.latency.add(other.latency.bounds, other.latency.counts, other.latency.sum_seconds)
        self.bytes_received += other.bytes_received
        self.bytes_sent += other.bytes_sent
        self.denials.update(other.denials)
        self.handshake_failures.update(other.handshake_failures)


@final
@dataclass(slots=True)
class InstanceState:
    """One reporting sidecar process: (verified SPIFFE ID, its instance name)."""

    spiffe_id: str
    instance: str
    address: str
    status: SidecarStatus
    svid_not_before: datetime
    svid_not_after: datetime
    first_seen: datetime
    last_seen: datetime
    clock_skew_seconds: float  # sidecar clock minus CA clock at receipt (+ transit time)
    interval_seconds: float
    # Running totals per edge since first heard, and the marks before each report.
    running: dict[EdgeKey, EdgeTotals] = field(default_factory=dict)
    mark_times: list[datetime] = field(default_factory=list)
    marks: list[dict[EdgeKey, EdgeTotals]] = field(default_factory=list)
    samples: deque[tuple[datetime, DenialSample]] = field(
        default_factory=lambda: deque(maxlen=_SAMPLES_PER_INSTANCE)
    )
    reports_received: int = 0
    truncated_edges: int = 0


@final
class MeshWindow:
    def __init__(self, *, max_instances: int = 10_000, max_instances_per_id: int = 64) -> None:
        self.max_instances = max_instances
        self.max_instances_per_id = max_instances_per_id
        self._instances: dict[tuple[str, str], InstanceState] = {}
        self._per_id: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.first_report_at: datetime | None = None

    def add(
        self,
        spiffe_id: str,
        address: str,
        svid_validity: tuple[datetime, datetime],
        report: Report,
        now: datetime,
    ) -> InstanceState:
        """Record one accepted report; `TooManyInstances` for a new instance over a cap."""
        key = (spiffe_id, report.status.instance)
        with self._lock:
            self._prune(now)
            state = self._instances.get(key)
            if state is None:
                if len(self._instances) >= self.max_instances:
                    raise TooManyInstances(f"the CA tracks {self.max_instances} instances")
                if self._per_id[spiffe_id] >= self.max_instances_per_id:
                    raise TooManyInstances(
                        f"{spiffe_id} already reports as {self.max_instances_per_id} instances"
                    )
                state = InstanceState(
                    spiffe_id,
                    report.status.instance,
                    address,
                    report.status,
                    *svid_validity,
                    first_seen=now,
                    last_seen=now,
                    clock_skew_seconds=0.0,
                    interval_seconds=report.interval_seconds,
                )
                self._instances[key] = state
                self._per_id[spiffe_id] += 1
            state.address = address
            state.status = report.status
            state.svid_not_before, state.svid_not_after = svid_validity
            state.last_seen = now
            state.clock_skew_seconds = (report.sent_at - now).total_seconds()
            state.interval_seconds = report.interval_seconds
            state.reports_received += 1
            state.truncated_edges = report.truncated_edges
            if report.edges:
                _apply(state, report.edges, now)
            for sample in report.denial_samples:
                state.samples.append((now, sample))
            if self.first_report_at is None:
                self.first_report_at = now
            return state

    def instances(self, now: datetime) -> list[InstanceState]:
        """Every instance heard from within the longest window, by SPIFFE ID, instance."""
        with self._lock:
            self._prune(now)
            return sorted(self._instances.values(), key=lambda s: (s.spiffe_id, s.instance))

    def totals(
        self, window: timedelta, now: datetime
    ) -> dict[EdgeKey, dict[tuple[str, str], EdgeTotals]]:
        """Per edge and direction, per instance ((SPIFFE ID, instance)): the sum of the
        deltas received in (now - window, now]."""
        since = now - window
        taken = []
        with self._lock:  # only references: running totals are never changed once stored
            self._prune(now)
            for key, state in self._instances.items():
                first = bisect.bisect_right(state.mark_times, since)
                if first < len(state.marks):  # else no report with edges in the window
                    taken.append((key, dict(state.running), state.marks[first]))
        out: dict[EdgeKey, dict[tuple[str, str], EdgeTotals]] = {}
        for key, running, before in taken:
            for edge_key, totals in running.items():
                added = totals.minus(before.get(edge_key))
                if not added.empty():
                    out.setdefault(edge_key, {})[key] = added
        return out

    def samples(self, window: timedelta, now: datetime) -> list[tuple[InstanceState, DenialSample]]:
        """Denial samples received within the window, newest first."""
        since = now - window
        found: list[tuple[datetime, InstanceState, DenialSample]] = []
        with self._lock:
            for state in self._instances.values():
                found.extend((at, state, s) for at, s in state.samples if at > since)
        found.sort(key=lambda item: (item[0], item[2].time), reverse=True)
        return [(state, sample) for _, state, sample in found]

    def _prune(self, now: datetime) -> None:
        """Forget deltas older than the longest window and instances silent that long."""
        oldest = now - _KEPT
        for key, state in list(self._instances.items()):
            if state.last_seen <= oldest:
                del self._instances[key]
                self._per_id[state.spiffe_id] -= 1
                if self._per_id[state.spiffe_id] <= 0:
                    del self._per_id[state.spiffe_id]
                continue
            drop = bisect.bisect_right(state.mark_times, oldest)
            if drop:
                del state.mark_times[:drop], state.marks[:drop]


def _apply(state: InstanceState, edges: Iterable[EdgeReport], now: datetime) -> None:
    """Mark the running totals as they are before this report (at most one mark every
    `_MARK_SECONDS`), then add it (copy-on-write: the mark keeps the old objects of the
    edges the report touches)."""
    times = state.mark_times
    if not times or (now - times[-1]).total_seconds() >= _MARK_SECONDS:
        times.append(now)
        state.marks.append(dict(state.running))
    for edge in edges:
        key = (edge.direction, edge.source, edge.destination)
        old = state.running.get(key)
        fresh = old.copy() if old is not None else EdgeTotals()
        fresh.add_report(edge)
        state.running[key] = fresh


def merged(parts: Iterable[EdgeTotals]) -> EdgeTotals:
    total = EdgeTotals()
    for part in parts:
        total.merge(part)
    return total
