"""Per-edge metrics: labels hold one kind of value each (service names), in bounded sets."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.observe.access import Observer
from sidecar.observe.edges import OTHER, UNKNOWN, service_of, status_class
from sidecar.observe.metrics import SidecarMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.mark.parametrize(
    ("spiffe_id", "service"),
    [
        ("spiffe://example.org/ns/shop/svc/orders", "orders"),
        ("spiffe://td.example/ns/a-b/svc/pay_ments.v2", "pay_ments.v2"),
        ("spiffe://example.org/ns/shop/svc/orders/extra", OTHER),
        ("spiffe://example.org/workload/orders", OTHER),
        ("spiffe://example.org/ns/shop/svc/orders\n", OTHER),
        ("spiffe://example.org/mesh/ca", OTHER),
        (None, UNKNOWN),
        ("", UNKNOWN),
    ],
)
def test_the_source_service_comes_from_the_convention_or_a_fixed_value(
    spiffe_id: str | None, service: str
) -> None:
    assert service_of(spiffe_id) == service


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "2xx"), (204, "2xx"), (403, "4xx"), (503, "5xx"), (None, "none"), (99, OTHER)],
)
def test_status_classes(status: int | None, label: str) -> None:
    assert status_class(status) == label


def _samples(metrics: SidecarMetrics) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(metrics.render().decode())
        for s in f.samples
    }


def _sum(samples: Samples, name: str, **labels: Any) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_an_inbound_denial_is_counted_per_edge_and_deciding_policy() -> None:
    metrics = SidecarMetrics()
    observer = Observer(metrics, "spiffe://example.org/ns/shop/svc/orders", "orders")
    web = "spiffe://example.org/ns/shop/svc/web"
    observer.count_request(
        "inbound", web, "orders", "DELETE", 403, "deny", 0.01, 0, 9, ("no-delete",)
    )
    observer.count_request("inbound", web, "orders", "PUT", 403, "deny", 0.01, 0, 9)
    observer.count_request("inbound", web, "orders", "GET", 200, "allow", 0.02, 0, 5, ("reads",))
    samples = _samples(metrics)
    edge = {"source_service": "web", "destination_service": "orders"}
    assert _sum(samples, "meshgate_denials_total", **edge, policy="no-delete") == 1
    assert _sum(samples, "meshgate_denials_total", **edge, policy="none") == 1  # default deny
    assert _sum(samples, "meshgate_denials_total") == 2
    assert _sum(samples, "meshgate_requests_total", **edge, status_class="4xx") == 2
    assert _sum(samples, "meshgate_requests_total", **edge, status_class="2xx") == 1
    assert _sum(samples, "meshgate_request_duration_seconds_count", **edge) == 3
    assert _sum(samples, "meshgate_bytes_total", **edge, flow="sent") == 23
    # No label carries a SPIFFE ID any more.
    assert not any("spiffe://" in v for _, ls in samples for _, v in ls)


def test_outbound_edges_start_at_our_own_service() -> None:
    metrics = SidecarMetrics()
    observer = Observer(metrics, "spiffe://example.org/ns/shop/svc/web")
    orders = "spiffe://example.org/ns/shop/svc/orders"
    observer.count_request("outbound", orders, "orders", "GET", 200, "none", 0.01, 3, 4)
    observer.handshake("outbound", ok=False, reason="identity_mismatch", service="orders")
    observer.handshake("inbound", ok=False, reason="unknown_ca")
    samples = _samples(metrics)
    edge = {"source_service": "web", "destination_service": "orders"}
    assert _sum(samples, "meshgate_requests_total", direction="outbound", **edge) == 1
    failed = {"direction": "outbound", **edge, "reason": "identity_mismatch"}
    assert _sum(samples, "meshgate_handshake_failures_total", **failed) == 1
    # Inbound: not verified, so no source service; no [inbound] service configured either.
    inbound = {"source_service": UNKNOWN, "destination_service": UNKNOWN, "reason": "unknown_ca"}
    assert _sum(samples, "meshgate_handshake_failures_total", **inbound) == 1


def test_a_failed_policy_reload_shows_until_one_succeeds() -> None:
    metrics = SidecarMetrics()
    metrics.count_policy_reload("loaded", 100.0)
    metrics.set_policy_version("v1")
    metrics.count_policy_reload("failed", 160.0)
    samples = _samples(metrics)
    assert _sum(samples, "meshgate_policy_last_reload_failed") == 1
    assert _sum(samples, "meshgate_policy_last_reload_timestamp_seconds") == 160.0
    metrics.count_policy_reload("loaded", 200.0)
    metrics.set_policy_version("v2")
    samples = _samples(metrics)
    assert _sum(samples, "meshgate_policy_last_reload_failed") == 0
    assert _sum(samples, "meshgate_policy_set_info", version="v2") == 1
    assert _sum(samples, "meshgate_policy_set_info", version="v1") == 0
