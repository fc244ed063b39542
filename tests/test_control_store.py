"""One conformance suite for the control plane's store, on SQLite and on real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from mesh_ca.store import SqliteStore, StateStore
from mesh_ca.store.control import (
    ControlStore,
    Registration,
    TooManyRegistrations,
    control_store,
)
from tests.pg_server import PgServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ORDERS_1 = "spiffe://example.org/ns/shop/svc/orders"
ORDERS_2 = "spiffe://example.org/ns/shop/svc/orders-2"


def _lease(spiffe_id: str, address: str, ttl: int = 15, protocol: str = "http") -> Registration:
    return Registration("orders", spiffe_id, address, protocol, T0 + timedelta(seconds=ttl))


class ControlStoreConformance:
    @pytest.fixture
    def control(self) -> ControlStore:
        raise NotImplementedError

    def test_a_new_endpoint_bumps_the_version_a_renewal_does_not(
        self, control: ControlStore
    ) -> None:
        assert control.endpoints("orders", T0).version == 0
        assert control.register(_lease(ORDERS_1, "127.0.0.1:1"), T0, 4) == 1
        assert control.register(_lease(ORDERS_1, "127.0.0.1:1", ttl=30), T0, 4) is None
        assert control.register(_lease(ORDERS_2, "127.0.0.1:2"), T0, 4) == 2
        current = control.endpoints("orders", T0)
        assert current.version == 2
        assert [(r.spiffe_id, r.address) for r in current.registrations] == [
            (ORDERS_1, "127.0.0.1:1"),
            (ORDERS_2, "127.0.0.1:2"),
        ]
        assert current.registrations[0].expires_at == T0 + timedelta(seconds=30)
        assert control.register(_lease(ORDERS_1, "127.0.0.1:1", protocol="tcp"), T0, 4) == 3

    def test_deregistration_and_expiry_remove_endpoints_and_bump_the_version(
        self, control: ControlStore
    ) -> None:
        control.register(_lease(ORDERS_1, "127.0.0.1:1", ttl=10), T0, 4)
        control.register(_lease(ORDERS_2, "127.0.0.1:2", ttl=20), T0, 4)
        assert control.deregister("orders", ORDERS_2, "127.0.0.1:9") is None
        assert control.deregister("orders", ORDERS_1, "127.0.0.1:2") is None  # not its own
        assert control.deregister("orders", ORDERS_2, "127.0.0.1:2") == 3
        later = T0 + timedelta(seconds=10)
        assert control.endpoints("orders", later).registrations == ()  # expired at read
        assert control.expire(later) == {"orders": 4}
        assert control.expire(later) == {}
        (only,) = control.all_endpoints(later)
        assert (only.service, only.version, only.registrations) == ("orders", 4, ())

    def test_one_id_holds_at_most_the_limit_and_a_refusal_writes_nothing(
        self, control: ControlStore
    ) -> None:
        for port in (1, 2, 3):
            control.register(_lease(ORDERS_1, f"127.0.0.1:{port}"), T0, 3)
        with pytest.raises(TooManyRegistrations):
            control.register(_lease(ORDERS_1, "127.0.0.1:4"), T0, 3)
        assert len(control.endpoints("orders", T0).registrations) == 3
        assert control.endpoints("orders", T0).version == 3
        # Renewing one it holds is no new registration; another ID has its own count.
        assert control.register(_lease(ORDERS_1, "127.0.0.1:1"), T0, 3) is None
        assert control.register(_lease(ORDERS_2, "127.0.0.1:4"), T0, 3) == 4

    def test_a_policy_set_is_published_once_per_content(self, control: ControlStore) -> None:
        assert control.latest_policy() is None
        first = control.publish_policy({"a.cedar": "x"}, "1" * 64, T0)
        again = control.publish_policy({"a.cedar": "x"}, "1" * 64, T0 + timedelta(seconds=1))
        assert (first.version, again.version, again.published_at) == (1, 1, T0)
        second = control.publish_policy({"a.cedar": "y"}, "2" * 64, T0)
        latest = control.latest_policy()
        assert latest is not None
        assert (second.version, latest.version, dict(latest.files)) == (2, 2, {"a.cedar": "y"})

    def test_enforcement_keeps_the_last_report_per_id_and_service(
        self, control: ControlStore
    ) -> None:
        control.record_enforcement(ORDERS_1, "orders", 1, T0)
        control.record_enforcement(ORDERS_1, "orders", 2, T0 + timedelta(seconds=5))
        control.record_enforcement(ORDERS_2, "orders", 1, T0)
        rows = [(e.spiffe_id, e.version, e.seen_at) for e in control.enforcement()]
        assert rows == [(ORDERS_1, 2, T0 + timedelta(seconds=5)), (ORDERS_2, 1, T0)]


class TestSqliteControlStore(ControlStoreConformance):
    @pytest.fixture
    def control(self, tmp_path: object) -> Iterator[ControlStore]:
        assert hasattr(tmp_path, "joinpath")
        store = SqliteStore(tmp_path.joinpath("state.db"))
        yield control_store(store)
        store.close()


@pytest.mark.postgres
class TestPostgresControlStore(ControlStoreConformance):
    @pytest.fixture
    def control(self, pg_url: str, pg_password: str) -> Iterator[ControlStore]:
        from mesh_ca.store.postgres import PostgresStore

        store: StateStore = PostgresStore(pg_url, pg_password)
        yield control_store(store)
        store.close()

    def test_a_change_on_one_replica_is_announced_to_another(
        self, pg_url: str, pg_password: str, pg_server: PgServer
    ) -> None:
        from mesh_ca.store.postgres import PostgresStore

        with PostgresStore(pg_url, pg_password) as a, PostgresStore(pg_url, pg_password) as b:
            heard: list[str] = []
            got = threading.Event()
            stop = threading.Event()

            def on_change(payload: str) -> None:
                heard.append(payload)
                got.set()

            listener = threading.Thread(
                target=control_store(b).listen, args=(on_change, stop.is_set), daemon=True
            )
            listener.start()
            _wait_until(lambda: _listening(pg_server))
            control_store(a).register(_lease(ORDERS_1, "127.0.0.1:1"), T0, 4)
            assert got.wait(30)
            stop.set()
            listener.join(30)
            assert heard == ["endpoints:orders"]


def _listening(pg_server: PgServer) -> bool:
    with pg_server.admin() as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN mesh_ca_control'"
        ).fetchone()
    return bool(found and found[0])


def _wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = threading.Event()
    timer = threading.Timer(seconds, deadline.set)
    timer.start()
    try:
        while not condition():
            if deadline.wait(0.05):
                raise AssertionError("condition not met in time")
    finally:
        timer.cancel()
