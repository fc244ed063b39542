"""The PostgreSQL state store on a real server: the conformance suite, plus what only a
shared database has (several processes, outages, schema versions, the password path)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesh_ca.cli import main as mesh_ca_main
from mesh_ca.config import ConfigError, StoreConfig
from mesh_ca.store import StateStore, StoreError, StoreUnavailable, TokenError, TokenFailure
from mesh_ca.store.migrations import LATEST_VERSION, SchemaVersionError, migrate
from mesh_ca.store.postgres import PostgresStore
from mesh_ca.store.postgres_config import open_postgres, store_password
from mesh_ca.tokens import new_token
from tests.pg_server import PgServer, running_postgres
from tests.store_conformance import ALICE, BOB, T0, StoreConformance, StoreFactory
from tests.trust_store_conformance import TrustStoreConformance

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    def store_factory(self, pg_url: str, pg_password: str) -> StoreFactory:
        def factory() -> StateStore:
            return PostgresStore(pg_url, pg_password)

        return factory


@pytest.fixture
def store(pg_url: str, pg_password: str) -> Iterator[PostgresStore]:
    with PostgresStore(pg_url, pg_password) as opened:
        yield opened


def _connect(url: str, password: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, password=password, autocommit=True)


# Several processes


def _consume_all(
    url: str, password: str, tokens: list[tuple[str, bytes]], start: Any, results: Any
) -> None:
    """Child process: open its own store, wait for the others, race for every token."""
    outcome: list[str] = []
    with PostgresStore(url, password) as store:
        start.wait(timeout=60)
        for token_id, secret_hash in tokens:
            try:
                store.consume_token(token_id, secret_hash, T0)
                outcome.append("ok")
            except TokenError as exc:
                outcome.append(str(exc.reason))
    results.put(outcome)


def test_two_processes_racing_for_each_token_get_exactly_one_success_each(
    store: PostgresStore, pg_url: str, pg_password: str
) -> None:
    tokens = []
    for _ in range(40):
        _, token_id, secret_hash = new_token()
        store.add_token(token_id, secret_hash, ALICE, T0, T0 + timedelta(minutes=10))
        tokens.append((token_id, secret_hash))
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_consume_all, args=(pg_url, pg_password, tokens, start, results))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    for index in range(len(tokens)):
        per_token = sorted(outcome[index] for outcome in outcomes)
        assert per_token == ["ok", str(TokenFailure.USED)], index
    assert store.outstanding_tokens(T0) == []


# The pool


def test_connections_opened_under_concurrency_are_reused_not_reopened(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []
    real_connect = store._connect

    def counting_connect() -> psycopg.Connection[tuple[Any, ...]]:
        conn = real_connect()
        opened.append(conn)
        return conn

    monkeypatch.setattr(store, "_connect", counting_connect)
    start = threading.Barrier(8)

    def call() -> None:
        start.wait(timeout=30)
        for _ in range(5):
            store.issued_count()

    for _ in range(3):  # three bursts of 8 concurrent callers
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    # At most one connection per concurrent caller, ever: a burst reuses the last one's
    # (with 4 kept idle, each burst opened and authenticated 4 anew).
    assert 1 <= len(opened) <= 8


# Outages


@pytest.fixture(scope="module")
def own_server() -> Iterator[PgServer]:
    """A server of this module's own, which the outage tests stop and start."""
    with running_postgres() as server:
        yield server


def test_stopped_server_is_unavailable_and_the_same_store_recovers_after_restart(
    own_server: PgServer,
) -> None:
    server = own_server
    url = server.url(server.create_database())
    store = PostgresStore(url, server.password)
    try:
        _, token_id, secret_hash = new_token()
        store.add_token(token_id, secret_hash, ALICE, T0, T0 + timedelta(minutes=10))
        server.stop()
        for call in (
            store.ping,
            store.issued_count,
            lambda: store.consume_token(token_id, secret_hash, T0),
            lambda: PostgresStore(url, server.password),
        ):
            with pytest.raises(StoreUnavailable) as info:
                call()
            message = str(info.value)
            assert f"127.0.0.1:{server.port}/" in message
            assert "is unavailable" in message
            assert server.password not in message
        server.start()
        # No reopening: the store reconnects by itself, and nothing was half-done.
        store.ping()
        assert store.consume_token(token_id, secret_hash, T0) == ALICE
    finally:
        store.close()
        server.start()  # idempotent when running; leaves the server up for the next test


def test_restart_between_calls_is_invisible_to_the_next_call(own_server: PgServer) -> None:
    url = own_server.url(own_server.create_database())
    with PostgresStore(url, own_server.password) as store:
        _, token_id, secret_hash = new_token()
        store.add_token(token_id, secret_hash, ALICE, T0, T0 + timedelta(minutes=10))
        store.revoke(T0, spiffe_id=BOB)  # leaves an idle pooled connection behind
        # The pooled connection dies with the old server; the store retries on a new one,
        # for a read and for a write transaction alike.
        own_server.stop()
        own_server.start()
        assert store.is_revoked(BOB, 1)
        own_server.stop()
        own_server.start()
        assert store.consume_token(token_id, secret_hash, T0) == ALICE
        with pytest.raises(TokenError, match="used"):
            store.consume_token(token_id, secret_hash, T0)


def test_wrong_password_is_unavailable_and_not_echoed(pg_url: str) -> None:
    wrong = "not-the-password-xyzzy"
    with pytest.raises(StoreUnavailable, match="password authentication failed") as info:
        PostgresStore(pg_url, wrong)
    assert wrong not in str(info.value)


def test_password_in_the_url_is_refused_without_repeating_it(pg_server: PgServer) -> None:
    url = pg_server.url().replace("meshgate@", "meshgate:hunter2secret@")
    with pytest.raises(StoreError, match="password_env or password_file") as info:
        PostgresStore(url)
    assert "hunter2secret" not in str(info.value)
    assert "hunter2secret" not in repr(info.value.__cause__)


# Schema versions


def test_migrate_is_idempotent_and_records_each_step(pg_url: str, pg_password: str) -> None:
    with _connect(pg_url, pg_password) as conn:
        first = migrate(conn)
        second = migrate(conn)
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert (first.from_version, first.to_version) == (0, LATEST_VERSION)
    assert (second.from_version, second.to_version, second.applied) == (
        LATEST_VERSION,
        LATEST_VERSION,
        0,
    )
    assert [v[0] for v in versions] == list(range(1, LATEST_VERSION + 1))


def test_replicas_migrating_at_once_apply_each_step_once(pg_url: str, pg_password: str) -> None:
    barrier = threading.Barrier(4)
    applied: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with _connect(pg_url, pg_password) as conn:
                barrier.wait()
                applied.append(migrate(conn).applied)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(applied) == [0, 0, 0, LATEST_VERSION]


def test_newer_schema_version_is_refused_and_left_alone(
    store: PostgresStore, pg_url: str, pg_password: str
) -> None:
    newer = LATEST_VERSION + 5
    with _connect(pg_url, pg_password) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, description) VALUES (%s, 'from the future')",
            (newer,),
        )
    for migrate_on_open in (True, False):
        with pytest.raises(SchemaVersionError, match=f"version {newer}, newer than") as info:
            PostgresStore(pg_url, pg_password, migrate=migrate_on_open)
        assert isinstance(info.value, StoreUnavailable)
    with _connect(pg_url, pg_password) as conn:
        with pytest.raises(SchemaVersionError):
            migrate(conn)
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    assert row is not None
    assert row[0] == newer


def test_unmigrated_database_without_migrate_names_the_command(
    pg_url: str, pg_password: str
) -> None:
    with pytest.raises(SchemaVersionError, match="mesh-ca db migrate"):
        PostgresStore(pg_url, pg_password, migrate=False)


def test_secret_is_stored_only_as_its_hash(
    store: PostgresStore, pg_url: str, pg_password: str
) -> None:
    text, token_id, secret_hash = new_token()
    store.add_token(token_id, secret_hash, ALICE, T0, T0 + timedelta(minutes=10))
    secret = text.split(".", 1)[1]
    with _connect(pg_url, pg_password) as conn:
        row = conn.execute("SELECT row_to_json(t)::text FROM join_tokens t").fetchone()
        raw = conn.execute("SELECT secret_hash FROM join_tokens").fetchone()
    assert row is not None
    assert raw is not None
    assert secret not in row[0]
    assert bytes(raw[0]) == secret_hash


# Config and CLI


def _ca_dir(tmp_path: Path, store_lines: str) -> Path:
    directory = tmp_path / "ca"
    assert mesh_ca_main(["init", "--trust-domain", "example.org", "--dir", str(directory)]) == 0
    config = directory / "ca.toml"
    text = config.read_text()
    assert '[store]\nkind = "sqlite"\n' in text
    config.write_text(text.replace('[store]\nkind = "sqlite"\n', f"[store]\n{store_lines}\n"))
    return directory


def test_db_migrate_command_is_idempotent_and_serve_config_opens_the_store(
    tmp_path: Path,
    pg_url: str,
    pg_password: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = _ca_dir(
        tmp_path, f'kind = "postgres"\nurl = "{pg_url}"\npassword_env = "MESH_TEST_PG_PASSWORD"'
    )
    capsys.readouterr()
    monkeypatch.setenv("MESH_TEST_PG_PASSWORD", pg_password)
    assert mesh_ca_main(["db", "migrate", "--dir", str(directory)]) == 0
    assert f"migrated from version 0 to {LATEST_VERSION}" in capsys.readouterr().out
    assert mesh_ca_main(["db", "migrate", "--dir", str(directory)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (
        mesh_ca_main(["token", "create", "--dir", str(directory), "--spiffe-id", str(ALICE)]) == 0
    )
    out, err = capsys.readouterr()
    assert pg_password not in out + err
    with PostgresStore(pg_url, pg_password) as store:
        assert [t.spiffe_id for t in store.outstanding_tokens(T0 - timedelta(days=3650))] == [ALICE]


def test_db_migrate_without_the_password_names_the_key(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _ca_dir(
        tmp_path, f'kind = "postgres"\nurl = "{pg_url}"\npassword_env = "MESH_TEST_PG_UNSET"'
    )
    capsys.readouterr()
    os.environ.pop("MESH_TEST_PG_UNSET", None)
    assert mesh_ca_main(["db", "migrate", "--dir", str(directory)]) == 1
    err = capsys.readouterr().err
    assert "store.password_env" in err
    assert "MESH_TEST_PG_UNSET" in err


def test_password_file_is_read_and_must_be_private(
    tmp_path: Path, pg_url: str, pg_password: str
) -> None:
    secret_file = tmp_path / "pg-password"
    secret_file.write_text(pg_password + "\n")
    secret_file.chmod(0o644)
    config = StoreConfig(kind="postgres", url=pg_url, password_file=str(secret_file))
    with pytest.raises(ConfigError, match=r"store\.password_file: .* readable by others") as info:
        store_password(config, tmp_path)
    assert pg_password not in str(info.value)
    secret_file.chmod(0o600)
    assert store_password(config, tmp_path) == pg_password
    with open_postgres(config, tmp_path) as store:
        store.ping()
    both = StoreConfig(kind="postgres", url=pg_url, password_file="x", password_env="Y")
    with pytest.raises(ConfigError, match="not both"):
        store_password(both, tmp_path)


class TestPostgresTrustStore(TrustStoreConformance):
    @pytest.fixture
    def store_factory(self, pg_url: str, pg_password: str) -> StoreFactory:
        def factory() -> StateStore:
            return PostgresStore(pg_url, pg_password)

        return factory
