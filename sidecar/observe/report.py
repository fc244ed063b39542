"""What a sidecar reports to the control plane: per-edge deltas from its own metrics. Pure.

The per-edge numbers are read from the same Prometheus registry that ``/metrics`` serves
(`SidecarMetrics.families`: with ``workers > 1`` the sum over the workers), so the control
plane sees exactly what a scrape sees. `edge_totals` turns the cumulative series into one
`Cumulative` per edge (direction, source service, destination service); `deltas` subtracts
the baseline of the last report the CA accepted. A series that went down (a worker's files
were reset) counts from zero. The shell (`sidecar.observe.reporter`) keeps the baseline
and moves it only after a 200, so a report the CA did not take is sent again, summed.

The body is a dict in the shape of `mesh_ca.control.report_wire.Report`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, final

from prometheus_client.core import Metric

__all__ = ["Cumulative", "EdgeKey", "deltas", "edge_totals", "sent_keys"]

EdgeKey = tuple[str, str, str]  # (direction, source service, destination service)
_MAX_EDGES: Final = 256  # mesh_ca.control.report_wire.MAX_EDGES
_K = TypeVar("_K")
_DURATION: Final = "meshgate_request_duration_seconds"  # a histogram: _bucket, _sum samples


@final
@dataclass(slots=True)
class Cumulative:
    """One edge's counters since the process started (or their difference)."""

    outcomes: dict[tuple[str, str, str], float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    latency_sum: float = 0.0
    bytes_received: float = 0.0
    bytes_sent: float = 0.0
    denials: dict[tuple[str, str], float] = field(default_factory=dict)
    handshake_failures: dict[str, float] = field(default_factory=dict)

    def weight(self) -> float:
        return sum(self.outcomes.values()) + sum(self.handshake_failures.values())


def _bump(table: dict[_K, float], key: _K, value: float) -> None:
    table[key] = table.get(key, 0.0) + value


def edge_totals(families: Iterable[Metric]) -> dict[EdgeKey, Cumulative]:
    """The cumulative per-edge series of a registry's collection."""
    edges: dict[EdgeKey, Cumulative] = {}

    def edge(labels: Mapping[str, str], direction: str | None = None) -> Cumulative:
        key = (
            direction or labels["direction"],
            labels["source_service"],
            labels["destination_service"],
        )
        found = edges.get(key)
        if found is None:
            found = edges[key] = Cumulative()
        return found

    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "meshgate_requests_total":
                protocol = "tcp" if labels.get("method") == "connect" else "http"
                row = (labels["status_class"], labels["decision"], protocol)
                _bump(edge(labels).outcomes, row, value)
            elif name == _DURATION + "_bucket":
                le = float(labels["le"])
                _bump(edge(labels).buckets, le, value)
            elif name == _DURATION + "_sum":
                edge(labels).latency_sum += value
            elif name == "meshgate_bytes_total":
                found = edge(labels)
                if labels["flow"] == "received":
                    found.bytes_received += value
                else:
                    found.bytes_sent += value
            elif name == "meshgate_denials_total":
                # Only the inbound side decides: denials are inbound edges.
                denial = (labels["decision"], labels["policy"])
                _bump(edge(labels, "inbound").denials, denial, value)
            elif name == "meshgate_handshake_failures_total":
                _bump(edge(labels).handshake_failures, labels["reason"], value)
    return edges


def _minus(now: float, then: float) -> float:
    """A counter's increase; one that went down was reset and counts from zero."""
    return now - then if now >= then else now


def _delta(now: Cumulative, then: Cumulative | None) -> Cumulative:
    if then is None:
        return now
    out = Cumulative(
        bytes_received=_minus(now.bytes_received, then.bytes_received),
        bytes_sent=_minus(now.bytes_sent, then.bytes_sent),
        latency_sum=_minus(now.latency_sum, then.latency_sum),
    )
    for key, value in now.outcomes.items():
        out.outcomes[key] = _minus(value, then.outcomes.get(key, 0.0))
    for le, value in now.buckets.items():
        out.buckets[le] = _minus(value, then.buckets.get(le, 0.0))
    for dkey, value in now.denials.items():
        out.denials[dkey] = _minus(value, then.denials.get(dkey, 0.0))
    for reason, value in now.handshake_failures.items():
        out.handshake_failures[reason] = _minus(value, then.handshake_failures.get(reason, 0.0))
    return out


def _histogram(buckets: Mapping[float, float], total_seconds: float) -> dict[str, Any] | None:
    """Cumulative ``le`` buckets to the wire's per-bucket counts (+Inf last)."""
    finite = sorted(le for le in buckets if math.isfinite(le))
    if not finite:
        return None
    counts: list[int] = []
    below = 0.0
    for le in [*finite, math.inf]:
        cumulative = buckets.get(le, below)
        counts.append(max(0, round(cumulative - below)))
        below = max(below, cumulative)
    if not any(counts):
        return None
    return {"bounds": finite, "counts": counts, "sum_seconds": max(0.0, total_seconds)}


def _wire(key: EdgeKey, delta: Cumulative) -> dict[str, Any] | None:
    """One edge of the report body; None when nothing happened on it."""
    direction, source, destination = key
    outcomes = [
        {"status_class": s, "decision": d, "protocol": p, "count": round(n)}
        for (s, d, p), n in sorted(delta.outcomes.items())
        if round(n) > 0
    ]
    denials = [
        {"decision": d, "policy": p, "count": round(n)}
        for (d, p), n in sorted(delta.denials.items())
        if round(n) > 0 and d in ("deny", "audit_deny")
    ]
    failures = {r: round(n) for r, n in sorted(delta.handshake_failures.items()) if round(n) > 0}
    body: dict[str, Any] = {
        "direction": direction,
        "source": source,
        "destination": destination,
        "outcomes": outcomes,
        "latency": _histogram(delta.buckets, delta.latency_sum),
        "bytes_received": max(0, round(delta.bytes_received)),
        "bytes_sent": max(0, round(delta.bytes_sent)),
        "denials": denials,
        "handshake_failures": failures,
    }
    if not (outcomes or denials or failures or body["bytes_received"] or body["bytes_sent"]):
        return None
    return body


def deltas(
    current: Mapping[EdgeKey, Cumulative],
    baseline: Mapping[EdgeKey, Cumulative],
    max_edges: int = _MAX_EDGES,
) -> tuple[list[dict[str, Any]], int]:
    """(edges of the report body, edges left out): what changed since `baseline`, the
    busiest `max_edges` edges first. Edges left out keep their deltas for the next
    report only if the caller does not move their baseline (`sent_keys`)."""
    changed = []
    for key, now in current.items():
        delta = _delta(now, baseline.get(key))
        wire = _wire(key, delta)
        if wire is not None:
            changed.append((delta.weight(), key, wire))
    changed.sort(key=lambda item: (-item[0], item[1]))
    return [wire for _, _, wire in changed[:max_edges]], max(0, len(changed) - max_edges)


def sent_keys(edges: Iterable[Mapping[str, Any]]) -> set[EdgeKey]:
    """The edge keys of report body edges (to move only their baseline)."""
    return {(e["direction"], e["source"], e["destination"]) for e in edges}
