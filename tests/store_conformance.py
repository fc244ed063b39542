"""The state-store conformance suite: every backend passes the same tests.

A backend's test module subclasses `StoreConformance` and provides a `store_factory`
fixture: a callable that opens a new handle (its own connection) onto one fresh database
per test. Handles it opens are closed by the suite.

    class TestSqliteStore(StoreConformance):
        @pytest.fixture
        def store_factory(self, tmp_path): ...
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from mesh_ca.store import (
    IdRevoked,
    IssuedRecord,
    KeyBound,
    StateStore,
    StoreError,
    TokenError,
    TokenFailure,
    TokenWrongId,
)
from mesh_ca.tokens import new_token, parse_token
from meshgate.identity import SpiffeId

StoreFactory = Callable[[], StateStore]

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
ALICE = SpiffeId.parse("spiffe://example.org/ns/prod/svc/alice")
BOB = SpiffeId.parse("spiffe://example.org/ns/prod/svc/bob")


class StoreConformance:
    """Behaviour every `StateStore` backend must have. Time is always passed in."""

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Iterator[StateStore]:
        store = store_factory()
        yield store
        store.close()

    def _add(
        self, store: StateStore, spiffe_id: SpiffeId = ALICE, ttl: timedelta = timedelta(minutes=10)
    ) -> tuple[str, str, bytes]:
        text, token_id, secret_hash = new_token()
        store.add_token(token_id, secret_hash, spiffe_id, T0, T0 + ttl)
        return text, token_id, secret_hash

    # Tokens

    def test_token_consumed_once_returns_its_bound_id(self, store: StateStore) -> None:
        text, _, _ = self._add(store, BOB)
        token_id, secret_hash = parse_token(text)
        assert store.consume_token(token_id, secret_hash, T0 + timedelta(minutes=1)) == BOB

    def test_token_replay_is_refused_as_used(self, store: StateStore) -> None:
        _, token_id, secret_hash = self._add(store)
        store.consume_token(token_id, secret_hash, T0)
        with pytest.raises(TokenError) as info:
            store.consume_token(token_id, secret_hash, T0 + timedelta(seconds=1))
        assert info.value.reason is TokenFailure.USED

    def test_expired_token_is_refused_as_expired(self, store: StateStore) -> None:
        _, token_id, secret_hash = self._add(store, ttl=timedelta(minutes=10))
        with pytest.raises(TokenError) as info:
            store.consume_token(token_id, secret_hash, T0 + timedelta(minutes=10))
        assert info.value.reason is TokenFailure.EXPIRED
        # An expired token stays unusable: it was not marked used by the failed attempt.
        assert store.outstanding_tokens(T0) != []

    def test_unknown_token_id_is_refused_as_unknown(self, store: StateStore) -> None:
        self._add(store)
        _, other_id, other_hash = new_token()
        with pytest.raises(TokenError) as info:
            store.consume_token(other_id, other_hash, T0)
        assert info.value.reason is TokenFailure.UNKNOWN

    def test_wrong_secret_reads_as_unknown_and_leaves_the_token_usable(
        self, store: StateStore
    ) -> None:
        _, token_id, secret_hash = self._add(store)
        _, _, wrong_hash = new_token()
        for candidate in (wrong_hash, b"", secret_hash[:-1]):
            with pytest.raises(TokenError) as info:
                store.consume_token(token_id, candidate, T0)
            assert info.value.reason is TokenFailure.UNKNOWN
            assert token_id not in str(info.value)
        assert store.consume_token(token_id, secret_hash, T0) == ALICE

    def test_used_token_with_wrong_secret_still_reads_as_unknown(self, store: StateStore) -> None:
        _, token_id, secret_hash = self._add(store)
        store.consume_token(token_id, secret_hash, T0)
        _, _, wrong_hash = new_token()
        with pytest.raises(TokenError) as info:
            store.consume_token(token_id, wrong_hash, T0)
        assert info.value.reason is TokenFailure.UNKNOWN

    def test_duplicate_token_id_is_refused(self, store: StateStore) -> None:
        _, token_id, secret_hash = self._add(store)
        with pytest.raises(StoreError):
            store.add_token(token_id, secret_hash, BOB, T0, T0 + timedelta(minutes=1))
        assert store.consume_token(token_id, secret_hash, T0) == ALICE

    def test_outstanding_tokens_exclude_used_and_expired(self, store: StateStore) -> None:
        _, used_id, used_hash = self._add(store)
        _, short_id, _ = self._add(store, ttl=timedelta(minutes=1))
        _, live_id, _ = self._add(store, BOB, ttl=timedelta(minutes=30))
        store.consume_token(used_id, used_hash, T0)
        later = store.outstanding_tokens(T0 + timedelta(minutes=2))
        assert [t.token_id for t in later] == [live_id]
        assert later[0].spiffe_id == BOB
        assert later[0].created_at == T0
        assert later[0].expires_at == T0 + timedelta(minutes=30)
        assert later[0].used_at is None
        assert {t.token_id for t in store.outstanding_tokens(T0)} == {short_id, live_id}

    def test_fifty_concurrent_consumers_get_exactly_one_success(
        self, store_factory: StoreFactory
    ) -> None:
        setup = store_factory()
        _, token_id, secret_hash = self._add(setup)
        # Half the threads share one handle, half have their own connection.
        handles = [setup] + [store_factory() for _ in range(24)]
        barrier = threading.Barrier(50)

        def consume(index: int) -> str:
            store = handles[index % len(handles)] if index % 2 else setup
            barrier.wait()
            try:
                store.consume_token(token_id, secret_hash, T0)
            except TokenError as exc:
                return str(exc.reason)
            return "ok"

        try:
            with ThreadPoolExecutor(max_workers=50) as pool:
                results = list(pool.map(consume, range(50)))
        finally:
            for handle in handles:
                handle.close()
        assert results.count("ok") == 1
        assert results.count(str(TokenFailure.USED)) == 49

    # Bootstrap in one step: redeem_token

    @staticmethod
    def _row(serial: int, kind: str = "bootstrap") -> Callable[[SpiffeId], IssuedRecord]:
        def issue(spiffe_id: SpiffeId) -> IssuedRecord:
            return IssuedRecord(serial, spiffe_id, kind, T0, T0 + timedelta(hours=1), "r1")

        return issue

    def test_redeem_consumes_the_token_and_records_the_row_for_its_bound_id(
        self, store: StateStore
    ) -> None:
        _, token_id, secret_hash = self._add(store, BOB)
        record = store.redeem_token(token_id, secret_hash, T0, self._row(11))
        assert record.spiffe_id == BOB
        assert list(store.issued()) == [record]
        assert store.outstanding_tokens(T0) == []
        with pytest.raises(TokenError) as info:
            store.redeem_token(token_id, secret_hash, T0, self._row(12))
        assert info.value.reason is TokenFailure.USED
        assert store.issued_count() == 1

    def test_redeem_rolls_everything_back_when_issue_fails(self, store: StateStore) -> None:
        _, token_id, secret_hash = self._add(store)

        def failing(spiffe_id: SpiffeId) -> IssuedRecord:
            raise RuntimeError("signing failed")

        with pytest.raises(RuntimeError, match="signing failed"):
            store.redeem_token(token_id, secret_hash, T0, failing)
        assert store.issued_count() == 0
        assert [t.token_id for t in store.outstanding_tokens(T0)] == [token_id]
        assert store.redeem_token(token_id, secret_hash, T0, self._row(5)).serial == 5

    def test_redeem_for_a_revoked_id_writes_nothing_and_never_signs(
        self, store: StateStore
    ) -> None:
        _, token_id, secret_hash = self._add(store, ALICE)
        store.revoke(T0, spiffe_id=ALICE)
        called: list[SpiffeId] = []

        def issue(spiffe_id: SpiffeId) -> IssuedRecord:
            called.append(spiffe_id)
            return self._row(6)(spiffe_id)

        with pytest.raises(IdRevoked) as info:
            store.redeem_token(token_id, secret_hash, T0, issue)
        assert info.value.spiffe_id == ALICE
        assert called == []
        assert store.issued_count() == 0
        assert [t.token_id for t in store.outstanding_tokens(T0)] == [token_id]

    def test_issued_serial_finds_a_ledger_row_and_none_for_a_serial_never_issued(
        self, store: StateStore
    ) -> None:
        big = (1 << 158) + 12345  # the largest serials issuance makes are 159 bits
        record = IssuedRecord(big, BOB, "bootstrap", T0, T0 + timedelta(hours=1), "r1")
        store.record_issued(record)
        assert store.issued_serial(big) == record
        assert store.issued_serial(big + 1) is None
        assert store.issued_serial(1) is None

    def test_redeem_for_another_expected_id_leaves_the_token_unused_and_never_signs(
        self, store: StateStore
    ) -> None:
        _, token_id, secret_hash = self._add(store, BOB)
        called: list[SpiffeId] = []

        def issue(spiffe_id: SpiffeId) -> IssuedRecord:
            called.append(spiffe_id)
            return self._row(8)(spiffe_id)

        with pytest.raises(TokenWrongId) as info:
            store.redeem_token(token_id, secret_hash, T0, issue, expected=ALICE)
        assert (info.value.bound, info.value.expected) == (BOB, ALICE)
        assert called == []
        assert store.issued_count() == 0
        assert [t.token_id for t in store.outstanding_tokens(T0)] == [token_id]
        # The right redeemer still gets it, once.
        assert store.redeem_token(token_id, secret_hash, T0, issue, expected=BOB).spiffe_id == BOB
        assert store.outstanding_tokens(T0) == []

    def test_redeem_with_a_wrong_secret_or_late_is_refused_without_signing(
        self, store: StateStore
    ) -> None:
        _, token_id, secret_hash = self._add(store)
        _, _, wrong = new_token()
        with pytest.raises(TokenError) as info:
            store.redeem_token(token_id, wrong, T0, self._row(7))
        assert info.value.reason is TokenFailure.UNKNOWN
        with pytest.raises(TokenError) as info:
            store.redeem_token(token_id, secret_hash, T0 + timedelta(hours=1), self._row(7))
        assert info.value.reason is TokenFailure.EXPIRED
        assert store.issued_count() == 0

    def test_redeem_with_a_serial_already_in_the_ledger_is_refused_whole(
        self, store: StateStore
    ) -> None:
        store.record_issued(IssuedRecord(9, BOB, "offline", T0, T0 + timedelta(hours=1)))
        _, token_id, secret_hash = self._add(store)
        with pytest.raises(StoreError):
            store.redeem_token(token_id, secret_hash, T0, self._row(9))
        assert store.issued_count() == 1
        assert [t.token_id for t in store.outstanding_tokens(T0)] == [token_id]

    def test_fifty_concurrent_redeemers_get_exactly_one_row(
        self, store_factory: StoreFactory
    ) -> None:
        setup = store_factory()
        _, token_id, secret_hash = self._add(setup)
        handles = [setup] + [store_factory() for _ in range(24)]
        barrier = threading.Barrier(50)

        def redeem(index: int) -> str:
            store = handles[index % len(handles)]
            barrier.wait()
            try:
                store.redeem_token(token_id, secret_hash, T0, self._row(100 + index))
            except TokenError as exc:
                return str(exc.reason)
            return "ok"

        try:
            with ThreadPoolExecutor(max_workers=50) as pool:
                results = list(pool.map(redeem, range(50)))
            assert results.count("ok") == 1
            assert results.count(str(TokenFailure.USED)) == 49
            assert setup.issued_count() == 1
        finally:
            for handle in handles:
                handle.close()

    # Renewal in one step: record_renewal

    def test_record_renewal_writes_the_row_unless_revoked(self, store: StateStore) -> None:
        first = IssuedRecord(21, ALICE, "renew", T0, T0 + timedelta(hours=1), "r2")
        store.record_renewal(first, current_serial=20)
        assert list(store.issued()) == [first]
        store.revoke(T0, serial=20)
        with pytest.raises(IdRevoked):
            store.record_renewal(
                IssuedRecord(22, ALICE, "renew", T0, T0 + timedelta(hours=1)), current_serial=20
            )
        store.record_renewal(
            IssuedRecord(23, ALICE, "renew", T0, T0 + timedelta(hours=1)), current_serial=21
        )
        store.revoke(T0, spiffe_id=ALICE)
        with pytest.raises(IdRevoked) as info:
            store.record_renewal(
                IssuedRecord(24, ALICE, "renew", T0, T0 + timedelta(hours=1)), current_serial=23
            )
        assert info.value.spiffe_id == ALICE
        assert [r.serial for r in store.issued()] == [23, 21]

    def test_record_renewal_refuses_a_duplicate_serial(self, store: StateStore) -> None:
        store.record_issued(IssuedRecord(31, BOB, "offline", T0, T0 + timedelta(hours=1)))
        with pytest.raises(StoreError):
            store.record_renewal(
                IssuedRecord(31, ALICE, "renew", T0, T0 + timedelta(hours=1)), current_serial=1
            )
        assert store.issued_count() == 1

    # Key bindings: one SPIFFE ID per public key

    def test_a_key_bound_to_one_id_is_refused_for_another_on_every_write_path(
        self, store: StateStore
    ) -> None:
        key = b"k" * 32
        hour = timedelta(hours=1)
        store.record_issued(IssuedRecord(41, ALICE, "offline", T0, T0 + hour, "", key))
        # The same ID may keep its key (a renewal that does not rotate the key).
        store.record_renewal(IssuedRecord(42, ALICE, "renew", T0, T0 + hour, "", key), 41)
        with pytest.raises(KeyBound) as info:
            store.record_issued(IssuedRecord(43, BOB, "offline", T0, T0 + hour, "", key))
        assert (info.value.spiffe_id, info.value.bound_to) == (BOB, ALICE)
        with pytest.raises(KeyBound):
            store.record_renewal(IssuedRecord(44, BOB, "renew", T0, T0 + hour, "", key), 1)
        _, token_id, secret_hash = self._add(store, BOB)

        def issue(spiffe_id: SpiffeId) -> IssuedRecord:
            return IssuedRecord(45, spiffe_id, "bootstrap", T0, T0 + hour, "", key)

        with pytest.raises(KeyBound):
            store.redeem_token(token_id, secret_hash, T0, issue)
        # Refused whole: no row, and the token is still unused.
        assert [r.serial for r in store.issued()] == [42, 41]
        assert [t.token_id for t in store.outstanding_tokens(T0)] == [token_id]
        # Another key for BOB is fine.
        other = IssuedRecord(46, BOB, "offline", T0, T0 + hour, "", b"o" * 32)
        store.record_issued(other)

    def test_concurrent_issuance_of_one_key_to_two_ids_binds_it_to_one(
        self, store_factory: StoreFactory
    ) -> None:
        handles = [store_factory() for _ in range(8)]
        barrier = threading.Barrier(16)
        key = b"c" * 32

        def issue(index: int) -> str:
            store = handles[index % len(handles)]
            sid = ALICE if index % 2 else BOB
            barrier.wait()
            try:
                store.record_issued(
                    IssuedRecord(500 + index, sid, "offline", T0, T0 + timedelta(hours=1), "", key)
                )
            except KeyBound:
                return "bound"
            return str(sid)

        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                results = list(pool.map(issue, range(16)))
            winners = {r for r in results if r != "bound"}
            assert len(winners) == 1
            assert results.count("bound") == 8
            assert handles[0].issued_count() == 8
        finally:
            for handle in handles:
                handle.close()

    # Ledger

    def test_ledger_records_lists_most_recent_first_and_counts(self, store: StateStore) -> None:
        big_serial = (1 << 158) + 12345  # X.509 serials exceed 64 bits
        records = [
            IssuedRecord(big_serial, ALICE, "bootstrap", T0, T0 + timedelta(hours=1), "r1"),
            IssuedRecord(2, BOB, "offline", T0 + timedelta(seconds=1), T0 + timedelta(hours=2)),
            IssuedRecord(3, ALICE, "renew", T0 + timedelta(seconds=2), T0 + timedelta(hours=3)),
        ]
        for record in records:
            store.record_issued(record)
        assert store.issued_count() == 3
        assert list(store.issued()) == records[::-1]
        assert list(store.issued(ALICE)) == [records[2], records[0]]
        assert list(store.issued(limit=1)) == [records[2]]
        assert store.issued(SpiffeId.parse("spiffe://example.org/none")) == []

    def test_duplicate_serial_is_refused_whole(self, store: StateStore) -> None:
        record = IssuedRecord(7, ALICE, "offline", T0, T0 + timedelta(hours=1))
        store.record_issued(record)
        with pytest.raises(StoreError):
            store.record_issued(IssuedRecord(7, BOB, "offline", T0, T0 + timedelta(hours=1)))
        assert store.issued_count() == 1
        assert list(store.issued()) == [record]

    # Revocations

    def test_revoke_by_id_revokes_every_serial_of_that_id(self, store: StateStore) -> None:
        revocation = store.revoke(T0, spiffe_id=ALICE, reason="key compromise")
        assert revocation.spiffe_id == ALICE
        assert revocation.serial is None
        assert revocation.revoked_at == T0
        assert revocation.reason == "key compromise"
        assert store.is_revoked(ALICE, 1)
        assert store.is_revoked(ALICE, 99)
        assert not store.is_revoked(BOB, 1)

    def test_revoke_by_serial_revokes_only_that_certificate(self, store: StateStore) -> None:
        serial = (1 << 150) + 5
        revocation = store.revoke(T0, serial=serial)
        assert revocation.serial == serial
        assert revocation.spiffe_id is None
        assert store.is_revoked(BOB, serial)
        assert not store.is_revoked(BOB, serial + 1)

    def test_revocations_are_listed_and_revoking_again_keeps_the_first(
        self, store: StateStore
    ) -> None:
        first = store.revoke(T0, spiffe_id=ALICE, reason="first")
        again = store.revoke(T0 + timedelta(hours=1), spiffe_id=ALICE, reason="second")
        by_serial = store.revoke(T0 + timedelta(seconds=5), serial=42)
        assert again == first
        assert list(store.revocations()) == [first, by_serial]

    def test_revoke_needs_exactly_one_target(self, store: StateStore) -> None:
        with pytest.raises(ValueError, match="exactly one"):
            store.revoke(T0)
        with pytest.raises(ValueError, match="exactly one"):
            store.revoke(T0, spiffe_id=ALICE, serial=1)
        assert store.revocations() == []

    # Time and lifecycle

    def test_naive_times_are_refused(self, store: StateStore) -> None:
        naive = datetime(2030, 1, 1)
        _, token_id, secret_hash = new_token()
        with pytest.raises(ValueError, match="naive"):
            store.add_token(token_id, secret_hash, ALICE, naive, naive + timedelta(minutes=1))
        assert store.outstanding_tokens(T0 - timedelta(days=1)) == []

    def test_state_is_shared_between_handles(self, store_factory: StoreFactory) -> None:
        first, second = store_factory(), store_factory()
        try:
            _, token_id, secret_hash = self._add(first)
            first.revoke(T0, spiffe_id=BOB)
            assert second.is_revoked(BOB, 1)
            assert second.consume_token(token_id, secret_hash, T0) == ALICE
            with pytest.raises(TokenError):
                first.consume_token(token_id, secret_hash, T0)
        finally:
            first.close()
            second.close()

    def test_ping_answers_and_close_is_final(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        store.ping()
        store.close()
        store.close()  # idempotent
        with pytest.raises(StoreError):
            store.ping()
        with pytest.raises(StoreError):
            store.issued_count()
