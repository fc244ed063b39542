"""The shared state store: PostgreSQL (psycopg 3), for several CA replicas on one database.

Calls come from `trio.to_thread` worker threads and from several CA processes. Each call
borrows a connection from a small pool (one per call in flight, at most `max_connections`,
all kept for reuse), runs one transaction and gives it back; a connection that failed is
thrown away, so the store reconnects by itself once the server is back. A reused idle
connection that turns out dead before anything was committed is replaced and the call
tried once more (the server restarted meanwhile); a failure during COMMIT is never
retried, because its outcome is unknown.

A token is consumed by one conditional UPDATE (`... WHERE used_at IS NULL AND expires_at >
now`) after a constant-time check of the secret hash: under READ COMMITTED a second
concurrent UPDATE waits for the first, re-reads the row and matches nothing, so across any
number of replicas exactly one consumer succeeds.

Every driver error becomes `StoreUnavailable` (cannot reach the database) or `StoreError`.
The password is passed to libpq apart from the URL, never kept in a message or repr, and
scrubbed from any driver text that might echo it.

Why one module: it is one implementation of the `StateStore` interface
(`mesh_ca/store/base.py`): the connection pool, the retry-once rule and the password
scrubbing wrap every operation, so the operations and the pool live together, beside
`sqlite.py` and read against it. The configuration side (password, driver check) is
already apart in `postgres_config.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, LiteralString, NoReturn, TypeVar, final

import psycopg
import psycopg.errors
from psycopg import conninfo as pg_conninfo
from psycopg.pq import TransactionStatus

from mesh_ca.store.base import (
    IdRevoked,
    IssuedRecord,
    KeyBound,
    Revocation,
    StoreError,
    StoreUnavailable,
    TokenError,
    TokenFailure,
    TokenRecord,
    TokenWrongId,
    check_revoke_target,
    token_refusal,
)
from mesh_ca.store.migrations import MigrationResult, check_version
from mesh_ca.store.migrations import migrate as migrate_schema
from meshgate.errors import StaleConnectionError
from meshgate.identity import SpiffeId

__all__ = ["PostgresStore", "describe_url"]

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS: Final = 5
# Bounds how long a call can hang on a server that stopped answering mid-query.
TCP_USER_TIMEOUT_MS: Final = 10_000
STATEMENT_TIMEOUT_MS: Final = 10_000


def describe_url(url: str) -> str:
    """``user@host:port/dbname`` for messages: never the password, even one in the URL."""
    try:
        params = pg_conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "PostgreSQL (unparsable URL)"
    user = str(params.get("user") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or user or "?")
    return f"PostgreSQL {user + '@' if user else ''}{host}:{port}/{dbname}"


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: the store only takes timezone-aware times")
    return when


def _serial(serial: int) -> Decimal:
    if serial <= 0:
        raise ValueError(f"certificate serial must be positive, got {serial}")
    return Decimal(serial)


def _utc(value: Any) -> datetime:
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


@final
class PostgresStore:
    """`StateStore` on PostgreSQL. Migrates the schema on open unless `migrate=False`.

    `url` is a libpq URL or conninfo string without a password; `password` is given apart
    (from the config's password_env or password_file). Raises `StoreUnavailable` when the
    server cannot be reached, and `SchemaVersionError` for a schema newer than this code.
    """

    def __init__(
        self,
        url: str,
        password: str | None = None,
        *,
        max_connections: int = 16,
        max_idle_connections: int | None = None,
        connect_timeout_seconds: int = CONNECT_TIMEOUT_SECONDS,
        migrate: bool = True,
    ) -> None:
        self.where = describe_url(url)
        try:
            params = pg_conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            # The driver's message quotes the URL, which may hold a password: not repeated.
            raise StoreError(f"{self.where}: not a valid PostgreSQL URL or conninfo") from None
        if params.get("password"):
            raise StoreError(
                f"{self.where}: the URL carries a password; give it through password_env "
                "or password_file instead, so it stays out of config files and logs"
            )
        # Our defaults; anything the URL sets wins.
        defaults: dict[str, Any] = {
            "connect_timeout": max(2, connect_timeout_seconds),
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
            "application_name": "mesh-ca",
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c TimeZone=UTC",
        }
        self._params: dict[str, Any] = {**defaults, **params}
        self._password = password or None
        # Every connection the pool opened is kept (up to max_connections): with only a few
        # kept, concurrent calls beyond them connected and authenticated anew each time
        # (SCRAM costs milliseconds of CPU), which tripled the CPU of an issuance.
        self._max_idle = max_connections if max_idle_connections is None else max_idle_connections
        # Calls beyond this wait for a connection: replicas x max_connections must stay
        # under the server's max_connections (100 by default).
        self._slots = threading.BoundedSemaphore(max_connections)
        self._slot_timeout = float(max(2, connect_timeout_seconds))
        self._idle: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.migration: MigrationResult | None = None
        try:
            if migrate:
                self.migration = self._with_connection(
                    lambda conn: migrate_schema(conn, self.where)
                )
            else:
                self._with_connection(lambda conn: check_version(conn, self.where))
        except BaseException:
            self.close()  # no pooled connection outlives a store that failed to open
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    # Connections

    def _scrub(self, text: str) -> str:
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        detail = self._scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        kind = type(exc).__name__
        return StoreUnavailable(f"{self.where} is unavailable: {detail or kind}")

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.Connection.connect(
                autocommit=True, password=self._password, **self._params
            )
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None  # libpq's text is in the message

    def _take(self) -> tuple[psycopg.Connection[tuple[Any, ...]], bool]:
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.where}: the store is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, True
        return self._connect(), False

    def _give_back(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        healthy = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _drop_idle(self) -> None:
        """After one dead connection the others are likely dead too (server restart)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _with_connection(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """Run `fn` on a pooled connection; `fn` manages its own transaction."""
        if not self._slots.acquire(timeout=self._slot_timeout):
            raise StoreUnavailable(f"{self.where}: every connection stayed busy; try again")
        try:
            return self._on_connection(fn)
        finally:
            self._slots.release()

    def _on_connection(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        conn, _ = self._take()
        try:
            result = fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            conn.close()
            self._drop_idle()
            raise self._unavailable(exc) from exc
        except psycopg.Error as exc:
            self._give_back(conn)
            raise StoreError(f"{self.where}: {self._scrub(str(exc))}") from exc
        except BaseException:
            self._give_back(conn)
            raise
        self._give_back(conn)
        return result

    def _transaction(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """Run `fn` in one transaction: whole or not at all. Driver errors are translated."""
        try:
            return self._with_connection(lambda conn: self._attempt(conn, fn, first=True))
        except StaleConnectionError:
            return self._with_connection(lambda conn: self._attempt(conn, fn, first=False))

    def _read(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """Run `fn`, one statement, outside BEGIN/COMMIT: one round trip, not three.

        A single statement is atomic on its own. A read is always safe to retry; a write
        passed here must be one whose retry cannot duplicate (`record_renewal`: unique serial).
        """
        try:
            return self._with_connection(lambda conn: self._attempt_read(conn, fn, first=True))
        except StaleConnectionError:
            return self._with_connection(lambda conn: self._attempt_read(conn, fn, first=False))

    @contextmanager
    def _duplicate_is(self, what: str) -> Iterator[None]:
        """A unique-key violation inside becomes a `StoreError` saying `what` was duplicated
        (the driver's text names a constraint, not the caller's value)."""
        try:
            yield
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise StoreError(f"{self.where}: {what}") from exc
            raise

    def _stale(self, conn: psycopg.Connection[tuple[Any, ...]], exc: Exception) -> NoReturn:
        """`conn` died under us: drop it and the idle ones, and let the caller retry once."""
        conn.close()
        self._drop_idle()
        raise StaleConnectionError from exc

    def _attempt(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T],
        *,
        first: bool,
    ) -> T:
        committing = False
        try:
            with conn.transaction():
                result = fn(conn)
                committing = True
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if first and not committing and conn.closed:
                self._stale(conn, exc)  # nothing was committed: safe to run again
            raise
        return result

    def _attempt_read(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T],
        *,
        first: bool,
    ) -> T:
        try:
            return fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if first and conn.closed:
                self._stale(conn, exc)
            raise

    # Tokens

    def add_token(
        self,
        token_id: str,
        secret_hash: bytes,
        spiffe_id: SpiffeId,
        created_at: datetime,
        expires_at: datetime,
    ) -> None:
        if _aware(expires_at) <= _aware(created_at):
            raise ValueError("token expires_at must be after created_at")

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute(
                "INSERT INTO join_tokens"
                " (token_id, secret_hash, spiffe_id, created_at, expires_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (token_id, secret_hash, str(spiffe_id), created_at, expires_at),
            )

        with self._duplicate_is(f"token id {token_id!r} already exists"):
            self._transaction(run)

    def consume_token(self, token_id: str, secret_hash: bytes, now: datetime) -> SpiffeId:
        """Mark the token used and return its bound ID, or raise `TokenError`. Atomic.

        A wrong secret reads as UNKNOWN, the same as an unknown id, so a caller without the
        secret learns nothing about the token and cannot burn it. Fails closed.
        """
        _aware(now)

        outcome = self._transaction(lambda conn: _consume(conn, token_id, secret_hash, now))
        if isinstance(outcome, TokenFailure):
            raise TokenError(outcome)
        return outcome[0]

    def redeem_token(
        self,
        token_id: str,
        secret_hash: bytes,
        now: datetime,
        issue: Callable[[SpiffeId], IssuedRecord],
        *,
        expected: SpiffeId | None = None,
    ) -> IssuedRecord:
        """Consume, check the bound ID and its revocation, sign (`issue`) and record in one
        transaction. Fails closed.

        The token's row stays locked by the UPDATE until COMMIT, so a concurrent redeemer on
        another replica waits and then finds it used.
        """
        _aware(now)

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> IssuedRecord | TokenFailure:
            consumed = _consume(conn, token_id, secret_hash, now, with_revoked=True)
            if isinstance(consumed, TokenFailure):
                return consumed  # nothing was changed; COMMIT of nothing
            outcome, revoked = consumed
            if expected is not None and outcome != expected:
                raise TokenWrongId(outcome, expected)  # rolls the consume back
            if revoked:
                raise IdRevoked(outcome)  # rolls the consume back
            record = issue(outcome)
            _bind_key(conn, record)
            conn.execute(_INSERT_ISSUED, _issued_params(record))
            return record

        with self._duplicate_is("that serial is already in the ledger"):
            result = self._transaction(run)
        if isinstance(result, TokenFailure):
            raise TokenError(result)
        return result

    def outstanding_tokens(self, now: datetime) -> Sequence[TokenRecord]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT token_id, spiffe_id, created_at, expires_at FROM join_tokens"
                " WHERE used_at IS NULL AND expires_at > %s ORDER BY created_at, token_id",
                (_aware(now),),
            ).fetchall()
        )
        return [TokenRecord(r[0], SpiffeId.parse(r[1]), _utc(r[2]), _utc(r[3])) for r in rows]

    # Ledger

    def record_issued(self, record: IssuedRecord) -> None:
        params = _issued_params(record)

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            _bind_key(conn, record)
            conn.execute(_INSERT_ISSUED, params)

        with self._duplicate_is(f"serial {record.serial:x} is already in the ledger"):
            self._transaction(run)

    def record_renewal(self, record: IssuedRecord, current_serial: int) -> None:
        """One conditional INSERT outside BEGIN/COMMIT (atomic on its own): one round trip,
        the key binding included (a data-modifying CTE: the row is written only if the key
        is bound to this ID; a revoked renewal may leave the key bound to its own ID, which
        already held it).

        A retry after a dropped connection may meet its own earlier row (the serial is
        unique): then it fails, never duplicates.
        """
        params = (*_issued_params(record), str(record.spiffe_id), _serial(current_serial))

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[int, str | None]:
            if not record.key_sha256:
                inserted = conn.execute(
                    "INSERT INTO issued_certificates"
                    " (serial, spiffe_id, kind, issued_at, not_after, replica)"
                    " SELECT %s, %s, %s, %s, %s, %s WHERE NOT EXISTS"
                    " (SELECT 1 FROM revocations WHERE spiffe_id = %s OR serial = %s)",
                    params,
                ).rowcount
                return inserted, None
            row = conn.execute(
                "WITH bind AS ("
                " INSERT INTO key_bindings (key_sha256, spiffe_id) VALUES (%s, %s)"
                " ON CONFLICT (key_sha256) DO UPDATE SET spiffe_id = key_bindings.spiffe_id"
                " RETURNING spiffe_id),"
                " ins AS ("
                " INSERT INTO issued_certificates"
                " (serial, spiffe_id, kind, issued_at, not_after, replica)"
                " SELECT %s, %s, %s, %s, %s, %s WHERE NOT EXISTS"
                " (SELECT 1 FROM revocations WHERE spiffe_id = %s OR serial = %s)"
                " AND (SELECT spiffe_id FROM bind) = %s"
                " RETURNING 1)"
                " SELECT (SELECT count(*) FROM ins), (SELECT spiffe_id FROM bind)",
                (record.key_sha256, str(record.spiffe_id), *params, str(record.spiffe_id)),
            ).fetchone()
            assert row is not None
            return int(row[0]), row[1]

        with self._duplicate_is(f"serial {record.serial:x} is already in the ledger"):
            inserted, bound_to = self._read(run)
        if bound_to is not None and bound_to != str(record.spiffe_id):
            raise KeyBound(record.spiffe_id, SpiffeId.parse(bound_to))
        if inserted != 1:
            raise IdRevoked(record.spiffe_id)

    def issued_serial(self, serial: int) -> IssuedRecord | None:
        row = self._read(
            lambda conn: conn.execute(
                "SELECT serial, spiffe_id, kind, issued_at, not_after, replica"
                " FROM issued_certificates WHERE serial = %s",
                (_serial(serial),),
            ).fetchone()
        )
        if row is None:
            return None
        r = row
        return IssuedRecord(int(r[0]), SpiffeId.parse(r[1]), r[2], _utc(r[3]), _utc(r[4]), r[5])

    def issued(self, spiffe_id: SpiffeId | None = None, limit: int = 100) -> Sequence[IssuedRecord]:
        """Most recent first."""
        # Two fixed statements rather than "id IS NULL OR ...": each keeps an index plan.
        if spiffe_id is None:
            query: LiteralString = (
                "SELECT serial, spiffe_id, kind, issued_at, not_after, replica"
                " FROM issued_certificates ORDER BY issued_at DESC, seq DESC LIMIT %(limit)s"
            )
        else:
            query = (
                "SELECT serial, spiffe_id, kind, issued_at, not_after, replica"
                " FROM issued_certificates WHERE spiffe_id = %(id)s"
                " ORDER BY issued_at DESC, seq DESC LIMIT %(limit)s"
            )
        params = {"id": str(spiffe_id), "limit": max(0, limit)}
        rows = self._read(lambda conn: conn.execute(query, params).fetchall())
        return [
            IssuedRecord(int(r[0]), SpiffeId.parse(r[1]), r[2], _utc(r[3]), _utc(r[4]), r[5])
            for r in rows
        ]

    def issued_count(self) -> int:
        row = self._read(
            lambda conn: conn.execute("SELECT count(*) FROM issued_certificates").fetchone()
        )
        return int(row[0]) if row else 0

    # Revocations

    def revoke(
        self,
        now: datetime,
        *,
        spiffe_id: SpiffeId | None = None,
        serial: int | None = None,
        reason: str = "",
    ) -> Revocation:
        """Revoke an ID (all its certificates) or one serial; revoking again keeps the first."""
        check_revoke_target(spiffe_id, serial)
        sid = str(spiffe_id) if spiffe_id is not None else None
        ser = _serial(serial) if serial is not None else None
        _aware(now)

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[Any, ...] | None:
            conn.execute(
                "INSERT INTO revocations (spiffe_id, serial, revoked_at, reason)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (sid, ser, now, reason),
            )
            return conn.execute(
                "SELECT spiffe_id, serial, revoked_at, reason FROM revocations"
                " WHERE spiffe_id = %s OR serial = %s",
                (sid, ser),
            ).fetchone()

        row = self._transaction(run)
        assert row is not None  # inserted or already there, in this transaction
        return _revocation(row)

    def revocations(self) -> Sequence[Revocation]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT spiffe_id, serial, revoked_at, reason FROM revocations ORDER BY seq"
            ).fetchall()
        )
        return [_revocation(r) for r in rows]

    def is_revoked(self, spiffe_id: SpiffeId, serial: int) -> bool:
        row = self._read(
            lambda conn: conn.execute(
                "SELECT EXISTS (SELECT 1 FROM revocations WHERE spiffe_id = %s OR serial = %s)",
                (str(spiffe_id), _serial(serial)),
            ).fetchone()
        )
        return bool(row and row[0])

    # Lifecycle

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""
        try:
            self._read(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_INSERT_ISSUED: Final = (
    "INSERT INTO issued_certificates (serial, spiffe_id, kind, issued_at, not_after, replica)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)


def _issued_params(record: IssuedRecord) -> tuple[Any, ...]:
    return (
        _serial(record.serial),
        str(record.spiffe_id),
        record.kind,
        _aware(record.issued_at),
        _aware(record.not_after),
        record.replica,
    )


def _bind_key(conn: psycopg.Connection[tuple[Any, ...]], record: IssuedRecord) -> None:
    """Bind the record's key to its ID, or raise `KeyBound` if another ID holds it. The
    no-op update on conflict locks and returns the holding row, so a concurrent binder of
    the same key waits for this transaction and then sees its ID."""
    if not record.key_sha256:
        return
    row = conn.execute(
        "INSERT INTO key_bindings (key_sha256, spiffe_id) VALUES (%s, %s)"
        " ON CONFLICT (key_sha256) DO UPDATE SET spiffe_id = key_bindings.spiffe_id"
        " RETURNING spiffe_id",
        (record.key_sha256, str(record.spiffe_id)),
    ).fetchone()
    if row is None or row[0] != str(record.spiffe_id):
        bound_to = SpiffeId.parse(row[0]) if row is not None else record.spiffe_id
        raise KeyBound(record.spiffe_id, bound_to)


def _consume(
    conn: psycopg.Connection[tuple[Any, ...]],
    token_id: str,
    secret_hash: bytes,
    now: datetime,
    *,
    with_revoked: bool = False,
) -> tuple[SpiffeId, bool] | TokenFailure:
    """Mark the token used inside the caller's transaction, or say why it cannot be.

    Returns the bound ID and, when `with_revoked`, whether that ID is revoked (read by the
    same UPDATE: one round trip less for bootstrap).
    """
    row = conn.execute(
        "SELECT secret_hash, spiffe_id, expires_at, used_at FROM join_tokens WHERE token_id = %s",
        (token_id,),
    ).fetchone()
    refusal = token_refusal(row, secret_hash, now)
    if refusal is not None:
        return refusal
    # The race is decided here: of concurrent consumers, one UPDATE matches.
    if with_revoked:
        won = conn.execute(
            "UPDATE join_tokens SET used_at = %s"
            " WHERE token_id = %s AND used_at IS NULL AND expires_at > %s"
            " RETURNING spiffe_id, EXISTS (SELECT 1 FROM revocations r"
            " WHERE r.spiffe_id = join_tokens.spiffe_id)",
            (now, token_id, now),
        ).fetchone()
    else:
        won = conn.execute(
            "UPDATE join_tokens SET used_at = %s"
            " WHERE token_id = %s AND used_at IS NULL AND expires_at > %s"
            " RETURNING spiffe_id, false",
            (now, token_id, now),
        ).fetchone()
    if won is None:
        return TokenFailure.USED
    return SpiffeId.parse(won[0]), bool(won[1])


def _revocation(row: tuple[Any, ...]) -> Revocation:
    return Revocation(
        SpiffeId.parse(row[0]) if row[0] is not None else None,
        int(row[1]) if row[1] is not None else None,
        _utc(row[2]),
        row[3],
    )
