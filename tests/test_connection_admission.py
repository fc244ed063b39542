"""ConnectionTracker admission: per-source caps and the pending-handshake budget."""

from __future__ import annotations

import trio

from meshgate.identity import SpiffeId
from sidecar.connections import AdmissionLimits, ConnectionTracker, Refused
from sidecar.identity.credentials import CredentialStore

PEER = SpiffeId.parse("spiffe://example.org/ns/a/svc/b")


def tracker(**limits: int) -> ConnectionTracker:
    return ConnectionTracker(limits.pop("total", 100), CredentialStore(), AdmissionLimits(**limits))


async def test_a_source_at_its_pending_cap_is_refused_and_others_are_not() -> None:
    t = tracker(max_handshaking_per_source=2)
    assert isinstance(t.admit(trio.CancelScope(), "inbound", "10.0.0.1"), int)
    assert isinstance(t.admit(trio.CancelScope(), "inbound", "10.0.0.1"), int)
    assert t.admit(trio.CancelScope(), "inbound", "10.0.0.1") == Refused(
        "max_handshaking_per_source"
    )
    assert isinstance(t.admit(trio.CancelScope(), "inbound", "10.0.0.2"), int)
    assert t.pending == 3


async def test_a_verified_connection_leaves_the_pending_budget_but_counts_per_source() -> None:
    t = tracker(max_handshaking_per_source=1, max_per_source=2)
    first = t.admit(trio.CancelScope(), "inbound", "10.0.0.1")
    assert isinstance(first, int)
    t.identify(first, PEER, 1)
    assert t.pending == 0
    second = t.admit(trio.CancelScope(), "inbound", "10.0.0.1")
    assert isinstance(second, int)
    t.identify(second, PEER, 2)
    assert t.admit(trio.CancelScope(), "inbound", "10.0.0.1") == Refused(
        "max_connections_per_source"
    )
    t.release(first)
    assert isinstance(t.admit(trio.CancelScope(), "inbound", "10.0.0.1"), int)


async def test_a_full_pending_budget_evicts_the_oldest_pending_connection() -> None:
    t = tracker(max_handshaking=2)
    scopes = [trio.CancelScope() for _ in range(3)]
    handles = [t.admit(scope, "inbound", f"10.0.0.{n}") for n, scope in enumerate(scopes)]
    assert all(isinstance(h, int) for h in handles)
    assert [s.cancel_called for s in scopes] == [True, False, False]
    first = handles[0]
    assert isinstance(first, int)
    slot = t.slot(first)
    assert slot is not None
    assert slot.evicted
    assert t.pending == 2
    assert t.evicted_pending == 1
    t.release(first)  # the evicted one unwinds: no double count
    assert t.pending == 2
    assert t.active == 2


async def test_outbound_connections_have_no_source_and_are_never_pending() -> None:
    t = tracker(max_handshaking=1, max_handshaking_per_source=1, total=3)
    for _ in range(3):
        assert isinstance(t.admit(trio.CancelScope(), "outbound"), int)
    assert t.pending == 0
    assert t.admit(trio.CancelScope(), "outbound") == Refused("max_connections")


def test_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    from sidecar.admission import source_of

    assert source_of("10.1.2.3:443") == "10.1.2.3"
    assert source_of("[2001:db8:1:2:aaaa::1]:443") == source_of("[2001:db8:1:2:bbbb::9]:80")
    assert source_of("[2001:db8:1:2::1]:443") == "2001:db8:1:2::/64"
    assert source_of("[2001:db8:1:3::1]:443") != source_of("[2001:db8:1:2::1]:443")
    assert source_of("[::ffff:10.1.2.3]:443") == "10.1.2.3"
    assert source_of("in-memory") == "in-memory"
