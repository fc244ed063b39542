"""The CA server's Prometheus metrics: one registry per server process, names ``meshgate_ca_*``.

Served at ``GET /metrics`` on the CA API without a client certificate: the figures are
counts, durations and certificate expiry times, never tokens, keys or SPIFFE IDs (label
values are fixed sets: issuance kinds, API error codes, token failure reasons, endpoints).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "CaMetrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# Requests take ~1-3 ms of CPU when the CA is idle and queue behind each other under load.
_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_GROUP_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64)


@final
class CaMetrics:
    """The counters, histogram and gauges of one CA server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.issuances = Counter(
            "meshgate_ca_issuances",
            "Issuance requests by kind (bootstrap, renew, ca-server) and result "
            "(ok or the API error code)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.token_failures = Counter(
            "meshgate_ca_token_failures",
            "Join tokens refused, by reason (unknown, used, expired, malformed)",
            ["reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "meshgate_ca_rate_limited_requests",
            "Issuance requests refused with 429 by the per-source rate limit",
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "meshgate_ca_request_duration_seconds",
            "CA API request duration (head read to response written) by endpoint",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "meshgate_ca_certificate_expiry_timestamp_seconds",
            "notAfter of the CA's certificates (root, intermediate, server) as a Unix time",
            ["certificate"],
            registry=self.registry,
        )
        self.slot_expiry = Gauge(
            "meshgate_ca_slot_expiry_timestamp_seconds",
            "notAfter of each root and intermediate slot (kind root|intermediate, slot "
            "prepared|active|old, id = first 16 hex digits of the certificate's SHA-256)",
            ["kind", "slot", "id"],
            registry=self.registry,
        )
        self.trust_sequence = Gauge(
            "meshgate_ca_trust_sequence",
            "spiffe_sequence of the trust material this replica publishes",
            registry=self.registry,
        )
        self.rotation_steps = Counter(
            "meshgate_ca_rotation_steps",
            "Automatic rotation steps this replica performed (prepare, activate, retire), "
            "and failed attempts (result error)",
            ["step", "result"],
            registry=self.registry,
        )
        self.store_up = Gauge(
            "meshgate_ca_store_up",
            "1 when the last state store operation succeeded, 0 when the store was unavailable",
            registry=self.registry,
        )
        self.store_up.set(1)
        self.group_steps = Histogram(
            "meshgate_ca_store_group_steps",
            "Issuance store steps committed together in one transaction (group commit)",
            buckets=_GROUP_BUCKETS,
            registry=self.registry,
        )
        # `labels()` checks and locks on every call (~10 µs); the hot path keeps the children.
        self._issuance_children: dict[tuple[str, str], Any] = {}
        self._duration_children: dict[str, Any] = {}

    def count_issuance(self, kind: str, result: str) -> None:
        """One issuance request of `kind` with `result` (a bounded set of label values)."""
        child = self._issuance_children.get((kind, result))
        if child is None:
            child = self._issuance_children[(kind, result)] = self.issuances.labels(kind, result)
        child.inc()

    def observe_request(self, endpoint: str, seconds: float) -> None:
        """One request's duration; `endpoint` is one of a bounded set (`endpoint_label`)."""
        child = self._duration_children.get(endpoint)
        if child is None:
            child = self._duration_children[endpoint] = self.request_duration.labels(endpoint)
        child.observe(seconds)

    def observe_group(self, steps: int) -> None:
        """One group commit of `steps` store steps."""
        self.group_steps.observe(steps)

    def set_expiry(self, certificate: str, not_after: datetime) -> None:
        self.certificate_expiry.labels(certificate).set(not_after.timestamp())

    def set_slots(self, sequence: int, slots: list[tuple[str, str, str, datetime]]) -> None:
        """The slots of the current trust state: (kind, slot, id, notAfter) each."""
        self.slot_expiry.clear()
        for kind, slot, ident, not_after in slots:
            self.slot_expiry.labels(kind, slot, ident).set(not_after.timestamp())
        self.trust_sequence.set(sequence)

    def store_is_up(self) -> bool:
        """What ``meshgate_ca_store_up`` says now (for the mesh view's CA section)."""
        return any(s.value == 1 for m in self.store_up.collect() for s in m.samples)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
