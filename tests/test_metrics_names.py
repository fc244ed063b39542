"""Every sidecar metric follows Prometheus naming conventions (parsed from the exposition)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.identity.stats import IdentityStats
from sidecar.observe.access import AccessRecord, Observer
from sidecar.observe.metrics import SidecarMetrics

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_LABEL = re.compile(r"[a-z][a-z0-9_]*")
# Units must be base units spelled out: seconds and bytes, never ms/kb/minutes.
_NON_BASE_UNITS = re.compile(r"_(ms|milliseconds|us|microseconds|minutes|hours|days|kb|mb|kib)\b")


def _all_families_touched() -> dict[str, str]:
    """Render a registry with at least one sample in every family: name → type."""
    metrics = SidecarMetrics()
    stats = IdentityStats()
    stats.count("rotation", "ok")
    metrics.watch_identity(stats)
    observer = Observer(metrics, "spiffe://example.org/ns/shop/svc/orders")
    observer.request(
        AccessRecord(
            datetime.now(UTC), "inbound", "http", None, "127.0.0.1:1", "orders", "GET", "/", 200,
            bytes_in=1, bytes_out=1,
        )
    )  # fmt: skip
    observer.decision("allow", ["p"])
    observer.handshake("inbound", ok=True)
    observer.connection_opened("inbound")
    observer.connection_refused("inbound", "max_connections")
    metrics.policy_reloads.labels("loaded").inc()
    metrics.set_policy_version("abc")
    families = text_string_to_metric_families(metrics.render().decode())
    return {f.name: f.type for f in families if f.samples}


FAMILIES = _all_families_touched()


def test_the_expected_families_are_exported() -> None:
    assert set(FAMILIES) >= {
        "meshgate_requests",
        "meshgate_request_duration_seconds",
        "meshgate_authz_decisions",
        "meshgate_tls_handshakes",
        "meshgate_connections_open",
        "meshgate_connections",
        "meshgate_connections_refused",
        "meshgate_bytes",
        "meshgate_certificate_expiry_timestamp_seconds",
        "meshgate_certificate_rotations",
        "meshgate_policy_reloads",
        "meshgate_policy_set_info",
        "meshgate_build_info",
    }


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_metric_name_follows_conventions(name: str) -> None:
    kind = FAMILIES[name]
    assert name.startswith("meshgate_"), "one prefix for the whole sidecar"
    assert _NAME.fullmatch(name), "snake_case, no colons (those are for recording rules)"
    assert not _NON_BASE_UNITS.search(name), "base units only (seconds, bytes)"
    if kind == "counter":
        # The parser strips `_total` from counter families: the exposition carries it.
        assert not name.endswith("_total")
    if kind == "gauge":
        assert not name.endswith(("_total", "_count", "_sum", "_bucket"))
    if kind == "histogram":
        assert name.endswith(("_seconds", "_bytes")), "a histogram observes a unit"
    if "duration" in name or "timestamp" in name or "expiry" in name:
        assert name.endswith("_seconds")
    if name.endswith("_info"):
        assert kind == "gauge"


def test_counters_carry_total_in_the_exposition_and_labels_are_snake_case() -> None:
    metrics = SidecarMetrics()
    metrics.handshakes.labels("inbound", "ok", "").inc()
    text = metrics.render().decode()
    for line in text.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            name = line.split()[2]
            assert f"{name}_total" in text or name.endswith("_total")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label in sample.labels:
                assert _LABEL.fullmatch(label), f"{family.name}: label {label!r}"
                assert not label.startswith("__")


def test_every_metric_has_help_text() -> None:
    metrics = SidecarMetrics()
    for family in text_string_to_metric_families(metrics.render().decode()):
        assert family.documentation.strip(), family.name
