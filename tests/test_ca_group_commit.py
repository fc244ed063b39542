"""Group commit: the store steps of concurrent issuance requests in one SQLite transaction.

Three layers: `SqliteStore.group` (savepoints inside one transaction, one commit),
`CaService.run_steps` (answers each step; a failed commit answers all 503) and the trio
`GroupCommit` (requests that reach their store step in one scheduler round share a batch).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from mesh_ca.server.core import ApiResponse, CaService, StoreStep
from mesh_ca.server.group_commit import GroupCommit
from mesh_ca.store import (
    IdRevoked,
    IssuedRecord,
    SqliteStore,
    StoreError,
    StoreUnavailable,
    TokenError,
)
from mesh_ca.tokens import new_token
from meshgate.identity import SpiffeId
from tests.pki import TestPki as Pki
from tests.test_ca_server_core import T0, csr, error, post, service, token_for

ALICE = SpiffeId.parse("spiffe://example.org/ns/a/svc/alice")
BOB = SpiffeId.parse("spiffe://example.org/ns/a/svc/bob")


@pytest.fixture
def pki() -> Pki:
    return Pki(now=T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(path) as opened:
        yield opened


def row(serial: int, spiffe_id: SpiffeId = ALICE, kind: str = "renew") -> IssuedRecord:
    return IssuedRecord(serial, spiffe_id, kind, T0, T0 + timedelta(hours=1))


def add_token(store: SqliteStore, spiffe_id: SpiffeId) -> tuple[str, bytes]:
    _, token_id, secret_hash = new_token()
    store.add_token(token_id, secret_hash, spiffe_id, T0, T0 + timedelta(minutes=10))
    return token_id, secret_hash


# SqliteStore.group


def test_a_group_commits_its_good_steps_and_drops_only_the_failed_ones(
    store: SqliteStore, path: Path
) -> None:
    token_id, secret_hash = add_token(store, ALICE)
    store.revoke(T0, spiffe_id=BOB)
    other = SqliteStore(path)  # another connection: sees nothing before the commit
    try:
        with store.group(durable=True):
            store.redeem_token(token_id, secret_hash, T0, lambda sid: row(1, sid, "bootstrap"))
            with pytest.raises(TokenError):  # the same token again, inside the group
                store.redeem_token(token_id, secret_hash, T0, lambda sid: row(2, sid))
            with pytest.raises(IdRevoked):
                store.record_renewal(row(3, BOB), current_serial=99)
            store.record_renewal(row(4), current_serial=98)
            with pytest.raises(StoreError):  # a duplicate serial: that step alone
                store.record_renewal(row(4), current_serial=98)
            assert other.issued_count() == 0
        assert sorted(r.serial for r in other.issued()) == [1, 4]
        with pytest.raises(TokenError):
            other.consume_token(token_id, secret_hash, T0)
    finally:
        other.close()


def test_an_exception_in_a_group_rolls_all_of_it_back(store: SqliteStore) -> None:
    token_id, secret_hash = add_token(store, ALICE)

    def fail_inside() -> None:
        with store.group(durable=True):
            store.redeem_token(token_id, secret_hash, T0, lambda sid: row(1, sid))
            store.record_renewal(row(2), current_serial=9)
            raise RuntimeError("the caller failed before the commit")

    with pytest.raises(RuntimeError):
        fail_inside()
    assert store.issued_count() == 0
    assert store.consume_token(token_id, secret_hash, T0) == ALICE  # still unused


class _FailingConnection:
    """The store's connection, failing the way a full or broken disk does on one statement."""

    def __init__(self, real: sqlite3.Connection, failing: str) -> None:
        self._real = real
        self._failing = failing

    def cursor(self) -> Any:
        cursor = self._real.cursor()
        failing = self._failing

        class Cursor:
            def execute(self, sql: str, *args: Any) -> Any:
                if sql.startswith(failing):
                    raise sqlite3.OperationalError("disk I/O error")
                return cursor.execute(sql, *args)

            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

        return Cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_database_error_breaks_the_group_and_nothing_is_committed(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_id, secret_hash = add_token(store, ALICE)
    real = store._conn

    def break_inside() -> None:
        with store.group(durable=True):
            store.redeem_token(token_id, secret_hash, T0, lambda sid: row(1, sid))
            monkeypatch.setattr(store, "_conn", _FailingConnection(real, "INSERT INTO issued"))
            with pytest.raises(StoreUnavailable, match="disk I/O error"):
                store.record_renewal(row(2), current_serial=9)
            monkeypatch.setattr(store, "_conn", real)
            with pytest.raises(StoreUnavailable):  # broken: later calls fail closed too
                store.record_renewal(row(3), current_serial=9)

    with pytest.raises(StoreUnavailable):
        break_inside()
    assert store.issued_count() == 0
    assert store.consume_token(token_id, secret_hash, T0) == ALICE


def test_a_failed_commit_leaves_nothing(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_id, secret_hash = add_token(store, ALICE)
    monkeypatch.setattr(store, "_conn", _FailingConnection(store._conn, "COMMIT"))

    def commit_two() -> None:
        with store.group(durable=True):
            store.redeem_token(token_id, secret_hash, T0, lambda sid: row(1, sid))
            store.record_renewal(row(2), current_serial=9)

    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        commit_two()
    monkeypatch.undo()
    assert store.issued_count() == 0
    assert store.consume_token(token_id, secret_hash, T0) == ALICE


def test_groups_refuse_durable_writes_when_not_durable_and_do_not_nest(
    store: SqliteStore,
) -> None:
    token_id, secret_hash = add_token(store, ALICE)
    with store.group(durable=False):
        with pytest.raises(StoreError, match="durable write inside a non-durable"):
            store.redeem_token(token_id, secret_hash, T0, lambda sid: row(1, sid))
        with pytest.raises(StoreError, match="do not nest"), store.group(durable=False):
            pass
        store.record_renewal(row(2), current_serial=9)
    assert [r.serial for r in store.issued()] == [2]
    assert store.consume_token(token_id, secret_hash, T0) == ALICE


# CaService.run_steps


def renew_step(api: CaService, pki: Pki, name: str) -> StoreStep:
    leaf = pki.leaf(pki.spiffe_id("a", name)).cert
    step = api.begin(post("/v1/renew", {"csr": csr()}, leaf), T0 + timedelta(minutes=1), 0)
    assert isinstance(step, StoreStep)
    return step


def test_run_steps_answers_each_step_of_a_group(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    used = token_for(store, "spiffe://example.org/ns/a/svc/boot")
    first = api.begin(post("/v1/bootstrap", {"token": used, "csr": csr()}), T0, 0)
    again = api.begin(post("/v1/bootstrap", {"token": used, "csr": csr()}), T0, 0)
    revoked = renew_step(api, pki, "gone")
    store.revoke(T0, spiffe_id=pki.spiffe_id("a", "gone"))
    renewal = renew_step(api, pki, "kept")
    assert isinstance(first, StoreStep)
    assert isinstance(again, StoreStep)
    responses = api.run_steps([first, again, revoked, renewal])
    assert [r.status for r in responses] == [200, 403, 403, 200]
    assert error(responses[1]) == (403, "token_used")
    assert error(responses[2]) == (403, "revoked")
    assert sorted(r.kind for r in store.issued()) == ["bootstrap", "renew"]


def test_a_store_error_in_a_step_is_a_500_for_that_step_alone(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    step = renew_step(api, pki, "twice")
    other = renew_step(api, pki, "other")
    # The same step twice: its serial is already in the ledger the second time.
    responses = api.run_steps([step, step, other])
    assert [r.status for r in responses] == [200, 500, 200]
    assert error(responses[1]) == (500, "ledger_failed")
    assert store.issued_count() == 2
    assert error(api.run_steps([step])[0]) == (500, "ledger_failed")  # alone, no group


def test_a_failed_group_commit_answers_every_step_503(
    pki: Pki, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = service(pki, store)
    steps = [renew_step(api, pki, f"w{i}") for i in range(3)]
    monkeypatch.setattr(store, "_conn", _FailingConnection(store._conn, "COMMIT"))
    responses = api.run_steps(steps)
    monkeypatch.undo()
    assert [error(r) for r in responses] == [(503, "store_unavailable")] * 3
    assert api.metrics.store_up._value.get() == 0
    assert store.issued_count() == 0
    assert api.run_steps([renew_step(api, pki, "later")])[0].status == 200
    assert api.metrics.store_up._value.get() == 1


# GroupCommit (trio)


def group_figures(api: CaService) -> tuple[float, float]:
    """(batches, steps) from the group-size histogram."""
    registry: CollectorRegistry = api.metrics.registry
    count = registry.get_sample_value("meshgate_ca_store_group_steps_count")
    total = registry.get_sample_value("meshgate_ca_store_group_steps_sum")
    return count or 0.0, total or 0.0


async def test_steps_reaching_the_store_in_one_round_share_one_commit(
    pki: Pki, store: SqliteStore
) -> None:
    api = service(pki, store)
    commits = GroupCommit(api)
    steps = [renew_step(api, pki, f"w{i}") for i in range(8)]
    responses: list[ApiResponse] = []

    async def submit(step: StoreStep) -> None:
        responses.append(await commits.run(step))

    async with trio.open_nursery() as nursery:
        for step in steps:
            nursery.start_soon(submit, step)
    assert [r.status for r in responses] == [200] * 8
    assert group_figures(api) == (1.0, 8.0)
    assert store.issued_count() == 8


async def test_batches_are_bounded_and_each_gets_a_leader(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    commits = GroupCommit(api, max_steps=3)
    steps = [renew_step(api, pki, f"w{i}") for i in range(7)]
    statuses: list[int] = []

    async def submit(step: StoreStep) -> None:
        statuses.append((await commits.run(step)).status)

    async with trio.open_nursery() as nursery:
        for step in steps:
            nursery.start_soon(submit, step)
    assert statuses == [200] * 7
    assert group_figures(api) == (3.0, 7.0)  # 3 + 3 + 1


async def test_a_cancelled_request_still_finishes_its_step(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    commits = GroupCommit(api)
    answered: list[int] = []

    async def submit(step: StoreStep) -> None:
        answered.append((await commits.run(step)).status)

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(submit, renew_step(api, pki, f"w{index}"))
        nursery.cancel_scope.cancel()  # before any of them ran: the waits are shielded
    assert answered == [200] * 4
    assert store.issued_count() == 4


async def test_a_failing_batch_answers_every_waiter(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    commits = GroupCommit(api)

    def broken() -> ApiResponse:
        raise RuntimeError("a bug in a step")

    answered: list[tuple[int, str]] = []

    async def submit(step: StoreStep) -> None:
        answered.append(error(await commits.run(step)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit, StoreStep(broken, durable=False))
        nursery.start_soon(submit, renew_step(api, pki, "w"))
    assert answered == [(500, "internal_error")] * 2
    assert store.issued_count() == 0  # the group rolled back whole
