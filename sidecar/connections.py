"""Live connections: the global cap, close-on-revocation, and waiting for a drain.

Every proxied connection runs inside a cancel scope registered here with its peer's
SPIFFE ID and serial. When the credential store publishes new revocations, every
connection from or to a revoked ID or serial is cancelled at once (closed, not drained).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import final

import trio

from mesh_ca.identity import SpiffeId
from sidecar.identity.credentials import CredentialStore

__all__ = ["ConnectionTracker", "Slot"]


@final
@dataclass(slots=True)
class Slot:
    """One admitted connection; `peer` is set once the handshake has named it."""

    scope: trio.CancelScope
    direction: str
    peer: SpiffeId | None = None
    serial: int | None = None


@final
class ConnectionTracker:
    def __init__(self, max_connections: int, store: CredentialStore) -> None:
        self.max_connections = max_connections
        self._store = store
        self._slots: dict[int, Slot] = {}
        self._ids = itertools.count()
        self._idle = trio.Event()
        self._idle.set()
        self.refused_over_capacity = 0
        self.closed_by_revocation = 0
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
            slot.scope.cancel()

    def release(self, handle: int) -> None:
        self._slots.pop(handle, None)
        if not self._slots:
            self._idle.set()

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
