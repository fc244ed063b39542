"""Decisions skip Cedar's per-request schema validation: what replaces it loses nothing.

- every context the sidecar builds validates against the schema (hypothesis);
- only actions whose `appliesTo` accepts the sidecar's request are requestable;
- a schema that no longer matches what the sidecar builds fails the load;
- the fast path (narrowed slice, pruned context, no schema) decides exactly like Cedar's
  validated path on the whole set, on the shipped policies and on generated sets.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cedarpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.identity import SpiffeId
from sidecar.policy import (
    AccessRequest,
    DecisionReason,
    PolicyLoadError,
    PolicySnapshot,
    decide,
    load_snapshot,
)
from sidecar.policy.context import CONTEXT_FIELDS, context_reads
from sidecar.policy.decision import cedar_request
from sidecar.policy.snapshot import action_may_match, principal_may_match

POLICIES = Path(__file__).resolve().parent.parent / "policies"
NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
METHODS = {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"}
PRINCIPALS = [
    "spiffe://example.org/ns/shop/svc/web",
    "spiffe://example.org/ns/shop/svc/orders",
    "spiffe://example.org/ns/shop/svc/admin-console",
    "spiffe://example.org/ns/staging/svc/web",
    "spiffe://evil.example/ns/shop/svc/web",
    "spiffe://example.org/x",
]
ACTIONS = [*sorted(METHODS), "connect", "read", "write", "http", "TRACE", "get", ""]
SERVICES = ["orders", "payments", "ledger", "web", "elsewhere"]
PATHS = ["/orders", "/orders/1", "/charge", "/admin", "/admin/x", "/healthz", "/refunds/batch"]


@functools.cache
def _shipped() -> PolicySnapshot:
    return load_snapshot(POLICIES, NOW)


@pytest.fixture
def shipped() -> PolicySnapshot:
    return _shipped()


def _assert_same(snapshot: PolicySnapshot, req: AccessRequest) -> str:
    fast = decide(snapshot, req)
    reference = decide(snapshot, req, sliced=False, check_schema=True)
    assert (fast.allowed, fast.reason, fast.policy_ids, fast.errored_policy_ids) == (
        reference.allowed,
        reference.reason,
        reference.policy_ids,
        reference.errored_policy_ids,
    ), req
    if fast.reason is DecisionReason.EVALUATION_ERROR:
        assert fast.errors == reference.errors
    return fast.reason


header_values = st.text(max_size=40)  # any str, including control characters
requests = st.builds(
    AccessRequest,
    principal=st.sampled_from(PRINCIPALS).map(SpiffeId.parse),
    action=st.sampled_from(ACTIONS),
    service=st.sampled_from(SERVICES),
    source_address=st.ip_addresses().map(str),
    now=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, None]).map(lambda tz: tz or UTC),
    ),
    path=st.one_of(st.sampled_from(PATHS), st.text(max_size=30)),
    query=st.text(max_size=20),
    host=st.text(max_size=20),
    headers=st.lists(
        st.tuples(
            st.sampled_from(["X-Tenant", "x-tenant", "content-type", "User-Agent", "x-other"]),
            header_values,
        ),
        max_size=4,
    ).map(tuple),
    tls_version=st.sampled_from(["TLSv1.3", "TLSv1.2", ""]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests)
def test_every_context_the_sidecar_builds_validates_against_the_schema(
    req: AccessRequest,
) -> None:
    snapshot = _shipped()
    empty = cedarpy.PolicySet.from_str("")
    for action in sorted(snapshot.request_actions):
        cedar = cedar_request(snapshot, req)
        cedar["action"] = {"type": "Action", "id": action}
        assert set(cedar["context"]) == CONTEXT_FIELDS
        result = cedarpy.is_authorized(cedar, empty, snapshot.entities, snapshot.schema)
        # An invalid request would be NoDecision with an error naming what did not validate.
        assert result.decision == cedarpy.Decision.Deny, result.diagnostics.errors
        assert result.diagnostics.errors == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests)
def test_fast_path_decides_like_cedars_validated_path(req: AccessRequest) -> None:
    _assert_same(_shipped(), req)


def test_fast_path_matches_on_the_whole_shipped_matrix(shipped: PolicySnapshot) -> None:
    reasons = {
        _assert_same(
            shipped,
            AccessRequest(
                SpiffeId.parse(p),
                a,
                s,
                "10.1.2.3" if i % 2 else "192.0.2.1",
                NOW + timedelta(hours=i % 24),
                path=path,
                headers=(("X-Tenant", "t"),) if i % 3 == 0 else (),
            ),
        )
        for i, (p, a, s, path) in enumerate(
            (p, a, s, path) for p in PRINCIPALS for a in ACTIONS for s in SERVICES for path in PATHS
        )
    }
    assert {
        DecisionReason.ALLOWED,
        DecisionReason.FORBIDDEN,
        DecisionReason.NO_PERMIT,
        DecisionReason.INVALID_REQUEST,
    } <= reasons


def test_request_actions_are_the_methods_and_connect_never_groups(
    shipped: PolicySnapshot,
) -> None:
    assert shipped.request_actions == {*METHODS, "connect"}
    assert shipped.action_ancestors["GET"] == {"read", "http"}
    assert shipped.action_ancestors["connect"] == frozenset()


def test_an_action_group_is_never_requestable(tmp_path: Path) -> None:
    # Without a schema, `Action::"read" in Action::"read"` holds: the group itself would be
    # allowed by this policy if the request action were not checked first.
    shutil.copy(POLICIES / "mesh.cedarschema", tmp_path)
    (tmp_path / "entities.json").write_text("[]")
    (tmp_path / "p.cedar").write_text(
        '@id("readers")\npermit (principal, action in Action::"read", resource);\n'
    )
    snapshot = load_snapshot(tmp_path, NOW)
    principal = SpiffeId.parse(PRINCIPALS[0])
    for action in ("read", "http", "TRACE", "get"):
        decision = decide(snapshot, AccessRequest(principal, action, "orders", "127.0.0.1", NOW))
        assert not decision.allowed
        assert decision.reason is DecisionReason.INVALID_REQUEST
        assert "not a request action of the schema" in decision.errors[0]
    allowed = decide(snapshot, AccessRequest(principal, "GET", "orders", "127.0.0.1", NOW))
    assert allowed.allowed


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("  time: Time,\n", "  time: Time,\n  region: String,\n"),  # a field we never send
        ("  tls_version: String,", "  tls_version: Long,"),  # a field of another type
        ("entity Service;", "entity Service;\nentity Other;"),  # harmless: still loads
    ],
)
def test_a_schema_the_sidecar_cannot_satisfy_fails_the_load(
    tmp_path: Path, change: str, needle: str
) -> None:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    schema = target / "mesh.cedarschema"
    text = schema.read_text()
    assert change in text
    schema.write_text(text.replace(change, needle))
    if "Other" in needle:
        load_snapshot(target, NOW)
        return
    with pytest.raises(PolicyLoadError) as caught:
        load_snapshot(target, NOW)
    problem = caught.value.first
    assert problem.file == "mesh.cedarschema"
    assert "no action accepts the request the sidecar builds" in problem.message


def test_a_header_declared_with_another_type_fails_the_load(tmp_path: Path) -> None:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    schema = target / "mesh.cedarschema"
    schema.write_text(schema.read_text().replace('"x-tenant"?: String', '"x-tenant"?: Long'))
    (target / "guardrails.cedar").write_text(
        (target / "guardrails.cedar")
        .read_text()
        .replace('context.headers has "x-tenant"', 'context.headers has "x-tenant" && false')
    )
    with pytest.raises(PolicyLoadError, match="no action accepts"):
        load_snapshot(target, NOW)


def _est(policy: str) -> dict[str, object]:
    (body,) = json.loads(cedarpy.policies_to_json_str(policy))["staticPolicies"].values()
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("condition", "reads"),
    [
        ('context.path == "/x"', {"path"}),
        ('context["path"] == "/x" && context.time.hour > 1', {"path", "time"}),
        ("context has source_address", {"source_address"}),
        ('context.headers has "x-tenant"', {"headers"}),
        ("context.source_address.isLoopback()", {"source_address"}),
        ('principal.service == "x"', set()),
        ("context == {}", None),  # the whole record: send everything
        ('context.path == "/x" || [context].contains(context)', None),
    ],
)
def test_context_reads(condition: str, reads: set[str] | None) -> None:
    est = _est(f"permit (principal, action, resource) when {{ {condition} }};")
    assert context_reads([est]) == (None if reads is None else frozenset(reads))


def test_a_pruned_context_never_allows_what_the_full_one_denies(tmp_path: Path) -> None:
    # `has` on an attribute that was left out would be false: `has` counts as a read, so
    # the attribute is sent and the forbid below applies.
    shutil.copy(POLICIES / "mesh.cedarschema", tmp_path)
    (tmp_path / "entities.json").write_text("[]")
    (tmp_path / "p.cedar").write_text(
        '@id("all")\npermit (principal, action, resource);\n'
        '@id("needs-time")\nforbid (principal, action, resource) unless { context has time };\n'
        '@id("loopback-only")\nforbid (principal, action, resource)\n'
        "unless { context.source_address.isLoopback() };\n"
    )
    snapshot = load_snapshot(tmp_path, NOW)
    principal = SpiffeId.parse(PRINCIPALS[0])
    inside = AccessRequest(principal, "GET", "orders", "127.0.0.1", NOW)
    outside = AccessRequest(principal, "GET", "orders", "192.0.2.1", NOW)
    assert decide(snapshot, inside).allowed
    assert decide(snapshot, outside).policy_ids == ("loopback-only",)
    assert _assert_same(snapshot, outside) is DecisionReason.FORBIDDEN


def test_scope_matching_is_exact_for_the_forms_it_decides() -> None:
    web = ("Workload", PRINCIPALS[0])
    ancestors = frozenset({("Namespace", "shop"), ("Group", "ops"), ("Group", "staff")})
    scope = _est(f'permit (principal == Workload::"{PRINCIPALS[0]}", action, resource);')
    assert principal_may_match(scope["principal"], web, ancestors)  # type: ignore[arg-type]
    assert not principal_may_match(
        scope["principal"],  # type: ignore[arg-type]
        ("Workload", PRINCIPALS[1]),
        ancestors,
    )
    for text, expected in [
        ('principal in Group::"staff"', True),
        ('principal in Group::"dev"', False),
        ('principal is Workload in Namespace::"shop"', True),
        ('principal is Workload in Namespace::"dev"', False),
        ("principal is Workload", True),
        ("principal", True),
    ]:
        est = _est(f"permit ({text}, action, resource);")
        assert principal_may_match(est["principal"], web, ancestors) is expected, text  # type: ignore[arg-type]
    groups = frozenset({"read", "http"})
    for text, expected in [
        ('action == Action::"GET"', True),
        ('action == Action::"POST"', False),
        ('action in Action::"read"', True),
        ('action in Action::"write"', False),
        ('action in [Action::"POST", Action::"GET"]', True),
        ('action in [Action::"POST", Action::"write"]', False),
        ("action", True),
    ]:
        est = _est(f"permit (principal, {text}, resource);")
        assert action_may_match(est["action"], "GET", groups) is expected, text  # type: ignore[arg-type]


GENERATED_SCHEMA = """
entity Namespace;
entity Team in [Team];
entity Group in [Group, Team];
entity Workload in [Namespace, Group] = { trust_domain: String, namespace: String,
                                          service: String };
entity Tier;
entity Service in [Tier];
type Ctx = { path: String, query: String, host: String, headers: {}, source_address: ipaddr,
             tls_version: String, time: { epoch_seconds: Long, hour: Long, minute: Long,
             weekday: Long } };
action read, write;
action GET, HEAD in [read] appliesTo { principal: Workload, resource: Service, context: Ctx };
action POST, DELETE in [write] appliesTo { principal: Workload, resource: Service,
                                           context: Ctx };
action connect appliesTo { principal: Workload, resource: Service, context: Ctx };
"""
GEN_SERVICES = [f"s{i}" for i in range(6)]
GEN_CALLERS = [f"spiffe://example.org/ns/n{i % 3}/svc/c{i}" for i in range(8)]


def _generated_policy(rng: random.Random, index: int) -> str:
    principal = rng.choice(
        [
            "principal",
            f'principal == Workload::"{rng.choice(GEN_CALLERS)}"',
            f'principal in Namespace::"n{rng.randrange(3)}"',
            f'principal in Group::"g{rng.randrange(3)}"',
            f'principal in Team::"t{rng.randrange(2)}"',
            f'principal is Workload in Group::"g{rng.randrange(3)}"',
            "principal is Workload",
        ]
    )
    action = rng.choice(
        [
            "action",
            'action == Action::"GET"',
            'action == Action::"POST"',
            'action in Action::"read"',
            'action in Action::"write"',
            'action in [Action::"DELETE", Action::"connect"]',
        ]
    )
    resource = rng.choice(
        [
            "resource",
            f'resource == Service::"{rng.choice(GEN_SERVICES)}"',
            f'resource in Tier::"t{rng.randrange(2)}"',
        ]
    )
    condition = rng.choice(
        [
            f' when {{ context.path == "/p{rng.randrange(3)}" }}',
            f' when {{ principal.service == "c{rng.randrange(8)}" }}',
            " when { context.source_address.isLoopback() }",
            " when { context.time.hour < 12 }",
            "",
        ]
    )
    if index % 11 == 0:  # a few policies error at runtime when they apply
        condition = (
            ' when { context.path == "/p1"'
            " && context.time.epoch_seconds * 9223372036854775807 > 0 }"
        )
    effect = rng.choice(["permit", "permit", "forbid"])
    return f'@id("g{index}")\n{effect} ({principal}, {action}, {resource}){condition};\n'


@pytest.mark.parametrize("seed", range(5))
def test_fast_path_decides_like_cedar_on_generated_sets(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    (tmp_path / "mesh.cedarschema").write_text(GENERATED_SCHEMA)
    entities: list[dict[str, object]] = [
        {
            "uid": {"type": "Group", "id": f"g{i}"},
            "attrs": {},
            "parents": [{"type": "Team", "id": f"t{i % 2}"}],
        }
        for i in range(3)
    ]
    entities += [
        {
            "uid": {"type": "Workload", "id": caller},
            "attrs": {},
            "parents": [{"type": "Group", "id": f"g{rng.randrange(3)}"}],
        }
        for caller in GEN_CALLERS[:5]  # the other callers are unknown: Namespace parent only
    ]
    entities += [
        {
            "uid": {"type": "Service", "id": s},
            "attrs": {},
            "parents": [{"type": "Tier", "id": f"t{rng.randrange(2)}"}],
        }
        for s in GEN_SERVICES[:4]
    ]
    (tmp_path / "entities.json").write_text(json.dumps(entities))
    (tmp_path / "gen.cedar").write_text("".join(_generated_policy(rng, i) for i in range(60)))
    snapshot = load_snapshot(tmp_path, NOW)
    reasons = set()
    for _ in range(250):
        req = AccessRequest(
            SpiffeId.parse(rng.choice(GEN_CALLERS)),
            rng.choice(["GET", "HEAD", "POST", "DELETE", "connect", "read"]),
            rng.choice([*GEN_SERVICES, "elsewhere"]),
            rng.choice(["127.0.0.1", "10.0.0.1", "::1"]),
            NOW + timedelta(hours=rng.randrange(24)),
            path=f"/p{rng.randrange(3)}",
        )
        reasons.add(_assert_same(snapshot, req))
    # The comparison means something only if the sets produce varied outcomes.
    assert len(reasons) >= 4, reasons


def test_a_policy_reading_headers_indirectly_does_not_load(tmp_path: Path) -> None:
    # Only headers read by name are sent. This validates, yet names no header directly:
    # if it loaded, `has "x-tenant"` would always be false and the forbid would never apply.
    shutil.copy(POLICIES / "mesh.cedarschema", tmp_path)
    (tmp_path / "entities.json").write_text("[]")
    (tmp_path / "p.cedar").write_text(
        '@id("all")\npermit (principal, action, resource);\n\n'
        '@id("no-tenant")\nforbid (principal, action, resource)\n'
        'when { (if true then context.headers else context.headers) has "x-tenant" };\n'
    )
    with pytest.raises(PolicyLoadError) as caught:
        load_snapshot(tmp_path, NOW)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.policy_id) == ("p.cedar", 4, "no-tenant")
    assert "one at a time" in problem.message
