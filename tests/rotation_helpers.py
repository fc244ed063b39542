"""CA hierarchies for the rotation tests: roots and intermediates made at a given time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mesh_ca.issuance import make_intermediate, make_root
from mesh_ca.rotation import IntermediateSlot, RootSlot, SlotState, TrustState
from meshgate.identity import TrustDomain
from meshgate.keys import PrivateKey, generate_key, private_key_pem

TD = TrustDomain("example.org")
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def new_root(now: datetime = T0) -> tuple[RootSlot, PrivateKey]:
    key = generate_key()
    return RootSlot(make_root(TD, key, now), SlotState.ACTIVE, now), key


def new_intermediate(
    root: RootSlot,
    root_key: PrivateKey,
    now: datetime,
    ttl: timedelta = timedelta(days=30),
    state: SlotState = SlotState.PREPARED,
) -> IntermediateSlot:
    key = generate_key()
    cert = make_intermediate(TD, key, root.cert, root_key, now, ttl)
    return IntermediateSlot(cert, state, now, private_key_pem(key))


def first_state(
    now: datetime = T0, ttl: timedelta = timedelta(days=30)
) -> tuple[TrustState, PrivateKey]:
    root, key = new_root(now)
    active = new_intermediate(root, key, now, ttl, SlotState.ACTIVE)
    return TrustState(100, (root,), (active,)), key
