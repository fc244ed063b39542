"""Live connections: the caps, close-on-revocation, and waiting for a drain.

Every proxied connection runs inside a cancel scope registered here with its peer's
SPIFFE ID and serial. When the credential store publishes new revocations, every
connection from or to a revoked ID or serial is cancelled at once (closed, not drained).

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
from dataclasses import dataclass
from typing import final

import trio

from mesh_ca.identity import SpiffeId
from sidecar.identity.credentials import CredentialStore

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


@final
class ConnectionTracker:
    def __init__(
        self,
        max_connections: int,
        store: CredentialStore,
        limits: AdmissionLimits | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.limits = limits or AdmissionLimits()
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
            slot.scope.cancel()

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
        self.evicted_pending += 1
        slot.scope.cancel()

    def slot(self, handle: int) -> Slot | None:
        return self._slots.get(handle)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def cancel_all(self) -> None:
        for slot in self._slots.values():
            slot.scope.cancel()

    def _on_store_change(self) -> None:
        revocations = self._store.revocations
        for slot in self._slots.values():
            if (
                slot.peer is not None
                and slot.serial is not None
                and revocations.refuses(slot.peer, slot.serial)
                and not slot.scope.cancel_called
            ):
                self.closed_by_revocation += 1
                slot.scope.cancel()
