"""Operator-driven root rotation: prepare, activate, retire, and undo. Pure.

- prepare: a new root and an intermediate under it are published next to the current
  ones (a prepared intermediate of the current root, never used, is dropped).
- activate: the new root's intermediate signs from now on; the current root and its
  intermediates become old (still published). The caller checks first that every active
  sidecar holds trust material at least as new as the prepare step (`laggards`).
- retire: the old root and its intermediates are no longer published. The caller checks
  first that no unexpired leaf chains to the old root. Cannot be undone.
- undo: reverts the last of prepare or activate (retirement cannot be undone).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import replace
from datetime import datetime

from mesh_ca.rotation.state import (
    IntermediateSlot,
    RootSlot,
    RotationError,
    SlotState,
    TrustState,
    signed_by,
)
from meshgate.identity import SpiffeId

__all__ = ["laggards", "root_activated", "root_prepared", "root_retired", "root_undone"]


def root_prepared(
    state: TrustState, root: RootSlot, intermediate: IntermediateSlot, now: datetime
) -> TrustState:
    if state.root_rotation_in_progress:
        raise RotationError(
            "a root rotation is already in progress (finish it with `root retire` or "
            "revert it with `root undo`)"
        )
    if not signed_by(intermediate.cert, root.cert):
        raise RotationError("the new intermediate is not signed by the new root")
    kept = [i for i in state.intermediates if i.state is not SlotState.PREPARED]
    return state.changed(
        roots=(*state.roots, replace(root, state=SlotState.PREPARED, since=now)),
        intermediates=(*kept, replace(intermediate, state=SlotState.PREPARED, since=now)),
    )


def root_activated(state: TrustState, now: datetime) -> TrustState:
    new_root = state.root(SlotState.PREPARED)
    if new_root is None:
        raise RotationError("no prepared root to activate (run `root prepare` first)")
    roots = [
        replace(r, state=SlotState.OLD, since=now)
        if r.state is SlotState.ACTIVE
        else replace(r, state=SlotState.ACTIVE, since=now)
        if r.state is SlotState.PREPARED
        else r
        for r in state.roots
    ]
    intermediates = [
        replace(i, state=SlotState.OLD, since=now)
        if i.state is SlotState.ACTIVE
        else replace(i, state=SlotState.ACTIVE, since=now)
        if i.state is SlotState.PREPARED
        else i
        for i in state.intermediates
    ]
    return state.changed(roots=roots, intermediates=intermediates)


def root_retired(state: TrustState) -> TrustState:
    old = state.root(SlotState.OLD)
    if old is None:
        raise RotationError("no old root to retire (activate a new root first)")
    if state.root(SlotState.PREPARED) is not None:
        raise RotationError("a root is prepared but not active; activate or undo it first")
    roots = [r for r in state.roots if r.state is not SlotState.OLD]
    intermediates = [i for i in state.intermediates if not signed_by(i.cert, old.cert)]
    return state.changed(roots=roots, intermediates=intermediates)


def root_undone(state: TrustState, now: datetime) -> tuple[TrustState, str]:
    """The state before the last root step, and which step was undone."""
    if state.root(SlotState.PREPARED) is not None:
        new_root = state.root(SlotState.PREPARED)
        assert new_root is not None
        roots = [r for r in state.roots if r.state is not SlotState.PREPARED]
        intermediates = [i for i in state.intermediates if not signed_by(i.cert, new_root.cert)]
        return state.changed(roots=roots, intermediates=intermediates), "prepare"
    old_root = state.root(SlotState.OLD)
    if old_root is None:
        raise RotationError("no root rotation in progress: nothing to undo")
    # The intermediate of the old root that signed last goes back to signing.
    candidates = [
        i
        for i in state.intermediates
        if i.state is SlotState.OLD
        and signed_by(i.cert, old_root.cert)
        and i.cert.not_valid_after_utc > now
    ]
    if not candidates:
        raise RotationError("the old root has no unexpired intermediate left to go back to")
    back = max(candidates, key=lambda i: i.since)
    new_root = state.active_root
    roots = [
        replace(r, state=SlotState.ACTIVE, since=now)
        if r.state is SlotState.OLD
        else replace(r, state=SlotState.PREPARED, since=now)
        for r in state.roots
    ]
    intermediates = []
    for slot in state.intermediates:
        if slot is back:
            intermediates.append(replace(slot, state=SlotState.ACTIVE, since=now))
        elif slot.state is SlotState.ACTIVE:
            intermediates.append(replace(slot, state=SlotState.PREPARED, since=now))
        elif not signed_by(slot.cert, new_root.cert):
            intermediates.append(slot)  # old ones of the new root have nothing to go back to
    return state.changed(roots=roots, intermediates=intermediates), "activate"


def laggards(
    active_ids: Set[SpiffeId], held: Mapping[SpiffeId, int], needed: int
) -> list[SpiffeId]:
    """The active workload IDs whose last report holds trust material older than `needed`."""
    return sorted((i for i in active_ids if held.get(i, -1) < needed), key=str)
