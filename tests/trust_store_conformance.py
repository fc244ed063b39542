"""What every backend's rotation tables must do (`mesh_ca.store.trust`); run per backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mesh_ca.store import IssuedRecord, StateStore
from mesh_ca.store.trust import AuditEntry, trust_store
from meshgate.identity import SpiffeId

T0 = datetime(2030, 1, 1, tzinfo=UTC)
WEB = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")
ORDERS = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")
CA = SpiffeId.parse("spiffe://example.org/mesh/ca")

StoreFactory = Callable[[], StateStore]


def _entry(action: str) -> AuditEntry:
    return AuditEntry(T0, "test", action, "{}")


class TrustStoreConformance:
    """Subclasses provide a `store_factory` fixture: a new store on one shared database."""

    def test_the_state_is_a_compare_and_set_on_its_version(
        self, store_factory: StoreFactory
    ) -> None:
        with store_factory() as store:  # type: ignore[attr-defined]
            trust = trust_store(store)
            assert trust.load_state() is None
            assert trust.save_state(0, "one", _entry("seed"))
            assert not trust.save_state(0, "other", _entry("seed"))
            assert trust.save_state(1, "two", _entry("step"))
            assert not trust.save_state(1, "stale", _entry("step"))
            assert trust.load_state() == (2, "two")
            assert [e.action for e in trust.audit()] == ["step", "seed"]  # only what was saved

    def test_of_replicas_racing_for_one_step_exactly_one_wins(
        self, store_factory: StoreFactory
    ) -> None:
        with store_factory() as first:  # type: ignore[attr-defined]
            assert trust_store(first).save_state(0, "seed", _entry("seed"))
        wins: list[int] = []
        barrier = threading.Barrier(8)

        def replica(n: int) -> None:
            with store_factory() as store:  # type: ignore[attr-defined]
                trust = trust_store(store)
                barrier.wait(timeout=30)
                if trust.save_state(1, f"replica {n}", _entry(f"step by {n}")):
                    wins.append(n)

        threads = [threading.Thread(target=replica, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(wins) == 1, wins
        with store_factory() as store:  # type: ignore[attr-defined]
            trust = trust_store(store)
            assert trust.load_state() == (2, f"replica {wins[0]}")
            assert len(trust.audit()) == 2

    def test_bundle_reports_keep_the_highest_sequence_and_the_last_time(
        self, store_factory: StoreFactory
    ) -> None:
        with store_factory() as store:  # type: ignore[attr-defined]
            trust = trust_store(store)
            trust.report_bundle(WEB, 7, T0)
            trust.report_bundle(WEB, 5, T0 + timedelta(seconds=1))
            trust.report_bundle(ORDERS, 9, T0)
            reports = trust.bundle_reports()
            assert reports[WEB] == (7, T0 + timedelta(seconds=1))
            assert reports[ORDERS] == (9, T0)

    def test_the_ledger_answers_the_last_leaf_and_the_active_workloads(
        self, store_factory: StoreFactory
    ) -> None:
        with store_factory() as store:  # type: ignore[attr-defined]
            trust = trust_store(store)
            assert trust.leaves_until(T0) is None
            rows = [
                (1, WEB, "bootstrap", T0, T0 + timedelta(hours=1)),
                (2, ORDERS, "renew", T0 + timedelta(minutes=5), T0 + timedelta(hours=2)),
                (3, CA, "ca-server", T0, T0 + timedelta(hours=9)),  # never counted
                (4, WEB, "offline", T0, T0 + timedelta(hours=3)),
            ]
            for serial, spiffe_id, kind, issued, not_after in rows:
                store.record_issued(IssuedRecord(serial, spiffe_id, kind, issued, not_after))
            assert trust.leaves_until(T0) == T0 + timedelta(hours=3)
            assert trust.leaves_until(T0 + timedelta(minutes=5)) == T0 + timedelta(hours=3)
            assert trust.active_workload_ids(T0) == {WEB, ORDERS}
            assert trust.active_workload_ids(T0 + timedelta(minutes=90)) == {ORDERS}
