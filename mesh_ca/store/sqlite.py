"""The embedded state store: one SQLite file in the CA directory (WAL mode).

Safe from several threads (trio shells call it via `trio.to_thread.run_sync`) and several
processes: one connection per store guarded by a lock, WAL so readers never block the
writer, and a busy timeout so concurrent writers wait instead of failing. `group()` lets
the CA server commit the store steps of several concurrent requests at once (group
commit). A token is consumed by one conditional UPDATE (`... WHERE used_at IS NULL AND
expires_at > now`), so of many concurrent consumers in any number of processes exactly one
sees a changed row.

Times are stored as integer microseconds since the epoch (UTC); serials as lowercase hex,
because X.509 serials (up to 159 bits) do not fit SQLite's 64-bit integers.

Why one module: it is one implementation of the `StateStore` interface
(`mesh_ca/store/base.py`), one method per store operation over one connection, lock and
group-commit transaction; splitting operations apart would split that shared state. It
reads best beside `postgres.py`, the other implementation, operation for operation.
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, final

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
from meshgate.identity import SpiffeId

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

SCHEMA_VERSION: Final = 3  # 2: key_bindings, 3: control plane (store/control_sqlite.py)
BUSY_TIMEOUT_SECONDS: Final = 10.0
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id    TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    spiffe_id   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE TABLE IF NOT EXISTS issued (
    serial      TEXT PRIMARY KEY,
    spiffe_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    replica     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS issued_by_id ON issued (spiffe_id, issued_at);
CREATE INDEX IF NOT EXISTS issued_by_time ON issued (issued_at);
CREATE TABLE IF NOT EXISTS revocations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    spiffe_id   TEXT UNIQUE,
    serial      TEXT UNIQUE,
    revoked_at  INTEGER NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    CHECK ((spiffe_id IS NULL) <> (serial IS NULL))
);
CREATE TABLE IF NOT EXISTS key_bindings (
    key_sha256  BLOB PRIMARY KEY,
    spiffe_id   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS control_registrations (
    service     TEXT NOT NULL,
    spiffe_id   TEXT NOT NULL,
    address     TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (service, spiffe_id, address)
);
CREATE INDEX IF NOT EXISTS control_registrations_by_id ON control_registrations (spiffe_id);
CREATE INDEX IF NOT EXISTS control_registrations_by_expiry ON control_registrations (expires_at);
CREATE TABLE IF NOT EXISTS control_services (
    service     TEXT PRIMARY KEY,
    version     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS control_policies (
    version      INTEGER PRIMARY KEY,
    sha256       TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    files        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS control_enforcement (
    spiffe_id   TEXT NOT NULL,
    service     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (spiffe_id, service)
);
"""


def _open_failure(path: Path, exc: sqlite3.Error) -> str:
    """Why a state database could not be opened, in the operator's terms: WAL mode creates
    `-wal` and `-shm` files next to the database, so a read-only directory or a full disk
    fails here although the file itself is fine."""
    if not os.access(path.parent, os.W_OK):
        return (
            f"the directory {path.parent} is not writable (SQLite keeps its write-ahead "
            f"log next to the database) ({exc})"
        )
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        return f"the disk is full ({exc})"
    return f"not a usable state database ({exc})"


def _micros(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: the store only takes timezone-aware times")
    return (when - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _serial_text(serial: int) -> str:
    if serial <= 0:
        raise ValueError(f"certificate serial must be positive, got {serial}")
    return format(serial, "x")


@dataclass(slots=True)
class _Group:
    """An open group transaction (`SqliteStore.group`)."""

    durable: bool
    broken: sqlite3.Error | None = None  # a database error inside: the group rolls back


@final
class SqliteStore:
    """`StateStore` on a SQLite file. Creates the file (mode 0600) and schema if missing."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # Reentrant: the thread holding an open `group()` makes its store calls under it.
        self._lock = threading.RLock()
        self._closed = False
        self._group: _Group | None = None
        self._synchronous_full = True
        try:
            if not self.path.exists():
                # Hashes only, but still nobody else's business: 0600 from the first byte.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            self._conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"{self.path}: cannot open the state database ({exc})") from exc
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._synchronous_full = True
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreUnavailable(f"{self.path}: {_open_failure(self.path, exc)}") from exc
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        with self._transaction() as cur:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"{self.path}: schema version {version} is newer than this meshgate "
                    f"understands ({SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                # Every statement is IF NOT EXISTS: older files gain the new tables, an empty
                # file gets the whole schema.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _synchronous(self, cur: sqlite3.Cursor, durable: bool) -> None:
        # SQLite refuses to change the sync level inside a transaction: set it before BEGIN.
        if durable != self._synchronous_full:
            cur.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._synchronous_full = durable

    @contextmanager
    def _transaction(self, *, write: bool = True, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        """One transaction under the lock: whole or not at all. Driver errors are translated.

        `durable` writes (token consumption, revocations) commit with synchronous=FULL: with
        NORMAL a power loss can drop the last commits, and with them a consumed token's
        used_at, so the token could be redeemed twice. Ledger-only writes (renewals, offline
        issuance) use NORMAL: losing one to a power cut is an audit gap, not a security one
        (revocation does not depend on the ledger), and it saves an fsync per renewal.
        Inside an open `group()` the call is a savepoint of the group's transaction instead.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: the store is closed")
            if self._group is not None:
                with self._step(self._group, write=write, durable=durable) as cur:
                    yield cur
                return
            cur = self._conn.cursor()
            try:
                if write:
                    self._synchronous(cur, durable)
                # IMMEDIATE takes the write lock up front, so a read-then-write cannot be
                # interleaved with another process's write.
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield cur
                except BaseException:
                    self._conn.rollback()
                    raise
                cur.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: database error ({exc})") from exc
            finally:
                cur.close()

    @contextmanager
    def group(self, *, durable: bool) -> Iterator[None]:
        """Group commit: the store calls this thread makes inside share one transaction and
        one COMMIT (one fsync for many issuances instead of one each).

        Each write call inside is a savepoint: one that fails (a used token, a revoked ID, a
        duplicate serial) rolls back alone and raises as it would outside, the others stand.
        Nothing is visible or durable before the group's COMMIT; if that fails, none of it
        is, and the group raises `StoreUnavailable`, so its callers must answer every call
        made inside as failed. `durable` must be true if any call inside is a durable write
        (SQLite cannot change its sync level inside a transaction); a durable write in a
        non-durable group is refused. Fails closed: a database error inside breaks the
        group, and every later call and the group itself raise `StoreUnavailable`. Other
        threads' calls wait for the group to end.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: the store is closed")
            if self._group is not None:
                raise StoreError(f"{self.path}: store groups do not nest")
            group = _Group(durable)
            cur = self._conn.cursor()
            try:
                try:
                    self._synchronous(cur, durable)
                    cur.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StoreUnavailable(f"{self.path}: database error ({exc})") from exc
                self._group = group
                try:
                    yield
                    if group.broken is not None:
                        raise StoreUnavailable(
                            f"{self.path}: database error ({group.broken})"
                        ) from group.broken
                    cur.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._rollback_quietly()
                    raise StoreUnavailable(f"{self.path}: database error ({exc})") from exc
                except BaseException:
                    self._rollback_quietly()
                    raise
            finally:
                self._group = None
                cur.close()

    @contextmanager
    def _step(self, group: _Group, *, write: bool, durable: bool) -> Iterator[sqlite3.Cursor]:
        """One call inside a group: a savepoint for a write, nothing for a read."""
        if group.broken is not None:
            raise StoreUnavailable(f"{self.path}: database error ({group.broken})")
        if write and durable and not group.durable:
            raise StoreError(f"{self.path}: a durable write inside a non-durable store group")
        cur = self._conn.cursor()
        try:
            if write:
                cur.execute("SAVEPOINT step")
            try:
                yield cur
            except BaseException:
                if write:
                    cur.execute("ROLLBACK TO step")
                    cur.execute("RELEASE step")
                raise
            if write:
                cur.execute("RELEASE step")
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            group.broken = exc
            raise StoreUnavailable(f"{self.path}: database error ({exc})") from exc
        finally:
            cur.close()

    def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.rollback()
        except sqlite3.Error:
            pass  # the connection's state is reported by the next call

    # Tokens

    def add_token(
        self,
        token_id: str,
        secret_hash: bytes,
        spiffe_id: SpiffeId,
        created_at: datetime,
        expires_at: datetime,
    ) -> None:
        if expires_at <= created_at:
            raise ValueError("token expires_at must be after created_at")
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO tokens (token_id, secret_hash, spiffe_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_id, secret_hash, str(spiffe_id), _micros(created_at), _micros(expires_at)),
            )

    def consume_token(self, token_id: str, secret_hash: bytes, now: datetime) -> SpiffeId:
        """Mark the token used and return its bound ID, or raise `TokenError`. Atomic.

        A wrong secret reads as UNKNOWN, the same as an unknown id, so a caller without
        the secret learns nothing about the token. Fails closed.
        """
        at = _micros(now)
        with self._transaction() as cur:
            return _consume(cur, token_id, secret_hash, at)[0]

    def outstanding_tokens(self, now: datetime) -> Sequence[TokenRecord]:
        with self._transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT token_id, spiffe_id, created_at, expires_at FROM tokens"
                " WHERE used_at IS NULL AND expires_at > ? ORDER BY created_at, token_id",
                (_micros(now),),
            ).fetchall()
        return [
            TokenRecord(r[0], SpiffeId.parse(r[1]), _from_micros(r[2]), _from_micros(r[3]))
            for r in rows
        ]

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
        transaction. Fails closed."""
        at = _micros(now)
        with self._transaction() as cur:
            spiffe_id, revoked = _consume(cur, token_id, secret_hash, at)
            if expected is not None and spiffe_id != expected:
                raise TokenWrongId(spiffe_id, expected)  # rolls the consume back
            if revoked:
                raise IdRevoked(spiffe_id)  # rolls the consume back
            record = issue(spiffe_id)
            _bind_key(cur, record)
            cur.execute(_INSERT_ISSUED, _issued_row(record))
        return record

    # Ledger

    def record_issued(self, record: IssuedRecord) -> None:
        with self._transaction(durable=False) as cur:
            _bind_key(cur, record)
            cur.execute(_INSERT_ISSUED, _issued_row(record))

    def record_renewal(self, record: IssuedRecord, current_serial: int) -> None:
        """Insert the row unless the ID or the current serial is revoked: one statement."""
        with self._transaction(durable=False) as cur:
            cur.execute(
                "INSERT INTO issued (serial, spiffe_id, kind, issued_at, not_after, replica)"
                " SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
                " (SELECT 1 FROM revocations WHERE spiffe_id = ? OR serial = ?)",
                (*_issued_row(record), str(record.spiffe_id), _serial_text(current_serial)),
            )
            if cur.rowcount != 1:
                raise IdRevoked(record.spiffe_id)
            _bind_key(cur, record)  # raising rolls the row back

    def issued_serial(self, serial: int) -> IssuedRecord | None:
        with self._transaction(write=False) as cur:
            r = cur.execute(
                "SELECT serial, spiffe_id, kind, issued_at, not_after, replica FROM issued"
                " WHERE serial = ?",
                (_serial_text(serial),),
            ).fetchone()
        if r is None:
            return None
        return IssuedRecord(
            int(r[0], 16), SpiffeId.parse(r[1]), r[2], _from_micros(r[3]), _from_micros(r[4]), r[5]
        )

    def issued(self, spiffe_id: SpiffeId | None = None, limit: int = 100) -> Sequence[IssuedRecord]:
        """Most recent first."""
        query = "SELECT serial, spiffe_id, kind, issued_at, not_after, replica FROM issued"
        params: list[Any] = []
        if spiffe_id is not None:
            query += " WHERE spiffe_id = ?"
            params.append(str(spiffe_id))
        query += " ORDER BY issued_at DESC, rowid DESC LIMIT ?"
        params.append(max(0, limit))
        with self._transaction(write=False) as cur:
            rows = cur.execute(query, params).fetchall()
        return [
            IssuedRecord(
                int(r[0], 16),
                SpiffeId.parse(r[1]),
                r[2],
                _from_micros(r[3]),
                _from_micros(r[4]),
                r[5],
            )
            for r in rows
        ]

    def issued_count(self) -> int:
        with self._transaction(write=False) as cur:
            return int(cur.execute("SELECT COUNT(*) FROM issued").fetchone()[0])

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
        ser = _serial_text(serial) if serial is not None else None
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO revocations (spiffe_id, serial, revoked_at, reason)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (sid, ser, _micros(now), reason),
            )
            column, value = ("spiffe_id", sid) if sid is not None else ("serial", ser)
            row = cur.execute(
                f"SELECT spiffe_id, serial, revoked_at, reason FROM revocations"  # noqa: S608 - column is one of two literals
                f" WHERE {column} = ?",
                (value,),
            ).fetchone()
        return _revocation(row)

    def revocations(self) -> Sequence[Revocation]:
        with self._transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT spiffe_id, serial, revoked_at, reason FROM revocations ORDER BY id"
            ).fetchall()
        return [_revocation(r) for r in rows]

    def is_revoked(self, spiffe_id: SpiffeId, serial: int) -> bool:
        with self._transaction(write=False) as cur:
            row = cur.execute(
                "SELECT 1 FROM revocations WHERE spiffe_id = ? OR serial = ? LIMIT 1",
                (str(spiffe_id), _serial_text(serial)),
            ).fetchone()
        return row is not None

    # Lifecycle

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""
        try:
            with self._transaction(write=False) as cur:
                cur.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_INSERT_ISSUED: Final = (
    "INSERT INTO issued (serial, spiffe_id, kind, issued_at, not_after, replica)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def _issued_row(record: IssuedRecord) -> tuple[str, str, str, int, int, str]:
    return (
        _serial_text(record.serial),
        str(record.spiffe_id),
        record.kind,
        _micros(record.issued_at),
        _micros(record.not_after),
        record.replica,
    )


def _bind_key(cur: sqlite3.Cursor, record: IssuedRecord) -> None:
    """Bind the record's key to its ID, or raise `KeyBound` if another ID holds it. Runs in
    the caller's write transaction (BEGIN IMMEDIATE: no other writer in between)."""
    if not record.key_sha256:
        return
    # A no-op update on conflict returns the row that holds the key: one statement.
    row = cur.execute(
        "INSERT INTO key_bindings (key_sha256, spiffe_id) VALUES (?, ?)"
        " ON CONFLICT (key_sha256) DO UPDATE SET spiffe_id = key_bindings.spiffe_id"
        " RETURNING spiffe_id",
        (record.key_sha256, str(record.spiffe_id)),
    ).fetchone()
    if row[0] != str(record.spiffe_id):
        raise KeyBound(record.spiffe_id, SpiffeId.parse(row[0]))


# The bootstrap fast path in one statement: consume the token if it is unused and unexpired,
# and return its secret hash (compared in Python, in constant time), bound ID and whether
# that ID is revoked. A wrong secret rolls the whole transaction back.
_CONSUME: Final = (
    "UPDATE tokens SET used_at = ?1 WHERE token_id = ?2 AND used_at IS NULL AND expires_at > ?1"
    " RETURNING secret_hash, spiffe_id,"
    " EXISTS (SELECT 1 FROM revocations WHERE revocations.spiffe_id = tokens.spiffe_id)"
)
_ROW_BY_ID: Final = (
    "SELECT secret_hash, spiffe_id, expires_at, used_at FROM tokens WHERE token_id = ?"
)


def _consume(
    cur: sqlite3.Cursor, token_id: str, secret_hash: bytes, at: int
) -> tuple[SpiffeId, bool]:
    """Mark the token used inside the caller's write transaction: (bound ID, ID revoked).

    Raises `TokenError` (the caller's transaction then rolls back, so a token used with a
    wrong secret stays unused). Fails closed.
    """
    row = cur.execute(_CONSUME, (at, token_id)).fetchone()
    if row is not None and hmac.compare_digest(bytes(row[0]), secret_hash):
        return SpiffeId.parse(row[1]), bool(row[2])
    if row is not None:
        raise TokenError(TokenFailure.UNKNOWN)  # wrong secret: the same as an unknown id
    # Refused: say why (unknown, used or expired) from the untouched row.
    refusal = token_refusal(cur.execute(_ROW_BY_ID, (token_id,)).fetchone(), secret_hash, at)
    raise TokenError(refusal or TokenFailure.USED)


def _revocation(row: tuple[Any, ...]) -> Revocation:
    return Revocation(
        SpiffeId.parse(row[0]) if row[0] is not None else None,
        int(row[1], 16) if row[1] is not None else None,
        _from_micros(row[2]),
        row[3],
    )
