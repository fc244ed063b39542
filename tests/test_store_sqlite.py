"""The SQLite state store: the conformance suite, plus what only a file database has."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from mesh_ca.store import IssuedRecord, SqliteStore, StateStore, StoreUnavailable, TokenError
from mesh_ca.store.sqlite import SCHEMA_VERSION
from mesh_ca.tokens import new_token
from tests.store_conformance import ALICE, T0, StoreConformance, StoreFactory
from tests.trust_store_conformance import TrustStoreConformance


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        path = tmp_path / "state.db"

        def factory() -> StateStore:
            return SqliteStore(path)

        return factory


def _consume_in_process(path: str, token_id: str, secret_hash: bytes, start: object) -> bool:
    store = SqliteStore(path)
    try:
        start.wait()  # type: ignore[attr-defined]
        store.consume_token(token_id, secret_hash, T0)
    except TokenError:
        return False
    finally:
        store.close()
    return True


@pytest.mark.integration
def test_concurrent_consumers_in_separate_processes_get_one_success(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        _, token_id, secret_hash = new_token()
        store.add_token(token_id, secret_hash, ALICE, T0, T0 + timedelta(minutes=10))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(8) as pool:
            pending = [
                pool.apply_async(_consume_in_process, (str(path), token_id, secret_hash, start))
                for _ in range(16)
            ]
            start.set()
            results = [p.get(timeout=60) for p in pending]
    assert results.count(True) == 1


def test_database_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_token_and_revocation_commits_are_durable_across_power_loss(tmp_path: Path) -> None:
    """synchronous=FULL for security state (a consumed token's used_at must survive a power
    cut); NORMAL only for ledger-only writes such as renewals."""
    store = SqliteStore(tmp_path / "state.db")

    def synchronous() -> int:
        return int(store._conn.execute("PRAGMA synchronous").fetchone()[0])

    try:
        assert synchronous() == 2  # FULL
        store.record_renewal(IssuedRecord(21, ALICE, "renew", T0, T0 + timedelta(hours=1)), 20)
        assert synchronous() == 1  # NORMAL
        _text, token_id, secret_hash = new_token()
        store.add_token(token_id, secret_hash, ALICE, T0, T0 + timedelta(minutes=10))
        assert synchronous() == 2
        store.record_issued(IssuedRecord(22, ALICE, "offline", T0, T0 + timedelta(hours=1)))
        store.consume_token(token_id, secret_hash, T0)
        assert synchronous() == 2
        store.record_issued(IssuedRecord(23, ALICE, "offline", T0, T0 + timedelta(hours=1)))
        store.revoke(T0, spiffe_id=ALICE)
        assert synchronous() == 2
    finally:
        store.close()


def test_secret_is_stored_only_as_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    text, token_id, secret_hash = new_token()
    with SqliteStore(path) as store:
        store.add_token(token_id, secret_hash, ALICE, T0, T0 + timedelta(minutes=10))
    secret = text.split(".", 1)[1].encode()
    for file in tmp_path.iterdir():
        assert secret not in file.read_bytes()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        SqliteStore(path)


def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot open"):
        SqliteStore(tmp_path / "missing-dir" / "state.db")


def test_garbage_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable):
        SqliteStore(path)


@pytest.mark.integration
def test_a_read_only_directory_is_named_as_the_cause(tmp_path: Path) -> None:
    # WAL mode writes state.db-wal and -shm next to the database: on a read-only directory
    # the file is fine and the message must say so. Root ignores mode bits, so the
    # directory is made read-only by a read-only bind mount in a private user namespace.
    state = tmp_path / "ca"
    state.mkdir()
    SqliteStore(state / "state.db").close()
    for leftover in state.glob("state.db-*"):
        leftover.unlink()
    script = (
        'd=$1; mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 99; '
        'exec "$2" -c "import sys; from mesh_ca.store import SqliteStore; '
        'SqliteStore(sys.argv[1])" "$d/state.db"'
    )
    unshare = ["unshare", "--user", "--map-root-user", "--mount"]
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to make a read-only directory for root")
    result = subprocess.run(
        [*unshare, "sh", "-c", script, "sh", str(state), sys.executable],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == 99:
        pytest.skip(f"no read-only bind mount here: {result.stderr.strip()}")
    assert result.returncode == 1, result.stderr
    assert f"the directory {state} is not writable" in result.stderr


class TestSqliteTrustStore(TrustStoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        path = tmp_path / "state.db"

        def factory() -> StateStore:
            return SqliteStore(path)

        return factory
