"""A replica's registry view and the policy status report (unit, pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mesh_ca.control.registry import RegistryView, policy_status
from mesh_ca.store.control import Enforcement, Registration, ServiceEndpoints

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ORDERS = "spiffe://example.org/ns/shop/svc/orders"


def _set(version: int, *ports: int) -> ServiceEndpoints:
    return ServiceEndpoints(
        "orders",
        version,
        tuple(
            Registration("orders", ORDERS, f"127.0.0.1:{p}", "http", T0 + timedelta(seconds=p))
            for p in ports
        ),
    )


def test_an_older_version_never_replaces_a_newer_one() -> None:
    view = RegistryView()
    assert view.get("orders").version == 0
    assert view.update(_set(2, 1, 2))
    assert not view.update(_set(1, 1))
    assert [e.address for e in view.endpoint_set("orders").endpoints] == [
        "127.0.0.1:1",
        "127.0.0.1:2",
    ]
    assert not view.update(_set(2, 1, 2))  # the same version again: no wake-up


def test_a_renewal_moves_the_expiry_and_keeps_the_version() -> None:
    view = RegistryView()
    view.update(_set(3, 5, 9))
    assert view.next_expiry() == T0 + timedelta(seconds=5)
    renewed = Registration("orders", ORDERS, "127.0.0.1:5", "http", T0 + timedelta(seconds=60))
    view.renewed(renewed)
    assert view.get("orders").version == 3
    assert view.next_expiry() == T0 + timedelta(seconds=9)
    assert view.holds("orders", ORDERS)
    assert not view.holds("payments", ORDERS)


def test_the_status_says_who_is_current_behind_or_silent() -> None:
    rows = [
        Enforcement("a", "orders", 3, T0),
        Enforcement("b", "orders", 2, T0),
        Enforcement("c", "orders", 3, T0 - timedelta(seconds=91)),
        Enforcement("d", "orders", 0, T0),
    ]
    states = [(r.spiffe_id, r.state, r.stale) for r in policy_status(rows, 3, T0)]
    assert states == [
        ("a", "current", False),
        ("b", "behind", True),
        ("c", "silent", True),
        ("d", "behind", True),
    ]


def test_the_answer_is_made_once_per_version_and_remade_after_a_change() -> None:
    view = RegistryView()
    view.update(_set(1, 1))
    first = view.endpoint_set_json("orders")
    assert first is view.endpoint_set_json("orders")
    assert first == view.endpoint_set("orders").model_dump_json().encode()
    view.renewed(Registration("orders", ORDERS, "127.0.0.1:1", "http", T0 + timedelta(hours=1)))
    assert b"T01:00:00" in view.endpoint_set_json("orders")
    view.update(_set(2, 1, 2))
    assert b"127.0.0.1:2" in view.endpoint_set_json("orders")
    assert view.endpoint_set_json("unknown") == b'{"service":"unknown","version":0,"endpoints":[]}'
