"""Cedar behind the sidecar's authorization step: one verdict shape for both modes.

`CedarAuthorizer` is the `Authorizer` of tcp mode (action ``connect``, once per
connection); the http path asks the `PolicyStore` directly and turns the verdict into the
same labels with `verdict_result` and `determining_policies`. Pure: no trio, no sockets.
Fails closed: only a Cedar Allow with no evaluation errors allows; audit mode forwards
what would be denied, but never while no policy set is loaded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import final

from meshgate.identity import SpiffeId
from sidecar.authz.allow_list import Decision
from sidecar.policy import AccessRequest, DecisionReason, PolicyDecision, PolicyStore

__all__ = [
    "CedarAuthorizer",
    "determining_policies",
    "forwards",
    "source_ip",
    "verdict_result",
]


def source_ip(source: str) -> str:
    """The IP of a ``host:port`` / ``[v6]:port`` source address for the Cedar context.

    Anything that is not an IP literal is returned unchanged: Cedar then fails to build the
    `ip` value, and a policy that reads `context.source_address` denies (fails closed).
    """
    host = source
    if source.startswith("["):
        host = source[1:].partition("]")[0]
    elif source.count(":") == 1:
        host = source.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return source


_NEVER_FORWARDED = frozenset({DecisionReason.NOT_LOADED, DecisionReason.ENGINE_ERROR})


def forwards(verdict: PolicyDecision) -> bool:
    """Whether the request goes on: allowed, or denied in audit mode once a set is live.
    An engine fault is never forwarded, not even in audit mode: nothing was decided."""
    if verdict.allowed:
        return True
    return verdict.audit and verdict.reason not in _NEVER_FORWARDED


def verdict_result(verdict: PolicyDecision) -> str:
    """allow | deny | audit_deny, for logs and metrics."""
    if verdict.allowed:
        return "allow"
    return "audit_deny" if forwards(verdict) else "deny"


def determining_policies(verdict: PolicyDecision) -> tuple[str, ...]:
    """The `@id`s that decided: the erroring ones when an evaluation error denied (an
    erroring `forbid` next to a matching `permit`), else Cedar's determining policies."""
    if verdict.reason is DecisionReason.EVALUATION_ERROR and verdict.errored_policy_ids:
        return verdict.errored_policy_ids
    return verdict.policy_ids


@final
class CedarAuthorizer:
    """tcp mode: decide ``connect`` for the verified peer against the live policy set.

    `context` holds ``source`` (``host:port``) and ``tls_version``, as `sidecar.inbound.tcp`
    passes them. Fails closed (see the module docstring).
    """

    def __init__(
        self, store: PolicyStore, now: Callable[[], datetime], *, audit: bool = False
    ) -> None:
        self._store = store
        self._now = now
        self._audit = audit

    def authorize(
        self,
        peer: SpiffeId,
        action: str,
        resource: str,
        context: Mapping[str, object],
    ) -> Decision:
        request = AccessRequest(
            principal=peer,
            action=action,
            service=resource,
            source_address=source_ip(str(context.get("source", ""))),
            now=self._now(),
            tls_version=str(context.get("tls_version", "")),
        )
        verdict = self._store.decide(request, audit=self._audit)
        policies = determining_policies(verdict)
        reason = str(verdict.reason)
        if verdict.reason is DecisionReason.ENGINE_ERROR:
            reason = f"{reason}: {verdict.errors[0]}"
        if verdict.allowed:
            return Decision.allow(reason, policies)
        if forwards(verdict):
            return Decision(
                allowed=True,
                reason=f"audit: would deny ({reason})",
                policy_ids=policies,
                audit_deny=True,
            )
        return Decision.deny(reason, policies)
