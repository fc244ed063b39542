"""The stages of a CA API request, each on its own (mesh_ca/server/: routing, request_body,
authorize, store_steps): pure, no store but a fake where one is needed, time passed in."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ConfigDict

from mesh_ca.server.authorize import check_issuable, check_revocable, require_admin
from mesh_ca.server.core import _ROUTES, ApiError, ApiRequest, ApiResponse, StoreStep
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.server.request_body import parse_body, parse_id
from mesh_ca.server.routing import route
from mesh_ca.server.store_steps import StoreSteps
from mesh_ca.store import StoreError, StoreUnavailable
from meshgate.identity import SpiffeId, TrustDomain, verify_svid
from tests.pki import TestPki as Pki

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TD = TrustDomain("example.org")


def request(body: bytes = b"{}", content_type: str | None = "application/json") -> ApiRequest:
    return ApiRequest("POST", "/x", content_type, body, "10.0.0.1")


def refusal(call: object, *args: object) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.status, caught.value.code


# route


def test_the_route_table_gives_the_handler_or_404_or_405_naming_the_method() -> None:
    handler, blocking = route(_ROUTES, "POST", "/v1/renew")
    assert (handler, blocking) == (_ROUTES["/v1/renew"][1], True)
    assert refusal(route, _ROUTES, "GET", "/nowhere") == (404, "not_found")
    with pytest.raises(ApiError) as caught:
        route(_ROUTES, "GET", "/v1/renew")
    assert (caught.value.status, caught.value.headers) == (405, (("allow", "POST"),))


# parse body


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


def test_a_body_must_be_json_of_its_model_and_errors_name_the_field() -> None:
    assert parse_body(request(b'{"name":"a"}'), _Body).name == "a"
    assert parse_body(request(b'{"name":"a"}', "application/json; charset=utf-8"), _Body)
    assert refusal(parse_body, request(content_type="text/plain"), _Body)[0] == 415
    assert refusal(parse_body, request(content_type=None), _Body)[0] == 415
    with pytest.raises(ApiError, match="other: unknown field") as caught:
        parse_body(request(b'{"name":"a","other":1}'), _Body)
    assert caught.value.status == 400
    with pytest.raises(ApiError, match="spiffe_id: "):
        parse_id("spiffe://Example.org/x", "spiffe_id")


# authorize


def test_only_workload_ids_of_the_trust_domain_are_issuable_or_revocable() -> None:
    check_issuable(TD, SpiffeId.parse("spiffe://example.org/ns/a/svc/b"))
    other = SpiffeId.parse("spiffe://other.org/ns/a/svc/b")
    assert refusal(check_issuable, TD, other) == (403, "wrong_trust_domain")
    assert refusal(check_issuable, TD, SpiffeId.parse("spiffe://example.org/mesh/ca")) == (
        403,
        "reserved_id",
    )
    assert refusal(check_issuable, TD, SpiffeId.parse("spiffe://example.org")) == (
        403,
        "reserved_id",
    )
    assert refusal(check_revocable, TD, other) == (400, "bad_request")
    assert refusal(check_revocable, TD, SpiffeId.parse("spiffe://example.org")) == (
        400,
        "bad_request",
    )


class _Revocations:
    def __init__(self, *, revoked: bool) -> None:
        self.revoked = revoked

    def is_revoked(self, spiffe_id: SpiffeId, serial: int) -> bool:
        return self.revoked


def test_admin_actions_are_for_listed_ids_that_are_not_revoked_only() -> None:
    pki = Pki(now=T0)
    admin = pki.spiffe_id("ops", "admin")
    leaf = pki.leaf(admin)
    svid = verify_svid(leaf.cert, (pki.intermediate,), pki.bundles, T0)
    admins = frozenset({admin})
    assert require_admin(svid, admins, _Revocations(revoked=False)) == admin  # type: ignore[arg-type]
    assert refusal(require_admin, svid, frozenset(), _Revocations(revoked=False)) == (
        403,
        "not_admin",
    )
    assert refusal(require_admin, svid, admins, _Revocations(revoked=True)) == (403, "revoked")


# store step


def _ok() -> ApiResponse:
    return ApiResponse(200, b"{}")


def _fails(exc: Exception) -> StoreStep:
    def run() -> ApiResponse:
        raise exc

    return StoreStep(run, durable=False)


def test_a_store_step_turns_what_the_store_raised_into_responses() -> None:
    metrics = CaMetrics()
    steps = StoreSteps(object(), metrics)  # type: ignore[arg-type]  # not a GroupingStore
    assert steps.finish(StoreStep(_ok, durable=True)).status == 200
    refused = steps.finish(_fails(ApiError(403, "revoked", "no")))
    assert (refused.status, json.loads(refused.body)["error"]) == (403, "revoked")
    ledger = steps.finish(_fails(StoreError("duplicate serial")))
    assert (ledger.status, ledger.log["error"]) == (500, "ledger_failed")
    down = steps.finish(_fails(StoreUnavailable("db at 10.0.0.9 gone")))
    assert (down.status, ("retry-after", "5") in down.headers) == (503, True)
    assert "10.0.0.9" in down.log["detail"]  # the detail goes to the log only
    assert b"10.0.0.9" not in down.body
    assert metrics.store_up._value.get() == 0
    assert steps.finish(StoreStep(_ok, durable=False)).status == 200
    assert metrics.store_up._value.get() == 1  # back up after the next success
