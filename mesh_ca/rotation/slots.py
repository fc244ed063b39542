"""Automatic intermediate rotation: which step is due, and the state after it. Pure.

Like SPIRE's CA manager: the CA prepares the next intermediate ``prepare_lead`` before the
active one's scheduled end and publishes it at once (so sidecars trust its leaves before
any exist), activates it ``activate_lead`` before that end (and never less than
``prepare_lead - activate_lead`` after it was published, so a CA that was down at the
planned time still gives sidecars the full lead), and retires an old intermediate once the
last leaf it signed has expired. The scheduled end of an intermediate is the earlier of its
notAfter and notBefore + ``intermediate_ttl``, so shortening the lifetime in ca.toml also
shortens the life of the intermediate in use.

`leaves_until(t)` is the latest notAfter of the leaves issued up to `t` (from the ledger):
an old intermediate signed nothing after it was deactivated, except on a replica that had
not yet seen the change, which `replica_lag` covers.

A root rotation in progress (a prepared or old root) pauses all automatic steps: the
operator drives it (`mesh_ca.rotation.roots`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import final

from cryptography import x509

from mesh_ca.rotation.state import IntermediateSlot, RotationError, SlotState, TrustState

__all__ = [
    "LeavesUntil",
    "RotationPolicy",
    "Schedule",
    "Step",
    "StepKind",
    "activated",
    "next_step",
    "prepared",
    "retired",
    "schedule",
]

LeavesUntil = Callable[[datetime], datetime | None]


@final
@dataclass(frozen=True)
class RotationPolicy:
    intermediate_ttl: timedelta
    prepare_lead: timedelta
    activate_lead: timedelta
    replica_lag: timedelta

    def __post_init__(self) -> None:
        if not timedelta(0) < self.activate_lead < self.prepare_lead < self.intermediate_ttl:
            raise RotationError(
                "need 0 < activate_lead < prepare_lead < intermediate_ttl, got "
                f"{self.activate_lead}, {self.prepare_lead}, {self.intermediate_ttl}"
            )

    @property
    def publish_lead(self) -> timedelta:
        """How long a prepared intermediate is published before it may sign."""
        return self.prepare_lead - self.activate_lead


class StepKind(enum.StrEnum):
    PREPARE = "prepare"
    ACTIVATE = "activate"
    RETIRE = "retire"


@final
@dataclass(frozen=True)
class Step:
    kind: StepKind
    reason: str
    slot: IntermediateSlot | None = None  # the one to retire


@final
@dataclass(frozen=True)
class Schedule:
    """The dates of the current cycle, for `mesh-ca status` and logs."""

    scheduled_end: datetime
    prepare_at: datetime
    activate_at: datetime
    retire_at: dict[str, datetime]  # by fingerprint of each old slot


def scheduled_end(cert: x509.Certificate, policy: RotationPolicy) -> datetime:
    return min(cert.not_valid_after_utc, cert.not_valid_before_utc + policy.intermediate_ttl)


def _retire_at(
    slot: IntermediateSlot, policy: RotationPolicy, leaves_until: LeavesUntil
) -> datetime:
    last = leaves_until(slot.since + policy.replica_lag)
    # Leaves never outlive their signer, so its notAfter bounds the wait whatever the ledger says.
    bound = min(last, slot.cert.not_valid_after_utc) if last is not None else slot.since
    return max(bound, slot.since + policy.replica_lag)


def schedule(state: TrustState, policy: RotationPolicy, leaves_until: LeavesUntil) -> Schedule:
    active = state.active
    end = scheduled_end(active.cert, policy)
    prepared_slot = state.intermediate(SlotState.PREPARED)
    activate_at = end - policy.activate_lead
    if prepared_slot is not None:
        activate_at = max(activate_at, prepared_slot.since + policy.publish_lead)
    return Schedule(
        end,
        end - policy.prepare_lead,
        activate_at,
        {o.fingerprint: _retire_at(o, policy, leaves_until) for o in state.olds()},
    )


def next_step(
    state: TrustState, now: datetime, policy: RotationPolicy, leaves_until: LeavesUntil
) -> Step | None:
    """The one step due at `now`, or None. Retirements first, then prepare or activate."""
    if state.root_rotation_in_progress:
        return None
    plan = schedule(state, policy, leaves_until)
    for old in state.olds():
        if now >= plan.retire_at[old.fingerprint]:
            return Step(StepKind.RETIRE, "its last leaf has expired", old)
    prepared_slot = state.intermediate(SlotState.PREPARED)
    if prepared_slot is None:
        if now >= plan.prepare_at:
            return Step(StepKind.PREPARE, f"the active intermediate ends at {plan.scheduled_end}")
        return None
    if now >= plan.activate_at:
        return Step(StepKind.ACTIVATE, f"published since {prepared_slot.since}")
    if now >= state.active.cert.not_valid_after_utc:
        # Nothing can be signed any more: activating early loses nothing.
        return Step(StepKind.ACTIVATE, "the active intermediate has expired")
    return None


def prepared(state: TrustState, slot: IntermediateSlot) -> TrustState:
    """`state` with `slot` (signed by the active root) published as the prepared one."""
    if state.intermediate(SlotState.PREPARED) is not None:
        raise RotationError("an intermediate is already prepared")
    slot = replace(slot, state=SlotState.PREPARED)
    return state.changed(intermediates=(*state.intermediates, slot))


def activated(state: TrustState, now: datetime) -> TrustState:
    """The prepared intermediate signs from now on; the active one becomes old."""
    if state.intermediate(SlotState.PREPARED) is None:
        raise RotationError("no prepared intermediate to activate")
    moves = {SlotState.ACTIVE: SlotState.OLD, SlotState.PREPARED: SlotState.ACTIVE}
    slots = [
        replace(slot, state=moves[slot.state], since=now) if slot.state in moves else slot
        for slot in state.intermediates
    ]
    return state.changed(intermediates=slots)


def retired(state: TrustState, fingerprint: str) -> TrustState:
    """`state` without the old intermediate `fingerprint` (no longer published)."""
    keep = [s for s in state.intermediates if s.fingerprint != fingerprint]
    gone = [s for s in state.intermediates if s.fingerprint == fingerprint]
    if not gone or gone[0].state is not SlotState.OLD:
        raise RotationError(f"no old intermediate {fingerprint[:16]} to retire")
    return state.changed(intermediates=keep)
