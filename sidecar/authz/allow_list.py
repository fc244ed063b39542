"""The authorization step of the inbound path: who may do what to which service.

`AllowList` holds SPIFFE IDs (tcp mode, action ``connect``); Cedar plugs in behind the
same `Authorizer` protocol (`sidecar.authz.cedar.CedarAuthorizer`). Both answer with the one
`sidecar.policy.Decision` the http path gets from the policy store too. Pure: no trio, no sockets.
Fails closed: a peer not on the list is denied, and so is any error while deciding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, final

from meshgate.identity import SpiffeId
from sidecar.policy.decision import Decision

__all__ = ["AllowList", "Authorizer", "authorize_safely"]


class Authorizer(Protocol):
    def authorize(
        self,
        peer: SpiffeId,
        action: str,
        resource: str,
        context: Mapping[str, object],
    ) -> Decision: ...


@final
class AllowList:
    """Allow exactly the listed SPIFFE IDs to ``connect``; deny everything else."""

    POLICY_ID = "config.inbound.allowed_ids"

    def __init__(self, allowed: Iterable[SpiffeId]) -> None:
        self._allowed = frozenset(allowed)

    def authorize(
        self,
        peer: SpiffeId,
        action: str,
        resource: str,
        context: Mapping[str, object],
    ) -> Decision:
        if action != "connect":
            return Decision.deny(f"action {action!r} is not allowed by an allow-list")
        if peer in self._allowed:
            return Decision.allow("peer is on the allow-list", (self.POLICY_ID,))
        return Decision.deny("peer is not on the allow-list", (self.POLICY_ID,))


def authorize_safely(
    authorizer: Authorizer,
    peer: SpiffeId,
    action: str,
    resource: str,
    context: Mapping[str, object],
) -> Decision:
    """Call `authorizer`; an exception is a deny (fails closed), never an allow."""
    try:
        decision = authorizer.authorize(peer, action, resource, context)
    except Exception as exc:  # noqa: BLE001 - any authorizer bug must deny, not crash open
        return Decision.deny(f"authorizer error: {type(exc).__name__}: {exc}")
    if not isinstance(decision, Decision):
        return Decision.deny(f"authorizer returned {type(decision).__name__}, not Decision")
    return decision
