"""Root rotation steps and the trust state's invariants and JSON (pure)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mesh_ca.rotation import RotationError, SlotState, TrustState
from mesh_ca.rotation.roots import (
    laggards,
    root_activated,
    root_prepared,
    root_retired,
    root_undone,
)
from meshgate.identity import SpiffeId
from tests.rotation_helpers import T0, first_state, new_intermediate, new_root

HOUR = timedelta(hours=1)
OTHER_ROOT_PEM = new_root(T0)[0].cert.public_bytes(Encoding.PEM).decode()


def prepared_state() -> tuple[TrustState, TrustState]:
    state, _ = first_state()
    root, key = new_root(T0)
    return state, root_prepared(state, root, new_intermediate(root, key, T0), T0 + HOUR)


def test_prepare_publishes_the_new_root_and_its_intermediate_next_to_the_current_ones() -> None:
    before, after = prepared_state()
    assert [r.state for r in after.roots] == [SlotState.ACTIVE, SlotState.PREPARED]
    assert [i.state for i in after.intermediates] == [SlotState.ACTIVE, SlotState.PREPARED]
    assert after.active == before.active
    assert after.sequence == before.sequence + 1
    assert after.root_rotation_in_progress


def test_prepare_drops_an_unused_prepared_intermediate_of_the_current_root() -> None:
    state, key = first_state()
    state = replace(
        state,
        intermediates=(*state.intermediates, new_intermediate(state.active_root, key, T0)),
    )
    root, root_key = new_root(T0)
    after = root_prepared(state, root, new_intermediate(root, root_key, T0), T0)
    prepared = after.intermediate(SlotState.PREPARED)
    assert prepared is not None
    assert after.issuer_of(prepared).cert == root.cert


def test_activate_signs_with_the_new_root_and_keeps_the_old_published() -> None:
    before, prepared = prepared_state()
    after = root_activated(prepared, T0 + 2 * HOUR)
    assert after.active_root.cert == prepared.roots[1].cert
    assert after.issuer_of(after.active).cert == prepared.roots[1].cert
    assert [r.state for r in after.roots] == [SlotState.OLD, SlotState.ACTIVE]
    assert {i.state for i in after.intermediates} == {SlotState.OLD, SlotState.ACTIVE}
    assert after.intermediate(SlotState.OLD) is not None
    assert after.intermediate(SlotState.OLD).cert == before.active.cert  # type: ignore[union-attr]


def test_retire_removes_the_old_root_and_every_intermediate_it_signed() -> None:
    _, prepared = prepared_state()
    after = root_retired(root_activated(prepared, T0 + 2 * HOUR))
    assert [r.state for r in after.roots] == [SlotState.ACTIVE]
    assert [i.state for i in after.intermediates] == [SlotState.ACTIVE]
    assert not after.root_rotation_in_progress


def test_retire_needs_an_activated_new_root() -> None:
    _, prepared = prepared_state()
    with pytest.raises(RotationError, match="no old root"):
        root_retired(prepared)


def test_undo_reverts_activate_then_prepare() -> None:
    before, prepared = prepared_state()
    active = root_activated(prepared, T0 + 2 * HOUR)
    back, undone = root_undone(active, T0 + 3 * HOUR)
    assert undone == "activate"
    assert back.active.cert == before.active.cert
    assert back.active_root.cert == before.active_root.cert
    assert back.root(SlotState.PREPARED) is not None
    assert back.root(SlotState.PREPARED).cert == prepared.roots[1].cert  # type: ignore[union-attr]
    origin, undone = root_undone(back, T0 + 4 * HOUR)
    assert undone == "prepare"
    assert [r.cert for r in origin.roots] == [r.cert for r in before.roots]
    assert [i.cert for i in origin.intermediates] == [i.cert for i in before.intermediates]
    assert origin.sequence == before.sequence + 4  # every step, undo too, raises it
    with pytest.raises(RotationError, match="nothing to undo"):
        root_undone(origin, T0 + 5 * HOUR)


def test_a_second_prepare_is_refused_while_one_is_in_progress() -> None:
    _, prepared = prepared_state()
    root, key = new_root(T0)
    with pytest.raises(RotationError, match="already in progress"):
        root_prepared(prepared, root, new_intermediate(root, key, T0), T0)


def test_laggards_are_the_active_ids_that_reported_an_older_sequence_or_none() -> None:
    a, b, c = (SpiffeId.parse(f"spiffe://example.org/svc/{n}") for n in "abc")
    assert laggards({a, b, c}, {a: 7, b: 6}, 7) == [b, c]
    assert laggards({a}, {a: 8}, 7) == []


def test_the_state_survives_json_with_its_keys() -> None:
    _, prepared = prepared_state()
    again = TrustState.from_json(prepared.to_json())
    assert again == prepared


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["intermediates"].pop(0), "0 active intermediates"),
        (lambda d: d["roots"].pop(0), "0 active roots"),
        (lambda d: d["roots"][0].update(cert=OTHER_ROOT_PEM), "signed by no root"),
        (lambda d: d.update(sequence=-1), "non-negative"),
        (lambda d: d["roots"][0].update(since="2030-01-01T00:00:00"), "naive"),
        (lambda d: d["roots"][0].update(state="retiring"), "unreadable"),
        (lambda d: d["intermediates"].append(d["intermediates"][0]), "active intermediates"),
    ],
)
def test_a_broken_stored_state_is_refused(mutate: object, message: str) -> None:
    state, _ = first_state()
    document = json.loads(state.to_json())
    mutate(document)  # type: ignore[operator]
    with pytest.raises(RotationError, match=message):
        TrustState.from_json(json.dumps(document))
