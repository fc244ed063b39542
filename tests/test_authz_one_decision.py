"""One authorization decision type: the allow list, Cedar in tcp mode and the http path's
policy store all answer with `sidecar.policy.Decision`, and its labels (result, forward,
determining policies, detail) are the ones the access log and metrics printed before."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshgate.identity import SpiffeId
from sidecar.authz.allow_list import AllowList, authorize_safely
from sidecar.authz.cedar import CedarAuthorizer
from sidecar.policy import AccessRequest, Decision, DecisionReason, PolicyStore, ReloadOutcome

POLICIES = Path(__file__).resolve().parent.parent / "policies"
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
ORDERS = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")
WEB = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")
CONTEXT = {"source": "127.0.0.1:5000", "tls_version": "TLSv1.3"}


@pytest.fixture
def store() -> PolicyStore:
    store = PolicyStore()
    assert store.try_reload(POLICIES, T0) is ReloadOutcome.LOADED
    return store


def test_tcp_and_http_answer_with_the_same_type(store: PolicyStore) -> None:
    listed = AllowList([ORDERS]).authorize(ORDERS, "connect", "ledger", CONTEXT)
    cedar_tcp = CedarAuthorizer(store, lambda: T0).authorize(ORDERS, "connect", "ledger", CONTEXT)
    http = store.decide(
        AccessRequest(
            principal=WEB, action="GET", service="orders", source_address="127.0.0.1", now=T0
        )
    )
    faulty = authorize_safely(_Broken(), ORDERS, "connect", "ledger", CONTEXT)
    for decision in (listed, cedar_tcp, http, faulty):
        assert type(decision) is Decision
    assert (listed.result, listed.determining_policy_ids) == (
        "allow",
        (AllowList.POLICY_ID,),
    )
    assert (cedar_tcp.result, cedar_tcp.determining_policy_ids) == (
        "allow",
        ("orders-connects-ledger",),
    )
    assert faulty.result == "deny"
    assert not faulty.forward
    assert faulty.detail.startswith("authorizer error: RuntimeError")


class _Broken:
    def authorize(self, *_: object) -> Decision:
        raise RuntimeError("bug")


@pytest.mark.parametrize(
    ("decision", "result", "forward"),
    [
        (Decision(allowed=True, reason=DecisionReason.ALLOWED), "allow", True),
        (Decision(allowed=False, reason=DecisionReason.NO_PERMIT), "deny", False),
        (Decision(allowed=False, reason=DecisionReason.NO_PERMIT, audit=True), "audit_deny", True),
        (Decision(allowed=False, reason=DecisionReason.FORBIDDEN, audit=True), "audit_deny", True),
        # Nothing was decided: never forwarded, not even in audit mode (fails closed).
        (Decision(allowed=False, reason=DecisionReason.NOT_LOADED, audit=True), "deny", False),
        (Decision(allowed=False, reason=DecisionReason.ENGINE_ERROR, audit=True), "deny", False),
        (Decision.deny("peer is not on the allow-list"), "deny", False),
        (Decision.allow("peer is on the allow-list"), "allow", True),
    ],
)
def test_result_and_forward(decision: Decision, result: str, forward: bool) -> None:
    assert decision.result == result
    assert decision.forward is forward
    assert decision.would_deny is (result == "audit_deny")


def test_an_evaluation_error_names_the_erroring_policies() -> None:
    decision = Decision(
        allowed=False,
        reason=DecisionReason.EVALUATION_ERROR,
        policy_ids=("permit-all",),
        errored_policy_ids=("forbid-broken",),
    )
    assert decision.determining_policy_ids == ("forbid-broken",)


def test_an_engine_error_names_the_error_in_its_detail() -> None:
    decision = Decision(
        allowed=False, reason=DecisionReason.ENGINE_ERROR, errors=("RuntimeError: boom",)
    )
    assert decision.detail == "engine-error: RuntimeError: boom"
    assert Decision(allowed=False, reason=DecisionReason.NO_PERMIT).detail == "no-permit"


def test_the_tcp_log_line_keeps_its_reasons(store: PolicyStore) -> None:
    from sidecar.inbound.tcp import _log_reason

    audit = CedarAuthorizer(store, lambda: T0, audit=True)
    denied = audit.authorize(WEB, "connect", "ledger", CONTEXT)
    assert (denied.result, _log_reason(denied)) == ("audit_deny", "audit: would deny (no-permit)")
    allowed = audit.authorize(ORDERS, "connect", "ledger", CONTEXT)
    assert _log_reason(allowed) == "allowed"
    listed = AllowList([ORDERS]).authorize(WEB, "connect", "ledger", CONTEXT)
    assert _log_reason(listed) == "peer is not on the allow-list"
