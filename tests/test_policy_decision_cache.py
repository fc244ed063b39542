"""The decision cache: a remembered decision is the decision Cedar gives for the same
request, and the cache stays bounded.

The shipped policies read `path`, a header (`has "x-tenant"`), `time.hour` and
`source_address`, so the generated requests vary each of them: a cache key that missed
one of those inputs would answer a request with another request's decision.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.identity import SpiffeId
from sidecar.policy import AccessRequest, PolicySnapshot, decide, load_snapshot
from sidecar.policy import snapshot as snapshot_module

POLICIES = Path(__file__).resolve().parent.parent / "policies"
NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
SNAPSHOT = load_snapshot(POLICIES, NOW)  # one for the whole module: the cache fills up

PRINCIPALS = [
    "spiffe://example.org/ns/shop/svc/web",
    "spiffe://example.org/ns/shop/svc/orders",
    "spiffe://example.org/ns/shop/svc/admin-console",
    "spiffe://example.org/ns/ops/svc/refunder",
    "spiffe://other.org/ns/shop/svc/web",
]
requests = st.builds(
    AccessRequest,
    principal=st.sampled_from(PRINCIPALS).map(SpiffeId.parse),
    action=st.sampled_from(["GET", "POST", "DELETE", "PUT", "connect"]),
    service=st.sampled_from(["orders", "payments", "ledger", "web"]),
    source_address=st.sampled_from(["127.0.0.1", "10.1.2.3", "192.0.2.7", "::1"]),
    now=st.integers(0, 47).map(lambda h: NOW + timedelta(hours=h)),  # hour 1-3 matters
    path=st.sampled_from(["/orders", "/orders/1", "/charge", "/refunds/batch", "/admin/x", "/"]),
    headers=st.sampled_from([(), (("x-tenant", "t"),), (("X-Tenant", "u"), ("accept", "*/*"))]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, audit=st.booleans())
def test_cached_decisions_equal_uncached_ones(request: AccessRequest, audit: bool) -> None:
    uncached = decide(SNAPSHOT, request, audit=audit, cache=False)
    assert decide(SNAPSHOT, request, audit=audit) == uncached  # a miss (or an earlier hit)
    assert decide(SNAPSHOT, request, audit=audit) == uncached  # now certainly a hit


def test_a_remembered_decision_is_returned_without_asking_cedar() -> None:
    snap = load_snapshot(POLICIES, NOW)
    req = AccessRequest(
        principal=SpiffeId.parse(PRINCIPALS[0]),
        action="GET",
        service="orders",
        source_address="127.0.0.1",
        now=NOW,
        path="/orders",
    )
    first = decide(snap, req)
    assert first.allowed
    assert decide(snap, req) is first
    assert decide(snap, req, cache=False) is not first


def test_the_cache_is_bounded() -> None:
    snap: PolicySnapshot = load_snapshot(POLICIES, NOW)
    bound = snapshot_module._DECISION_CACHE_MAX
    principal = SpiffeId.parse(PRINCIPALS[0])
    for i in range(bound + 10):  # every path differs, and the orders slice reads the path
        req = AccessRequest(
            principal=principal,
            action="GET",
            service="orders",
            source_address="127.0.0.1",
            now=NOW,
            path=f"/orders/{i}",
        )
        assert decide(snap, req).allowed
        assert len(snap._decisions) <= bound
