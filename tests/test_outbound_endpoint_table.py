"""The outbound endpoint set (`sidecar.outbound.endpoints`): secure naming per endpoint,
passive-health ejection and pick order. Pure: `now` is passed in."""

from __future__ import annotations

from meshgate.identity import SpiffeId
from sidecar.config import Address
from sidecar.outbound.endpoints import EndpointTable

A, B, C = (Address("127.0.0.1", p) for p in (9001, 9002, 9003))
ORDERS = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")
ORDERS2 = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders-canary")
EVIL = SpiffeId.parse("spiffe://example.org/ns/shop/svc/evil")


def discovered(allowed: frozenset[SpiffeId] = frozenset()) -> EndpointTable:
    return EndpointTable(allowed, eject_after=2, eject_seconds=10.0, discovered=True)


def test_a_discovered_endpoint_must_present_the_id_it_registered_with() -> None:
    table = discovered()
    assert table.replace([(A, ORDERS), (B, ORDERS2)], version=1)
    assert table.expected(A) == {ORDERS}
    assert table.expected(B) == {ORDERS2}
    assert table.expected(C) == frozenset()  # never registered: every peer refused


def test_configured_spiffe_ids_narrow_the_registered_ones_and_refuse_the_rest() -> None:
    table = discovered(frozenset({ORDERS}))
    table.replace([(A, ORDERS), (B, EVIL)], version=3)
    assert table.endpoints == (A,)
    assert table.expected(B) == frozenset()
    view = table.view(0.0)
    assert view["version"] == 3
    assert [r["address"] for r in view["refused"]] == [str(B)]


def test_an_endpoint_that_left_the_set_is_no_longer_picked_and_subscribers_hear_of_it() -> None:
    table = discovered()
    calls: list[int] = []
    table.subscribe(lambda: calls.append(1))
    table.replace([(A, ORDERS), (B, ORDERS)], version=1)
    assert not table.replace([(A, ORDERS), (B, ORDERS)], version=2)  # same set: no change
    table.replace([(B, ORDERS)], version=3)
    assert calls == [1, 1]
    assert table.order(0.0) == [B]


def test_requests_spread_round_robin_over_healthy_endpoints() -> None:
    table = EndpointTable.static([A, B, C], [ORDERS])
    firsts = [table.order(0.0)[0] for _ in range(6)]
    assert firsts == [A, B, C, A, B, C]


def test_consecutive_failures_eject_an_endpoint_for_a_while_and_success_resets() -> None:
    table = EndpointTable.static([A, B], [ORDERS], eject_after=2, eject_seconds=10.0)
    assert not table.failed(A, 0.0, "connect_failed")
    table.succeeded(A)  # the count is of consecutive failures
    assert not table.failed(A, 1.0, "connect_failed")
    assert table.failed(A, 2.0, "connect_failed")
    assert table.ejected(A, 5.0)
    assert all(table.order(5.0)[0] == B for _ in range(4))
    assert table.order(5.0)[-1] == A  # still tried when all else fails
    assert not table.ejected(A, 12.0)
    assert table.view(5.0)["endpoints"][0]["ejected"] is True


def test_avoided_endpoints_go_last() -> None:
    table = EndpointTable.static([A, B, C], [ORDERS])
    for _ in range(3):
        assert table.order(0.0, avoid=frozenset({A}))[-1] == A


def test_health_of_an_endpoint_that_stays_is_kept_across_set_changes() -> None:
    table = discovered()
    table.replace([(A, ORDERS), (B, ORDERS)], version=1)
    table.failed(A, 0.0, "x")
    table.failed(A, 0.0, "x")
    table.replace([(A, ORDERS), (B, ORDERS), (C, ORDERS)], version=2)
    assert table.ejected(A, 1.0)
    assert table.order(1.0)[-1] == A


def test_an_empty_set_orders_nothing() -> None:
    assert discovered().order(0.0) == []
