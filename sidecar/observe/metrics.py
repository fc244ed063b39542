"""The sidecar's Prometheus metrics, in a registry of its own (one per sidecar process).

Names follow Prometheus conventions: `meshgate_` prefix, base units (seconds, bytes),
`_total` on counters (`tests/test_metrics_names.py` checks them). Labels hold bounded
values only, one kind per label: service names (`sidecar.observe.edges`: the per-edge labels
`source_service` and `destination_service`), methods, status codes, reason codes, `@id`s
of policies — never SPIFFE IDs, paths or request ids.

With ``workers > 1`` the workers run prometheus_client's multiprocess mode (values in
mmap files, `sidecar.workers`); the gauges below say how the parent combines them.

Two sources are read rather than pushed: the certificate expiry gauge follows the
`CredentialStore` (set on every publish), and rotations are read from `IdentityStats` at
scrape time, so the lifecycle keeps no metrics code of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
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
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from meshgate import native
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
        self._exposed: CollectorRegistry = r  # what `render` shows (`aggregate_workers`)
        self.requests = Counter(
            "meshgate_requests_total",
            "HTTP requests (or tcp connections) handled, by outcome.",
            [
                "direction",
                "source_service",
                "destination_service",
                "method",
                "status",
                "status_class",
                "decision",
            ],
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
            "Time from request head received to response end, per edge.",
            ["direction", "source_service", "destination_service", "method"],
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
        self.handshake_failures = Counter(
            "meshgate_handshake_failures_total",
            "Failed mTLS handshakes per edge and reason (inbound source: unknown, as the "
            "peer was not verified).",
            ["direction", "source_service", "destination_service", "reason"],
            registry=r,
        )
        self.denials = Counter(
            "meshgate_denials_total",
            "Requests (or tcp connections) denied per edge and deciding policy (`none`: "
            "no policy permitted, the default deny); decision deny or audit_deny.",
            ["source_service", "destination_service", "decision", "policy"],
            registry=r,
        )
        self.connections_open = Gauge(
            "meshgate_connections_open",
            "Open connections.",
            ["direction"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections = Counter(
            "meshgate_connections_total", "Accepted connections.", ["direction"], registry=r
        )
        self.bytes = Counter(
            "meshgate_bytes_total",
            "Payload bytes relayed, by direction of the hop, edge and flow.",
            ["direction", "source_service", "destination_service", "flow"],
            registry=r,
        )
        self.cert_expiry = Gauge(
            "meshgate_certificate_expiry_timestamp_seconds",
            "notAfter of the current SVID, as a Unix timestamp.",
            registry=r,
            multiprocess_mode="livemin",
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
            multiprocess_mode="livemax",
        )
        self._policy_versions: set[str] = set()
        self.policy_last_reload_failed = Gauge(
            "meshgate_policy_last_reload_failed",
            "1 when the last policy reload failed (the previous set stays live), 0 when it "
            "loaded a set or found it unchanged, or no policy is configured.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.policy_last_reload = Gauge(
            "meshgate_policy_last_reload_timestamp_seconds",
            "When the policy directory was last reloaded (start, a file changed, SIGHUP; any "
            "result), as a Unix timestamp.",
            registry=r,
            multiprocess_mode="livemax",
        )

        self.build_info = Gauge(
            "meshgate_build_info",
            "Which build of the HTTP core runs (value 1): http_core compiled (mypyc) or pure "
            "(Python); see meshgate/native.py.",
            ["http_core"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(native.http_build()).set(1)

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
        # Zero first: in multiprocess mode `clear` forgets the child but its mmap value stays.
        for old in self._policy_versions - {version}:
            self.policy_version.labels(version=old).set(0)
        self._policy_versions = {version}
        self.policy_version.clear()
        self.policy_version.labels(version=version).set(1)

    def count_policy_reload(self, result: str, now: float) -> None:
        """One reload of the policy directory (`result`: loaded, unchanged, failed) at
        Unix time `now`."""
        self.policy_reloads.labels(result).inc()
        self.policy_last_reload_failed.set(1 if result == "failed" else 0)
        self.policy_last_reload.set(now)

    def aggregate_workers(self, directory: Path) -> None:
        """Serve the sum over the worker processes whose multiprocess files are in
        `directory` (`sidecar.workers`), with this process's identity metrics: the parent
        runs the identity lifecycle, the workers everything else."""
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(_Families(self.registry, keep=_PARENT_FAMILIES))
        workers = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
        exposed.register(_Families(workers, drop=_PARENT_FAMILIES))
        self._exposed = exposed

    def families(self) -> Iterable[Metric]:
        """What `render` shows, as metric families (the control-plane report reads them)."""
        return self._exposed.collect()

    def render(self) -> bytes:
        return generate_latest(self._exposed)


_IDENTITY_KINDS: Final = ("bootstrap", "rotation")
# What a workers' parent serves from its own registry (it runs the identity lifecycle);
# the workers' copies of these are not summed (each is a copy of the parent's SVID).
_PARENT_FAMILIES: Final = frozenset(
    {"meshgate_certificate_expiry_timestamp_seconds", "meshgate_certificate_rotations"}
)


@final
class _Families(Collector):
    """The families of `inner` named in `keep` (or not named in `drop`): one registry
    must not expose a family twice."""

    def __init__(
        self,
        inner: Collector,
        keep: frozenset[str] | None = None,
        drop: frozenset[str] = frozenset(),
    ) -> None:
        self._inner = inner
        self._keep = keep
        self._drop = drop

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            if family.name in self._drop:
                continue
            if self._keep is None or family.name in self._keep:
                yield family


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
