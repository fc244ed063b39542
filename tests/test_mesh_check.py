"""`mesh-ca check`'s checks over a mesh view (pure): each failure says what and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mesh_ca.mesh_check import Thresholds, run_checks

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def instance(**changes: Any) -> dict[str, Any]:
    row = {
        "spiffe_id": "spiffe://example.org/ns/shop/svc/orders",
        "instance": "h:1",
        "service": "orders",
        "version": "0.1.0",
        "ready": True,
        "ready_code": "ready",
        "ready_reason": "SVID valid",
        "stale": False,
        "last_report_age_seconds": 1.0,
        "last_report_at": (NOW - timedelta(seconds=1)).isoformat(),
        "clock_skew_seconds": 0.2,
        "svid_issued_at": (NOW - timedelta(minutes=10)).isoformat(),
        "svid_expires_at": (NOW + timedelta(minutes=50)).isoformat(),
        "policy_version": "abc",
        "policy_error": None,
    }
    return row | changes


def view(*instances: dict[str, Any], **ca: Any) -> dict[str, Any]:
    return {
        "generated_at": NOW.isoformat(),
        "ca": {
            "trust_domain": "example.org",
            "version": "0.1.0",
            "store_up": True,
            "root_not_after": (NOW + timedelta(days=3000)).isoformat(),
            "intermediate_not_after": (NOW + timedelta(days=300)).isoformat(),
        }
        | ca,
        "instances": list(instances),
    }


def failed(document: dict[str, Any]) -> dict[str, Any]:
    return {c.name: c for c in run_checks(document, None, "127.0.0.1:9", Thresholds()) if not c.ok}


def test_a_healthy_mesh_passes_every_check() -> None:
    checks = run_checks(view(instance()), None, "127.0.0.1:9", Thresholds())
    assert [c.name for c in checks if not c.ok] == []
    assert len(checks) == 10


def test_each_problem_fails_its_own_check_with_a_hint() -> None:
    problems = view(
        instance(  # 5 of 60 minutes left
            svid_issued_at=(NOW - timedelta(minutes=55)).isoformat(),
            svid_expires_at=(NOW + timedelta(minutes=5)).isoformat(),
        ),
        instance(instance="h:2", policy_error="shop.cedar:3: unexpected token"),
        instance(instance="h:3", ready=False, ready_code="persist_failed", ready_reason="disk"),
        instance(instance="h:4", stale=True, last_report_age_seconds=40.0),
        instance(instance="h:5", version="0.2.0", clock_skew_seconds=-9.5),
        intermediate_not_after=(NOW + timedelta(days=3)).isoformat(),
    )
    found = failed(problems)
    assert set(found) == {
        "svid_expiry",
        "policies",
        "sidecars_ready",
        "sidecars_stale",
        "version_skew",
        "clock_skew",
        "ca_certificates",
    }
    assert "renewals are failing" in found["svid_expiry"].hint
    assert "h:1" in found["svid_expiry"].details[0]
    assert "shop.cedar:3" in found["policies"].details[0]
    assert "persist_failed: disk" in found["sidecars_ready"].details[0]
    assert "-9.5s" in found["clock_skew"].details[0]
    assert "intermediate expires in 3d" in found["ca_certificates"].message


def test_an_unreachable_ca_is_one_failed_check_naming_the_address() -> None:
    [check] = run_checks(None, "Connection refused", "127.0.0.1:9", Thresholds())
    assert (check.name, check.ok) == ("ca_reachable", False)
    assert "127.0.0.1:9" in check.message
    assert "mesh-ca serve --admin-listen 127.0.0.1:9" in check.hint


def test_no_reporting_sidecar_fails_and_says_how_they_report() -> None:
    found = failed(view())
    assert "[report]" in found["sidecars_reporting"].hint


def test_a_registered_endpoint_without_a_reporting_sidecar_fails() -> None:
    registrations = [
        {"service": "orders", "address": "10.0.0.1:9443", "spiffe_id": instance()["spiffe_id"]},
        {"service": "pay", "address": "10.0.0.2:9443", "spiffe_id": "spiffe://example.org/x"},
    ]
    checks = run_checks(view(instance()), None, "127.0.0.1:9", Thresholds(), registrations)
    [check] = [c for c in checks if c.name == "sidecars_registered"]
    assert not check.ok
    assert check.details == ["pay 10.0.0.2:9443: spiffe://example.org/x"]
    assert "lease" in check.hint
    ok = run_checks(view(instance()), None, "127.0.0.1:9", Thresholds(), registrations[:1])
    assert all(c.ok for c in ok)


def test_a_central_edit_the_ca_refused_fails_the_policies_check() -> None:
    # The sidecars keep the last published set and report no error: the CA's publisher does.
    central = {
        "published": {"version": 4, "sha256": "ab", "published_at": NOW.isoformat()},
        "last_error": "/srv/policies: shop.cedar:7: unexpected end of input",
        "sidecars": [],
    }
    checks = run_checks(view(instance()), None, "127.0.0.1:9", Thresholds(), None, central)
    [check] = [c for c in checks if not c.ok]
    assert check.name == "policies"
    assert check.details == [
        "control plane (serving published v4): /srv/policies: shop.cedar:7: unexpected end of input"
    ]
    assert "mesh-sidecar policy validate" in check.hint
    fixed = central | {"last_error": None}
    assert all(
        c.ok for c in run_checks(view(instance()), None, "127.0.0.1:9", Thresholds(), None, fixed)
    )


def test_the_ca_slots_are_shown_and_a_rotating_intermediate_is_not_late_at_30_days() -> None:
    slots = [
        {"kind": "root", "slot": "active", "id": "aa", "not_after": "2036-01-01T00:00:00+00:00"},
        {
            "kind": "intermediate",
            "slot": "active",
            "id": "bb",
            "not_after": "2026-06-20T00:00:00+00:00",
        },
        {
            "kind": "intermediate",
            "slot": "prepared",
            "id": "cc",
            "not_after": "2026-07-10T00:00:00+00:00",
        },
    ]
    rotating = view(
        instance(),
        intermediate_not_after=(NOW + timedelta(days=19)).isoformat(),
        rotation_automatic=True,
        trust_sequence=42,
        slots=slots,
    )
    checks = {c.name: c for c in run_checks(rotating, None, "127.0.0.1:9", Thresholds())}
    assert checks["ca_certificates"].ok
    assert checks["ca_slots"].ok
    assert "trust sequence 42: 1 root(s), 2 intermediate(s)" in checks["ca_slots"].message
    assert (
        "intermediate prepared cc notAfter 2026-07-10T00:00:00+00:00" in checks["ca_slots"].details
    )
    # Days before its end and still active: rotation is not happening.
    late = rotating | {
        "ca": rotating["ca"] | {"intermediate_not_after": (NOW + timedelta(days=2)).isoformat()}
    }
    assert "ca_certificates" in failed(late)
    # Without automatic rotation the usual 30-day warning holds.
    manual = rotating | {"ca": rotating["ca"] | {"rotation_automatic": False}}
    assert "ca_certificates" in failed(manual)
    broken = rotating | {"ca": rotating["ca"] | {"slots": slots[:1]}}
    assert "ca_slots" in failed(broken)
