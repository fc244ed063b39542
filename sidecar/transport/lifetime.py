"""What bounds the life of a mesh connection, and when to stop putting requests on it. Pure.

A connection is authenticated once, at its handshake. Two settings decide how long that
authentication may carry traffic (``[connection_lifetime] mode``):

- ``strict``: until the first of the two SVIDs of the handshake (the peer's and ours)
  reaches its notAfter. A stream still open at that instant is cut.
- ``until_revoked``: until the peer is revoked (its SPIFFE ID, or the serial it presented),
  until its certificate no longer chains to the current trust bundle, until this sidecar
  has no unexpired SVID at all (fail closed: the CA stayed away past our expiry), or
  until ``max_age_seconds`` after the handshake, whichever comes first. Rotation of
  either side does not end it.

In both modes, revocation and a trust bundle that drops the peer's CA end a connection at
once (`sidecar.connections`). Rotation must never fail a request, so both sides stop
using a connection *before* it could be cut: the outbound pool puts no new request on a
connection once the SVID it presented there was superseded, or ``retire_margin_seconds``
before the first notAfter of the two SVIDs (where a ``strict`` peer cuts it, whatever our
own mode) or before its hard end; the inbound side answers ``connection: close`` from that
margin on. The mode only decides what happens to a stream still running at the end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import final

__all__ = ["LifetimeMode", "LifetimePolicy"]


class LifetimeMode(enum.StrEnum):
    STRICT = "strict"
    UNTIL_REVOKED = "until_revoked"


@final
@dataclass(frozen=True, slots=True)
class LifetimePolicy:
    mode: LifetimeMode = LifetimeMode.STRICT
    max_age_seconds: float = 3600.0
    retire_margin_seconds: float = 10.0

    def hard_end(
        self, opened_at: datetime, peer_not_after: datetime, own_not_after: datetime
    ) -> datetime:
        """The instant the connection is cut whatever it carries (revocation, an untrusted
        peer and, in ``until_revoked``, our own expiry without a successor come earlier)."""
        if self.mode is LifetimeMode.STRICT:
            return min(peer_not_after, own_not_after)
        return opened_at + timedelta(seconds=self.max_age_seconds)

    def retire_at(self, hard_end: datetime) -> datetime:
        """From this instant no new request starts on the connection."""
        return hard_end - timedelta(seconds=self.retire_margin_seconds)

    def keeps_serving(self, hard_end: datetime, own_not_after: datetime | None) -> datetime:
        """``until_revoked``: the hard end, but never past our current SVID's notAfter
        (None: no SVID, end now). ``strict`` ignores our current SVID (the hard end
        already holds the one presented)."""
        if self.mode is LifetimeMode.STRICT:
            return hard_end
        if own_not_after is None:
            return min(hard_end, datetime.min.replace(tzinfo=hard_end.tzinfo))
        return min(hard_end, own_not_after)

    def end_reason(self, at_hard_end: bool) -> str:
        """The access-log reason of a connection that reached its bound."""
        if self.mode is LifetimeMode.STRICT:
            return "svid_expired"
        return "max_age" if at_hard_end else "own_svid_expired"
