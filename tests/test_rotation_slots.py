"""The automatic intermediate rotation core: which step is due when (time passed in)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mesh_ca.rotation import RotationError, RotationPolicy, SlotState, StepKind, next_step
from mesh_ca.rotation.roots import root_prepared
from mesh_ca.rotation.slots import activated, prepared, retired, schedule
from tests.rotation_helpers import T0, first_state, new_intermediate, new_root

DAY = timedelta(days=1)
POLICY = RotationPolicy(
    intermediate_ttl=30 * DAY,
    prepare_lead=15 * DAY,
    activate_lead=5 * DAY,
    replica_lag=timedelta(seconds=60),
)
# The intermediate's notBefore is backdated 10 s: its scheduled end is T0 + 30 d - 10 s.
END = T0 + 30 * DAY - timedelta(seconds=10)


def no_leaves(_: datetime) -> datetime | None:
    return None


def test_nothing_is_due_before_the_prepare_lead() -> None:
    state, _ = first_state()
    assert (
        next_step(state, END - POLICY.prepare_lead - timedelta(seconds=1), POLICY, no_leaves)
        is None
    )


def test_the_next_intermediate_is_prepared_at_the_prepare_lead() -> None:
    state, _ = first_state()
    step = next_step(state, END - POLICY.prepare_lead, POLICY, no_leaves)
    assert step is not None
    assert step.kind is StepKind.PREPARE


def test_a_prepared_intermediate_is_activated_at_the_activate_lead_and_not_before() -> None:
    state, key = first_state()
    at = END - POLICY.prepare_lead
    state = prepared(state, new_intermediate(state.active_root, key, at))
    assert (
        next_step(state, END - POLICY.activate_lead - timedelta(seconds=1), POLICY, no_leaves)
        is None
    )
    step = next_step(state, END - POLICY.activate_lead, POLICY, no_leaves)
    assert step is not None
    assert step.kind is StepKind.ACTIVATE


def test_a_late_prepare_still_gets_the_whole_publish_lead_before_activation() -> None:
    state, key = first_state(ttl=365 * DAY)  # scheduled end by ttl, still valid after it
    late = END - timedelta(days=2)  # the CA was down at the planned time
    state = prepared(state, new_intermediate(state.active_root, key, late))
    assert (
        next_step(state, late + POLICY.publish_lead - timedelta(seconds=1), POLICY, no_leaves)
        is None
    )
    step = next_step(state, late + POLICY.publish_lead, POLICY, no_leaves)
    assert step is not None
    assert step.kind is StepKind.ACTIVATE


def test_an_expired_active_intermediate_is_replaced_at_once() -> None:
    state, key = first_state(ttl=2 * DAY)
    expired = state.active.cert.not_valid_after_utc
    state = prepared(state, new_intermediate(state.active_root, key, expired - timedelta(hours=1)))
    step = next_step(state, expired, POLICY, no_leaves)
    assert step is not None
    assert step.kind is StepKind.ACTIVATE


def test_a_shorter_configured_ttl_shortens_the_life_of_the_intermediate_in_use() -> None:
    state, _ = first_state(ttl=365 * DAY)
    plan = schedule(state, POLICY, no_leaves)
    assert plan.scheduled_end == END


def test_an_old_intermediate_is_retired_after_its_last_leaf_expired() -> None:
    state, key = first_state()
    state = prepared(state, new_intermediate(state.active_root, key, END - POLICY.prepare_lead))
    switch = END - POLICY.activate_lead
    state = activated(state, switch)
    old = state.olds()[0]
    last_leaf = switch + timedelta(hours=1)
    asked: list[datetime] = []

    def leaves_until(issued_until: datetime) -> datetime | None:
        asked.append(issued_until)
        return last_leaf

    assert next_step(state, last_leaf - timedelta(seconds=1), POLICY, leaves_until) is None
    step = next_step(state, last_leaf, POLICY, leaves_until)
    assert step is not None
    assert step.kind is StepKind.RETIRE
    assert step.slot == old
    # Leaves a lagging replica signed after the switch count too.
    assert asked[0] == switch + POLICY.replica_lag
    after = retired(state, old.fingerprint)
    assert [s.state for s in after.intermediates] == [SlotState.ACTIVE]
    assert after.sequence == state.sequence + 1


def test_an_old_intermediate_without_leaves_is_retired_after_the_replica_lag() -> None:
    state, key = first_state()
    state = prepared(state, new_intermediate(state.active_root, key, T0))
    state = activated(state, T0 + DAY)
    assert (
        next_step(state, T0 + DAY + POLICY.replica_lag - timedelta(seconds=1), POLICY, no_leaves)
        is None
    )
    step = next_step(state, T0 + DAY + POLICY.replica_lag, POLICY, no_leaves)
    assert step is not None
    assert step.kind is StepKind.RETIRE


def test_a_root_rotation_in_progress_pauses_every_automatic_step() -> None:
    state, _ = first_state()
    root, root_key = new_root(T0)
    state = root_prepared(state, root, new_intermediate(root, root_key, T0), T0)
    assert next_step(state, END, POLICY, no_leaves) is None


def test_every_step_raises_the_sequence_by_one() -> None:
    state, key = first_state()
    one = prepared(state, new_intermediate(state.active_root, key, T0))
    two = activated(one, T0 + DAY)
    assert (one.sequence, two.sequence) == (state.sequence + 1, state.sequence + 2)
    assert two.active.cert == one.intermediate(SlotState.PREPARED).cert  # type: ignore[union-attr]


def test_leads_out_of_order_are_refused() -> None:
    with pytest.raises(RotationError, match="activate_lead < prepare_lead"):
        RotationPolicy(30 * DAY, 5 * DAY, 15 * DAY, timedelta(seconds=1))


def test_a_second_prepared_intermediate_is_refused() -> None:
    state, key = first_state()
    state = prepared(state, new_intermediate(state.active_root, key, T0))
    with pytest.raises(RotationError, match="already prepared"):
        prepared(state, new_intermediate(state.active_root, key, T0))
