"""The pure decision: one access request against one snapshot, failing closed.

Requests are built as structured JSON (entity references as `{"type", "id"}` dicts and a
context dict), never by formatting Cedar text, so no SPIFFE ID, path or header value can
change the meaning of a policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, final

from meshgate.identity import SpiffeId
from meshgate.records import record
from sidecar.policy.context import request_context
from sidecar.policy.loader import workload_entity
from sidecar.policy.snapshot import PolicySnapshot

if TYPE_CHECKING:
    import cedarpy

__all__ = [
    "AccessRequest",
    "Decision",
    "DecisionReason",
    "decide",
    "deny_engine_error",
    "deny_unloaded",
]

_ERRORED_POLICY_RE: Final = re.compile(r"error while evaluating policy `([^`]+)`")


class DecisionReason(StrEnum):
    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"  # a forbid policy matched
    NO_PERMIT = "no-permit"  # default deny: nothing permits
    EVALUATION_ERROR = "evaluation-error"  # some policy errored: never allow
    INVALID_REQUEST = "invalid-request"  # Cedar could not build the request (unknown action...)
    NOT_LOADED = "not-loaded"  # no policy set has gone live yet
    ENGINE_ERROR = "engine-error"  # the engine raised instead of deciding


@final
@record(frozen=True, slots=True)
class AccessRequest:
    """What the sidecar knows about one request (http) or connection (tcp, action `connect`).

    `path` is the normalized path that will be forwarded; `headers` are (name, value) pairs
    as received; `now` is the decision time (UTC-aware).
    """

    principal: SpiffeId
    action: str
    service: str
    source_address: str
    now: datetime
    path: str = ""
    query: str = ""
    host: str = ""
    headers: Sequence[tuple[str, str]] = ()
    tls_version: str = "TLSv1.3"


_NEVER_FORWARDED: Final = frozenset({DecisionReason.NOT_LOADED, DecisionReason.ENGINE_ERROR})


@final
@record(frozen=True, slots=True)
class Decision:
    """One authorization decision, tcp or http, Cedar or the allow list: the verdict and
    everything a log line and a metric need to explain it.

    `allowed` is the verdict. `reason` is a `DecisionReason` for Cedar, a short sentence for
    the allow list. `audit` echoes the caller's mode: in audit mode a denied request is still
    forwarded (`forward`) and counted as ``audit_deny`` (`would_deny`), except when nothing
    was decided (no policy set live, or the engine raised): that is never forwarded.
    """

    allowed: bool
    reason: str
    policy_ids: tuple[str, ...] = ()  # determining policies (their @id)
    errors: tuple[str, ...] = ()
    errored_policy_ids: tuple[str, ...] = ()
    version: str = ""
    audit: bool = False
    cedar_decision: str = field(default="", repr=False)

    @classmethod
    def allow(cls, reason: str, policy_ids: tuple[str, ...] = ()) -> Decision:
        return cls(allowed=True, reason=reason, policy_ids=policy_ids)

    @classmethod
    def deny(cls, reason: str, policy_ids: tuple[str, ...] = ()) -> Decision:
        return cls(allowed=False, reason=reason, policy_ids=policy_ids)

    @property
    def forward(self) -> bool:
        """Whether the request or connection goes on: allowed, or denied in audit mode once
        a set is live. Fails closed: an engine fault is never forwarded, not even in audit."""
        if self.allowed:
            return True
        return self.audit and self.reason not in _NEVER_FORWARDED

    @property
    def would_deny(self) -> bool:
        """Forwarded only because of audit mode."""
        return self.forward and not self.allowed

    @property
    def result(self) -> str:
        """allow | deny | audit_deny, for logs and metrics."""
        if self.allowed:
            return "allow"
        return "audit_deny" if self.forward else "deny"

    @property
    def determining_policy_ids(self) -> tuple[str, ...]:
        """The `@id`s that decided: the erroring ones when an evaluation error denied (an
        erroring `forbid` next to a matching `permit`), else Cedar's determining policies."""
        if self.reason is DecisionReason.EVALUATION_ERROR and self.errored_policy_ids:
            return self.errored_policy_ids
        return self.policy_ids

    @property
    def detail(self) -> str:
        """The reason for a log line; an engine fault names its error."""
        if self.reason is DecisionReason.ENGINE_ERROR and self.errors:
            return f"{self.reason}: {self.errors[0]}"
        return str(self.reason)


def deny_unloaded(*, audit: bool = False) -> Decision:
    """The decision when no policy set is live: deny (fails closed), even in audit mode's
    verdict; the caller still decides whether audit mode forwards."""
    return Decision(allowed=False, reason=DecisionReason.NOT_LOADED, policy_ids=(), audit=audit)


def deny_engine_error(error: BaseException, version: str, *, audit: bool = False) -> Decision:
    """The decision when the engine raised: deny (fails closed), naming the error."""
    text = f"{type(error).__name__}: {error}"
    return Decision(
        allowed=False,
        reason=DecisionReason.ENGINE_ERROR,
        policy_ids=(),
        errors=(text[:200],),
        version=version,
        audit=audit,
    )


def cedar_request(
    snapshot: PolicySnapshot, request: AccessRequest, context_keys: frozenset[str] | None = None
) -> dict[str, Any]:
    """The request as Cedar JSON: the full context, or only `context_keys`."""
    return {
        "principal": {"type": "Workload", "id": str(request.principal)},
        "action": {"type": "Action", "id": request.action},
        "resource": {"type": "Service", "id": request.service},
        "context": request_context(
            path=request.path,
            query=request.query,
            host=request.host,
            headers=request.headers,
            source_address=request.source_address,
            tls_version=request.tls_version,
            now=request.now,
            header_names=snapshot.header_names,
            keys=context_keys,
        ),
    }


def decide(
    snapshot: PolicySnapshot,
    request: AccessRequest,
    *,
    audit: bool = False,
    sliced: bool = True,
    check_schema: bool = False,
    cache: bool = True,
) -> Decision:
    """Allow only when Cedar says Allow and no policy errored; otherwise deny (fails closed).

    Cedar skips a policy whose evaluation errors, so an erroring `forbid` next to a matching
    `permit` would otherwise allow: any evaluation error denies here.

    Cedar's per-request schema validation is replaced by what makes it redundant: the
    action must be one of `snapshot.request_actions` (checked against the schema at load),
    principal and resource types are fixed here, and the context is built from typed fields
    by code whose output the load checked against the schema; it holds only what the slice
    reads (see `context.py`). `check_schema=True` takes Cedar's own validated path instead
    (the full context and the schema on every call): the tests' reference.

    The sliced path remembers decisions on the snapshot (bounded), keyed by every input of
    the Cedar call; `cache=False` always asks Cedar (the tests' reference for the cache).
    """
    import cedarpy  # here, not at the top: a sidecar without Cedar policies never loads it

    if not check_schema and request.action not in snapshot.request_actions:
        return Decision(
            allowed=False,
            reason=DecisionReason.INVALID_REQUEST,
            policy_ids=(),
            errors=(f"action {request.action!r} is not a request action of the schema",),
            version=snapshot.version,
            audit=audit,
        )
    principal_id = str(request.principal)
    if check_schema or not sliced:
        policy_set = snapshot.policy_set_for(request.service, sliced=sliced)
        reads = snapshot.context_reads_for(request.service, sliced=sliced)
    else:
        policy_set, reads = snapshot.narrowed(
            request.service, principal_id, request.principal, request.action
        )
        if len(policy_set) == 0:
            # What Cedar answers for an empty set: default deny, nothing determined it.
            return Decision(
                allowed=False,
                reason=DecisionReason.NO_PERMIT,
                policy_ids=(),
                version=snapshot.version,
                audit=audit,
                cedar_decision=cedarpy.Decision.Deny.value,
            )
    if check_schema:
        entities = _entities(snapshot, principal_id, request.principal)
        result = cedarpy.is_authorized(
            cedar_request(snapshot, request), policy_set, entities, snapshot.schema
        )
        return _verdict(result, snapshot.version, audit)
    cedar = cedar_request(snapshot, request, reads)
    # A context string skips the wrapper's copy of the request; Cedar parses it anyway.
    context_json = json.dumps(cedar["context"])
    # The key is every input of this Cedar call: the policy set is a function of (service,
    # principal, action) and the snapshot, the entities of the snapshot and the principal,
    # and the context string is exactly what Cedar reads (only the attributes the policies
    # read; `time` among them when a policy reads it). A new snapshot starts empty.
    key = (request.service, principal_id, request.action, context_json, audit)
    cache = cache and sliced  # the full set (sliced=False) is the tests' reference: uncached
    if cache:
        cached = snapshot.cached_decision(key)
        if cached is not None:
            return cached
    cedar["context"] = context_json
    entities = _entities(snapshot, principal_id, request.principal)
    decision = _verdict(cedarpy.is_authorized(cedar, policy_set, entities), snapshot.version, audit)
    if cache:
        snapshot.remember_decision(key, decision)
    return decision


def _entities(snapshot: PolicySnapshot, principal_id: str, principal: SpiffeId) -> cedarpy.Entities:
    return snapshot.entities_with(principal_id, lambda: json.dumps([workload_entity(principal)]))


def _verdict(result: cedarpy.AuthzResult, version: str, audit: bool) -> Decision:
    import cedarpy

    diagnostics = result.diagnostics
    errors = tuple(sorted(diagnostics.errors))
    reasons = tuple(sorted(diagnostics.reasons))
    errored: tuple[str, ...] = ()
    if errors:
        found = {m.group(1) for e in errors for m in _ERRORED_POLICY_RE.finditer(e)}
        errored = tuple(sorted(found))
    decision = result.decision
    if decision == cedarpy.Decision.Allow and not errors:
        reason = DecisionReason.ALLOWED
    elif decision not in (cedarpy.Decision.Allow, cedarpy.Decision.Deny):
        reason = DecisionReason.INVALID_REQUEST
    elif decision == cedarpy.Decision.Deny and reasons:
        reason = DecisionReason.FORBIDDEN
    elif errors:
        reason = DecisionReason.EVALUATION_ERROR
    else:
        reason = DecisionReason.NO_PERMIT
    return Decision(
        allowed=reason is DecisionReason.ALLOWED,
        reason=reason,
        policy_ids=reasons,
        errors=errors,
        errored_policy_ids=errored,
        version=version,
        audit=audit,
        cedar_decision=decision.value,
    )
