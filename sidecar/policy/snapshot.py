"""An immutable, validated, pre-parsed policy set, sliced per destination service.

Cedar evaluates every policy in the set it is given, holding the GIL, at a few µs each. A
policy whose resource scope names another service can never apply, so each service gets a
slice: the policies that name it plus those that name no service. A decision narrows its
slice once more to the policies whose principal and action scopes can match its caller and
action (memoized per service, principal and action) and evaluates only those.

Leaving a policy out is exact, never a guess: a scope is decided only for the forms
`==`, `in` and `is ... in`, from the same entity graph Cedar uses; anything else stays in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, final

from meshgate.identity import SpiffeId
from sidecar.policy.context import context_reads

if TYPE_CHECKING:
    import cedarpy

    from sidecar.policy.decision import Decision

# (service, principal SPIFFE ID, action, context JSON as sent to Cedar, audit)
DecisionKey = tuple[str, str, str, str, bool]

__all__ = ["PolicyInfo", "PolicySnapshot", "SliceIndex", "resource_targets"]

SERVICE_TYPE: Final = "Service"
WORKLOAD_TYPE: Final = "Workload"
ACTION_TYPE: Final = "Action"
_PRINCIPAL_CACHE_MAX: Final = 1024
_NARROWED_CACHE_MAX: Final = 4096
# Decisions remembered per snapshot, keyed by everything Cedar is given (see `decision.py`).
_DECISION_CACHE_MAX: Final = 4096

EntityRef = tuple[str, str]  # (type, id)


@final
@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """Where a policy came from: its `@id` is also its Cedar policy id."""

    policy_id: str
    effect: Literal["permit", "forbid"]
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.policy_id} ({self.effect}, {self.file}:{self.line})"


def resource_targets(
    scope: Mapping[str, Any], service_ancestors: Mapping[str, frozenset[tuple[str, str]]]
) -> frozenset[str] | None:
    """The services a resource scope can match, or None when it may match any service.

    Requests always name a `Service::"name"` resource whose ancestors are those in the
    entities file (an unknown service has none), so `==` and `in` are decided exactly.
    Anything not understood here is treated as "any service" (a larger slice is safe).
    """
    op = scope.get("op")
    if op == "All":
        return None
    if op == "==":
        entity = scope["entity"]
        return frozenset([entity["id"]]) if entity["type"] == SERVICE_TYPE else frozenset()
    if op == "is":
        if scope.get("entity_type") != SERVICE_TYPE:
            return frozenset()
        inner = scope.get("in")
        return None if inner is None else _in_targets(inner["entity"], service_ancestors)
    if op == "in" and "entity" in scope:
        return _in_targets(scope["entity"], service_ancestors)
    return None


def _in_targets(
    entity: Mapping[str, str], service_ancestors: Mapping[str, frozenset[tuple[str, str]]]
) -> frozenset[str]:
    uid = (entity["type"], entity["id"])
    targets = {name for name, ancestors in service_ancestors.items() if uid in ancestors}
    if uid[0] == SERVICE_TYPE:
        targets.add(uid[1])
    return frozenset(targets)


def principal_may_match(
    scope: Mapping[str, Any], principal: EntityRef, ancestors: frozenset[EntityRef]
) -> bool:
    """Whether a principal scope can match `principal` (a Workload) with `ancestors`.
    True when unsure: keeping a policy that cannot apply changes no decision."""
    op = scope.get("op")
    if op == "==":
        return _ref(scope["entity"]) == principal
    if op == "in" and "entity" in scope:
        target = _ref(scope["entity"])
        return target == principal or target in ancestors
    if op == "is":
        if scope.get("entity_type") != principal[0]:
            return False
        inner = scope.get("in")
        if inner is None:
            return True
        return principal_may_match({"op": "in", **inner}, principal, ancestors)
    return True


def action_may_match(scope: Mapping[str, Any], action: str, ancestors: frozenset[str]) -> bool:
    """Whether an action scope can match `action` (whose action groups are `ancestors`).
    True when unsure."""
    op = scope.get("op")
    if op == "==":
        return _ref(scope["entity"]) == (ACTION_TYPE, action)
    if op == "in":
        if "entity" in scope:
            targets = [_ref(scope["entity"])]
        elif "entities" in scope:
            targets = [_ref(entity) for entity in scope["entities"]]
        else:
            return True
        return any(
            kind == ACTION_TYPE and (name == action or name in ancestors) for kind, name in targets
        )
    return True


def _ref(entity: Mapping[str, Any]) -> EntityRef:
    return (str(entity.get("type")), str(entity.get("id")))


def ancestors_of(
    start: Iterable[EntityRef], parents: Mapping[EntityRef, Iterable[EntityRef]]
) -> frozenset[EntityRef]:
    """Every entity reachable from `start` through `parents` (`start` included)."""
    seen: set[EntityRef] = set()
    stack = list(start)
    while stack:
        uid = stack.pop()
        if uid not in seen:
            seen.add(uid)
            stack.extend(parents.get(uid, ()))
    return frozenset(seen)


@final
class SliceIndex:
    """Pre-parsed `PolicySet` handles: one per named service, one shared for the rest;
    with each, the context attributes its policies read (None: the whole context)."""

    __slots__ = (
        "_by_service",
        "_ests_by_service",
        "_reads_by_service",
        "_shared",
        "_shared_ests",
        "_shared_reads",
    )

    def __init__(
        self,
        policies: Mapping[str, Mapping[str, Any]],
        targets: Mapping[str, frozenset[str] | None],
    ) -> None:
        everywhere = {pid: est for pid, est in policies.items() if targets[pid] is None}
        named: dict[str, dict[str, Mapping[str, Any]]] = {}
        for pid, est in policies.items():
            for service in targets[pid] or ():
                named.setdefault(service, dict(everywhere))[pid] = est
        self._shared_ests: Mapping[str, Mapping[str, Any]] = everywhere
        self._ests_by_service: Mapping[str, Mapping[str, Mapping[str, Any]]] = named
        self._shared = _policy_set(everywhere)
        self._shared_reads = context_reads(everywhere.values())
        self._by_service = {service: _policy_set(ests) for service, ests in named.items()}
        self._reads_by_service = {
            service: context_reads(ests.values()) for service, ests in named.items()
        }

    def for_service(self, service: str) -> cedarpy.PolicySet:
        return self._by_service.get(service, self._shared)

    def context_reads_for(self, service: str) -> frozenset[str] | None:
        """The context attributes the slice of `service` reads; None means all of them."""
        if service in self._by_service:
            return self._reads_by_service[service]
        return self._shared_reads

    def policies_for(self, service: str) -> Mapping[str, Mapping[str, Any]]:
        """The slice of `service` as Cedar JSON (EST) policies by id."""
        return self._ests_by_service.get(service, self._shared_ests)

    @property
    def services(self) -> frozenset[str]:
        return frozenset(self._by_service)


def _policy_set(policies: Mapping[str, Mapping[str, Any]]) -> cedarpy.PolicySet:
    import cedarpy

    document = {"staticPolicies": dict(policies), "templates": {}, "templateLinks": []}
    return cedarpy.PolicySet.from_json_str(json.dumps(document))


@final
@dataclass(frozen=True, slots=True, eq=False)
class PolicySnapshot:
    """A policy set that passed validation; never mutated once built (the principal
    entity and narrowed-set caches are memos of pure results, bounded)."""

    directory: Path
    version: str
    files: tuple[str, ...]
    loaded_at: datetime
    policies: Mapping[str, PolicyInfo]
    schema: cedarpy.Schema
    entities: cedarpy.Entities
    # Every policy as EST; its `PolicySet` (`full_set`, the tests' and tools' reference)
    # is parsed on first use only: the data path decides on slices, and a second native
    # copy of every policy is ~4 MB at 1,000 policies.
    all_policies: Mapping[str, Mapping[str, Any]]
    slices: SliceIndex
    known_workloads: frozenset[str]
    header_names: frozenset[str]
    # Actions a request may name: those whose `appliesTo` accepts the request the sidecar
    # builds (checked against the schema at load). Empty denies every request.
    request_actions: frozenset[str] = frozenset()
    # Context attributes the full set reads (None: all); see `context.py`.
    full_set_context_reads: frozenset[str] | None = None
    # The parents graph of entities.json (Workloads with their derived Namespace parent),
    # and each schema action's action groups: what `principal in` / `action in` test.
    entity_parents: Mapping[EntityRef, tuple[EntityRef, ...]] = field(default_factory=dict)
    action_ancestors: Mapping[str, frozenset[str]] = field(default_factory=dict)
    _principal_entities: dict[str, cedarpy.Entities] = field(default_factory=dict, repr=False)
    _narrowed: dict[tuple[str, str, str], tuple[cedarpy.PolicySet, frozenset[str] | None]] = field(
        default_factory=dict, repr=False
    )
    _decisions: dict[DecisionKey, Decision] = field(default_factory=dict, repr=False)
    _full: list[cedarpy.PolicySet] = field(default_factory=list, repr=False)

    @property
    def full_set(self) -> cedarpy.PolicySet:
        if not self._full:
            self._full.append(_policy_set(self.all_policies))
        return self._full[0]

    def cached_decision(self, key: DecisionKey) -> Decision | None:
        return self._decisions.get(key)

    def remember_decision(self, key: DecisionKey, decision: Decision) -> None:
        """Bounded: when full, start over (a cleared cache only costs Cedar calls)."""
        if len(self._decisions) >= _DECISION_CACHE_MAX:
            self._decisions.clear()
        self._decisions[key] = decision

    def policy_set_for(self, service: str, *, sliced: bool = True) -> cedarpy.PolicySet:
        return self.slices.for_service(service) if sliced else self.full_set

    def context_reads_for(self, service: str, *, sliced: bool = True) -> frozenset[str] | None:
        return self.slices.context_reads_for(service) if sliced else self.full_set_context_reads

    def narrowed(
        self, service: str, principal_id: str, principal: SpiffeId, action: str
    ) -> tuple[cedarpy.PolicySet, frozenset[str] | None]:
        """The policies of the `service` slice whose principal and action scopes can match,
        and the context attributes they read (memoized, bounded)."""
        key = (service, principal_id, action)
        cached = self._narrowed.get(key)
        if cached is not None:
            return cached
        uid = (WORKLOAD_TYPE, principal_id)
        if principal_id in self.known_workloads:
            start = self.entity_parents.get(uid, ())
        else:  # built per request by `workload_entity`: only its Namespace parent
            start = (("Namespace", principal.namespace),) if principal.namespace else ()
        ancestors = ancestors_of(start, self.entity_parents)
        action_groups = self.action_ancestors.get(action, frozenset())
        kept = {
            pid: est
            for pid, est in self.slices.policies_for(service).items()
            if principal_may_match(est["principal"], uid, ancestors)
            and action_may_match(est["action"], action, action_groups)
        }
        result = (_policy_set(kept), context_reads(kept.values()))
        if len(self._narrowed) >= _NARROWED_CACHE_MAX:
            self._narrowed.clear()
        self._narrowed[key] = result
        return result

    def entities_with(self, principal_id: str, delta_json: Callable[[], str]) -> cedarpy.Entities:
        """The base entities plus the request's principal (cached per SPIFFE ID)."""
        if principal_id in self.known_workloads:
            return self.entities
        cached = self._principal_entities.get(principal_id)
        if cached is None:
            if len(self._principal_entities) >= _PRINCIPAL_CACHE_MAX:
                self._principal_entities.clear()
            cached = self.entities.with_added_json_str(delta_json())
            self._principal_entities[principal_id] = cached
        return cached

    def describe(self, policy_ids: Iterable[str]) -> list[str]:
        return [str(self.policies[p]) if p in self.policies else p for p in policy_ids]

    def summary(self) -> dict[str, object]:
        """A JSON view for the admin endpoint."""
        return {
            "directory": str(self.directory),
            "version": self.version,
            "files": list(self.files),
            "loaded_at": self.loaded_at.isoformat(),
            "policies": len(self.policies),
            "sliced_services": sorted(self.slices.services),
            # Headers some policy reads: a request with two copies of one is refused (400).
            "headers_read": sorted(self.header_names),
        }
