"""The sidecar's Prometheus metrics, in a registry of its own (one per sidecar process).

Names follow Prometheus conventions: `meshgate_` prefix, base units (seconds, bytes),
`_total` on counters (`tests/test_metrics_names.py` checks them). Labels hold bounded
values only: SPIFFE IDs of mesh workloads, methods, status codes, reason codes, `@id`s of
policies — never paths or request ids.

Two sources are read rather than pushed: the certificate expiry gauge follows the
`CredentialStore` (set on every publish), and rotations are read from `IdentityStats` at
scrape time, so the lifecycle keeps no metrics code of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from sidecar.identity.credentials import CredentialStore
from sidecar.identity.stats import IdentityStats

__all__ = ["CONTENT_TYPE", "SidecarMetrics"]

# The classic text format: `generate_latest` writes it (names escaped to underscores) and
# every scraper reads it; we do not negotiate OpenMetrics or text 1.0.0.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
# No `*_created` series: in the text format they are extra gauges per labelled child
# (doubling the series count) that Prometheus ignores by default. Process-wide setting.
disable_created_metrics()  # type: ignore[no-untyped-call]
_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@final
class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "meshgate_requests_total",
            "HTTP requests (or tcp connections) handled, by outcome.",
            ["direction", "source", "destination", "method", "status", "decision"],
            registry=r,
        )
        self.requests_incomplete = Counter(
            "meshgate_requests_incomplete_total",
            "Requests whose response was cut after its head went out (also counted in "
            "meshgate_requests_total with the status sent), by what cut it.",
            ["direction", "cause"],
            registry=r,
        )
        self.request_duration = Histogram(
            "meshgate_request_duration_seconds",
            "Time from request head received to response end.",
            ["direction", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.authz_decisions = Counter(
            "meshgate_authz_decisions_total",
            "Authorization decisions by result and determining policy.",
            ["result", "policy"],
            registry=r,
        )
        self.handshakes = Counter(
            "meshgate_tls_handshakes_total",
            "mTLS handshakes by direction, result and failure reason.",
            ["direction", "result", "reason"],
            registry=r,
        )
        self.connections_open = Gauge(
            "meshgate_connections_open", "Open connections.", ["direction"], registry=r
        )
        self.connections = Counter(
            "meshgate_connections_total", "Accepted connections.", ["direction"], registry=r
        )
        self.bytes = Counter(
            "meshgate_bytes_total",
            "Payload bytes relayed, by direction of the hop and flow.",
            ["direction", "flow"],
            registry=r,
        )
        self.cert_expiry = Gauge(
            "meshgate_certificate_expiry_timestamp_seconds",
            "notAfter of the current SVID, as a Unix timestamp.",
            registry=r,
        )
        self.connections_refused = Counter(
            "meshgate_connections_refused_total",
            "Connections closed before any handshake (e.g. max_connections reached).",
            ["direction", "reason"],
            registry=r,
        )
        self.body_timeouts = Counter(
            "meshgate_request_body_timeouts_total",
            "Request bodies cut with 408: kind idle (a pause) or slow (under the minimum rate).",
            ["direction", "kind"],
            registry=r,
        )
        self.policy_engine_errors = Counter(
            "meshgate_policy_engine_errors_total",
            "Decisions where the policy engine raised; each was denied (403).",
            registry=r,
        )
        self._identity = _IdentityCollector()
        r.register(self._identity)
        self.policy_reloads = Counter(
            "meshgate_policy_reloads_total", "Policy reloads by result.", ["result"], registry=r
        )
        self.policy_version = Gauge(
            "meshgate_policy_set_info",
            "The loaded policy set (value 1), labelled with its version.",
            ["version"],
            registry=r,
        )

    def watch_credentials(self, store: CredentialStore) -> None:
        """Keep the expiry gauge on the published SVID's notAfter (set now and on change)."""

        def update() -> None:
            current = store.current
            if current is not None:
                self.cert_expiry.set(current.not_after.timestamp())

        store.subscribe(update)
        update()

    def watch_identity(self, stats: IdentityStats) -> None:
        """Export the lifecycle's bootstrap and rotation results as counters."""
        self._identity.stats = stats

    def set_policy_version(self, version: str) -> None:
        self.policy_version.clear()
        self.policy_version.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_IDENTITY_KINDS: Final = ("bootstrap", "rotation")


@final
class _IdentityCollector(Collector):
    """`IdentityStats` counts as a Prometheus counter, read at scrape time."""

    def __init__(self) -> None:
        self.stats: IdentityStats | None = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "meshgate_certificate_rotations",
            "SVID bootstraps and rotations by result (ok, ca_unavailable, refused, invalid...).",
            labels=["kind", "result"],
        )
        if self.stats is not None:
            for kind in _IDENTITY_KINDS:
                for result, count in sorted(self.stats.results(kind).items()):
                    family.add_metric([kind, result], count)
        yield family
