"""Live connections: the caps, what ends them (revocation, trust, lifetime), drains.

Every proxied connection runs inside a cancel scope registered here with its peer's
SPIFFE ID and serial, and, once its handshake is done, inside a second scope that
`bind` returns: its deadline is the connection's bound (`sidecar.transport.lifetime`). When the
credential store publishes a change, every connection from or to a revoked ID or serial,
and every connection whose peer no longer chains to the new trust bundle, is cancelled at
once (closed, not drained); in ``until_revoked`` mode the bound follows our own current
SVID (a successor extends it, none ends it at the old one's notAfter). Why a connection
ended is kept for its access record (`ended_by`).

Admission of a connection whose peer must still complete a mesh handshake (inbound) is
budgeted so that unauthenticated traffic cannot starve authenticated peers:
- `max_connections` counts every open connection, as before;
- `max_connections_per_source` counts one source's (an IPv4 address, or an IPv6 /64, as
  the CA counts them: `mesh_ca.server.ratelimit.source_key`) open connections;
- connections still in their handshake ("pending") have a smaller budget of their own,
  `max_handshaking_connections` in all and `max_handshaking_per_source` per source. A
  source at its pending cap is refused; when the whole pending budget is full, the
  oldest pending connection is closed to make room (a real handshake takes milliseconds,
  so the oldest is almost always a socket that never sent its ClientHello).
Authenticated connections never count against the pending budget, so sockets that send
nothing can hold at most that budget, never the slots of verified peers.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import final

import trio
from cryptography import x509

from meshgate.identity import BundleSet, SpiffeId
from sidecar.identity.credentials import CredentialStore
from sidecar.transport.lifetime import LifetimeMode, LifetimePolicy
from sidecar.transport.mesh_tls import MeshConnection
from sidecar.transport.peer_trust import still_trusted

__all__ = ["AdmissionLimits", "ConnectionTracker", "Refused", "Slot"]


@final
@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Per-source and pending-handshake caps (`[limits]` in the config); None: no cap."""

    max_per_source: int | None = None
    max_handshaking: int | None = None
    max_handshaking_per_source: int | None = None


@final
@dataclass(frozen=True, slots=True)
class Refused:
    """Why a connection was not admitted (the metric and log reason)."""

    reason: str


@final
@dataclass(slots=True)
class Slot:
    """One admitted connection; `peer` is set once the handshake has named it."""

    scope: trio.CancelScope
    direction: str
    peer: SpiffeId | None = None
    serial: int | None = None
    source: str | None = None  # the source key, for per-source counts (inbound only)
    pending: bool = False  # admitted, handshake not finished yet
    evicted: bool = False  # closed to make room in the pending budget
    reason: str | None = None  # why this tracker cancelled `scope`
    bound: trio.CancelScope | None = None  # the lifetime scope of `bind`
    hard_end: datetime | None = None
    leaf: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()  # what the peer sent with `leaf`
    bundles: BundleSet | None = None  # the trust `leaf` was last verified against


def _wall_now() -> datetime:
    return datetime.now(UTC)


@final
class ConnectionTracker:
    def __init__(
        self,
        max_connections: int,
        store: CredentialStore,
        limits: AdmissionLimits | None = None,
        *,
        now: Callable[[], datetime] = _wall_now,
        lifetime: LifetimePolicy | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.limits = limits or AdmissionLimits()
        self.lifetime = lifetime or LifetimePolicy()
        self._now = now
        self._store = store
        self._slots: dict[int, Slot] = {}
        self._ids = itertools.count()
        self._idle = trio.Event()
        self._idle.set()
        self._per_source: Counter[str] = Counter()
        self._pending: dict[int, Slot] = {}  # insertion order: oldest first
        self._pending_per_source: Counter[str] = Counter()
        self.refused_over_capacity = 0
        self.closed_by_revocation = 0
        self.evicted_pending = 0
        self.closed_as_untrusted = 0
        store.subscribe(self._on_store_change)

    @property
    def active(self) -> int:
        return len(self._slots)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(
        self, scope: trio.CancelScope, direction: str, source: str | None = None
    ) -> int | Refused:
        """A handle for a new connection, or `Refused` (close it at once).

        With a `source` key the connection is inbound and pending until `identify`: the
        per-source and pending caps apply (see the module docstring).
        """
        if len(self._slots) >= self.max_connections:
            self.refused_over_capacity += 1
            return Refused("max_connections")
        limits = self.limits
        if source is not None:
            if limits.max_per_source is not None and (
                self._per_source[source] >= limits.max_per_source
            ):
                return Refused("max_connections_per_source")
            if limits.max_handshaking_per_source is not None and (
                self._pending_per_source[source] >= limits.max_handshaking_per_source
            ):
                return Refused("max_handshaking_per_source")
            if limits.max_handshaking is not None and len(self._pending) >= limits.max_handshaking:
                self._evict_oldest_pending()
        handle = next(self._ids)
        slot = Slot(scope, direction, source=source, pending=source is not None)
        self._slots[handle] = slot
        if source is not None:
            self._per_source[source] += 1
            self._pending[handle] = slot
            self._pending_per_source[source] += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        return handle

    def identify(self, handle: int, peer: SpiffeId, serial: int) -> None:
        """Record the verified peer (its handshake is done); cancels at once if it is
        already revoked."""
        slot = self._slots[handle]
        slot.peer, slot.serial = peer, serial
        self._end_pending(handle, slot)
        if self._store.revocations.refuses(peer, serial):
            self.closed_by_revocation += 1
            slot.reason = "revoked"
            slot.scope.cancel()

    def bind(self, handle: int, conn: MeshConnection) -> trio.CancelScope:
        """Identify the verified peer of `conn` and return the scope that bounds its life:
        run the connection's traffic inside it (``with tracker.bind(...)``)."""
        self.identify(handle, conn.peer_id, conn.peer_serial)
        slot = self._slots[handle]
        now = self._now()
        slot.hard_end = self.lifetime.hard_end(now, conn.peer.not_after, conn.credentials.not_after)
        slot.leaf, slot.bundles = conn.peer.leaf, conn.credentials.bundles
        slot.intermediates = conn.peer.intermediates
        slot.bound = trio.CancelScope(deadline=self._deadline(slot, now))
        return slot.bound

    def hard_end(self, handle: int) -> datetime | None:
        slot = self._slots.get(handle)
        return slot.hard_end if slot is not None else None

    def ended_by(self, handle: int) -> str | None:
        """Why the connection was cut: revoked, untrusted, drain_timeout, or its lifetime
        (svid_expired, max_age, own_svid_expired); None when nothing cut it."""
        slot = self._slots.get(handle)
        if slot is None:
            return None
        if slot.reason is not None:
            return slot.reason
        bound = slot.bound
        if bound is not None and trio.current_time() >= bound.deadline:
            at_end = slot.hard_end is not None and self._now() >= slot.hard_end
            return self.lifetime.end_reason(at_end)
        return None

    def _deadline(self, slot: Slot, now: datetime) -> float:
        assert slot.hard_end is not None
        current = self._store.usable(now)
        until = self.lifetime.keeps_serving(
            slot.hard_end, current.not_after if current is not None else None
        )
        return trio.current_time() + max(0.0, (until - now).total_seconds())

    def release(self, handle: int) -> None:
        slot = self._slots.pop(handle, None)
        if slot is not None and slot.source is not None:
            self._end_pending(handle, slot)
            self._per_source[slot.source] -= 1
            if self._per_source[slot.source] <= 0:
                del self._per_source[slot.source]
        if not self._slots:
            self._idle.set()

    def _end_pending(self, handle: int, slot: Slot) -> None:
        if not slot.pending or slot.source is None:
            return
        slot.pending = False
        self._pending.pop(handle, None)
        self._pending_per_source[slot.source] -= 1
        if self._pending_per_source[slot.source] <= 0:
            del self._pending_per_source[slot.source]

    def _evict_oldest_pending(self) -> None:
        handle, slot = next(iter(self._pending.items()))
        self._end_pending(handle, slot)  # it no longer counts, even before it unwinds
        slot.evicted = True
        slot.reason = "handshake_evicted"
        self.evicted_pending += 1
        slot.scope.cancel()

    def slot(self, handle: int) -> Slot | None:
        return self._slots.get(handle)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def cancel_all(self, reason: str = "drain_timeout") -> None:
        for slot in self._slots.values():
            if not slot.scope.cancel_called:
                slot.reason = slot.reason or reason
            slot.scope.cancel()

    def _on_store_change(self) -> None:
        revocations = self._store.revocations
        current = self._store.current
        now: datetime | None = None
        trusted: dict[int, bool] = {}  # per leaf object: one path validation per change
        for slot in self._slots.values():
            if slot.peer is None or slot.serial is None or slot.scope.cancel_called:
                continue
            if revocations.refuses(slot.peer, slot.serial):
                self.closed_by_revocation += 1
                slot.reason = "revoked"
                slot.scope.cancel()
                continue
            now = now or self._now()
            leaf = slot.leaf
            if leaf is not None and current is not None and current.bundles != slot.bundles:
                ok = trusted.get(id(leaf))
                if ok is None:
                    ok = trusted[id(leaf)] = still_trusted(
                        leaf, slot.intermediates, current.bundles, now
                    )
                if not ok:
                    self.closed_as_untrusted += 1
                    slot.reason = "untrusted"
                    slot.scope.cancel()
                    continue
                slot.bundles = current.bundles
            if slot.bound is not None and self.lifetime.mode is LifetimeMode.UNTIL_REVOKED:
                slot.bound.deadline = self._deadline(slot, now)
