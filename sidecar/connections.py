"""Live connections: the global cap, what ends them (revocation, trust, lifetime), drains.

Every proxied connection runs inside a cancel scope registered here with its peer's
SPIFFE ID and serial, and, once its handshake is done, inside a second scope that
`bind` returns: its deadline is the connection's bound (`sidecar.lifetime`). When the
credential store publishes a change, every connection from or to a revoked ID or serial,
and every connection whose peer no longer chains to the new trust bundle, is cancelled at
once (closed, not drained); in ``until_revoked`` mode the bound follows our own current
SVID (a successor extends it, none ends it at the old one's notAfter). Why a connection
ended is kept for its access record (`ended_by`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import final

import trio
from cryptography import x509

from mesh_ca.identity import BundleSet, SpiffeId, SvidError, verify_svid
from sidecar.identity.credentials import CredentialStore
from sidecar.lifetime import LifetimeMode, LifetimePolicy
from sidecar.tls import MeshConnection

__all__ = ["ConnectionTracker", "Slot"]


@final
@dataclass(slots=True)
class Slot:
    """One admitted connection; `peer` is set once the handshake has named it."""

    scope: trio.CancelScope
    direction: str
    peer: SpiffeId | None = None
    serial: int | None = None
    reason: str | None = None  # why this tracker cancelled `scope`
    bound: trio.CancelScope | None = None  # the lifetime scope of `bind`
    hard_end: datetime | None = None
    leaf: x509.Certificate | None = None
    bundles: BundleSet | None = None  # the trust `leaf` was last verified against


def _wall_now() -> datetime:
    return datetime.now(UTC)


def _still_trusted(leaf: x509.Certificate, bundles: BundleSet, now: datetime) -> bool:
    """Does `leaf` still chain to `bundles`? Checked at a time inside its validity: its
    expiry is the lifetime's business, not trust's."""
    at = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    try:
        verify_svid(leaf, (), bundles, at)
    except SvidError:
        return False
    return True


@final
class ConnectionTracker:
    def __init__(
        self,
        max_connections: int,
        store: CredentialStore,
        *,
        now: Callable[[], datetime] = _wall_now,
        lifetime: LifetimePolicy | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.lifetime = lifetime or LifetimePolicy()
        self._now = now
        self._store = store
        self._slots: dict[int, Slot] = {}
        self._ids = itertools.count()
        self._idle = trio.Event()
        self._idle.set()
        self.refused_over_capacity = 0
        self.closed_by_revocation = 0
        self.closed_as_untrusted = 0
        store.subscribe(self._on_store_change)

    @property
    def active(self) -> int:
        return len(self._slots)

    def admit(self, scope: trio.CancelScope, direction: str) -> int | None:
        """A handle for a new connection, or None when the cap is reached (refuse it)."""
        if len(self._slots) >= self.max_connections:
            self.refused_over_capacity += 1
            return None
        handle = next(self._ids)
        self._slots[handle] = Slot(scope, direction)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        return handle

    def identify(self, handle: int, peer: SpiffeId, serial: int) -> None:
        """Record the verified peer; cancels at once if it is already revoked."""
        slot = self._slots[handle]
        slot.peer, slot.serial = peer, serial
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
        self._slots.pop(handle, None)
        if not self._slots:
            self._idle.set()

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
                    ok = trusted[id(leaf)] = _still_trusted(leaf, current.bundles, now)
                if not ok:
                    self.closed_as_untrusted += 1
                    slot.reason = "untrusted"
                    slot.scope.cancel()
                    continue
                slot.bundles = current.bundles
            if slot.bound is not None and self.lifetime.mode is LifetimeMode.UNTIL_REVOKED:
                slot.bound.deadline = self._deadline(slot, now)
