"""The authorization step of the inbound path: who may do what to which service.

`AllowList` holds SPIFFE IDs (tcp mode, action ``connect``); Cedar plugs in behind the
same `Authorizer` protocol (`sidecar.authz.cedar.CedarAuthorizer`). Pure: no trio, no sockets.
Fails closed: a peer not on the list is denied, and so is any error while deciding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, final

from meshgate.identity import SpiffeId

__all__ = ["AllowList", "Authorizer", "Decision", "authorize_safely"]


@final
@dataclass(frozen=True, slots=True)
class Decision:
    """`allowed`, why (for logs and metrics), and the policies that determined it.

    `audit_deny`: allowed only because the authorizer runs in audit mode; its policies
    would have denied (log and count it as ``audit_deny``).
    """

    allowed: bool
    reason: str
    policy_ids: tuple[str, ...] = ()
    audit_deny: bool = False

    @property
    def result(self) -> str:
        """The decision label for logs and metrics: allow, deny or audit_deny."""
        if self.audit_deny:
            return "audit_deny"
        return "allow" if self.allowed else "deny"

    @classmethod
    def allow(cls, reason: str, policy_ids: tuple[str, ...] = ()) -> Decision:
        return cls(allowed=True, reason=reason, policy_ids=policy_ids)

    @classmethod
    def deny(cls, reason: str, policy_ids: tuple[str, ...] = ()) -> Decision:
        return cls(allowed=False, reason=reason, policy_ids=policy_ids)


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
