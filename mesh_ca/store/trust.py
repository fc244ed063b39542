"""The rotation tables of the state store: the trust state, the CA audit log, bundle reports.

Kept apart from the issuance interface (`StateStore`): an adapter over the same SQLite
file or PostgreSQL database, with its own ``CREATE TABLE IF NOT EXISTS`` (under an
advisory lock on PostgreSQL, so replicas starting together create each table once).

- ``trust_state``: one row, the `TrustState` JSON and a version. `save_state` is a
  compare-and-set on the version, so of several replicas attempting one rotation step
  exactly one succeeds; the others see `False` and reload. The audit row of the step is
  written in the same transaction.
- ``ca_audit``: every rotation step (automatic or by an operator), append-only.
- ``bundle_reports``: per SPIFFE ID, the highest ``spiffe_sequence`` a sidecar reported
  holding (authenticated by its SVID), for `mesh-ca root activate`.
- `leaves_until(t)`: the latest notAfter of the leaves issued up to `t` (ledger), not
  counting the CA server's own SVIDs: every replica issues itself a new one from the new
  signer at each trust-state change, so it never presents one of a retired slot.
- `active_workload_ids(now)`: IDs with an unexpired bootstrap/renew leaf: the sidecars
  that fetch trust material from this CA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, final

from mesh_ca.store.base import StateStore, StoreError
from mesh_ca.store.sqlite import SqliteStore
from meshgate.identity import SpiffeId, SpiffeIdError

__all__ = ["AuditEntry", "TrustStore", "trust_store"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LOCK_KEY: Final = 0x6D657368726F7431  # "meshrot1": table creation across replicas
_AUDIT_TEXT_MAX: Final = 4000

_SQLITE_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS trust_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        document TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS ca_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS bundle_reports (
        spiffe_id TEXT PRIMARY KEY,
        sequence INTEGER NOT NULL,
        seen_at INTEGER NOT NULL
    )""",
)
_PG_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS trust_state (
        id integer PRIMARY KEY CHECK (id = 1),
        version bigint NOT NULL,
        document text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS ca_audit (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at timestamptz NOT NULL,
        actor text NOT NULL,
        action text NOT NULL,
        detail text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS bundle_reports (
        spiffe_id text PRIMARY KEY,
        sequence bigint NOT NULL,
        seen_at timestamptz NOT NULL
    )""",
)


@final
@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str  # "replica NAME (automatic)", "operator USER"
    action: str  # "intermediate prepare", "root activate --force", ...
    detail: str


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _clip(text: str) -> str:
    return text[:_AUDIT_TEXT_MAX]


class TrustStore:
    """The rotation tables over an open `StateStore` (SQLite or PostgreSQL)."""

    def load_state(self) -> tuple[int, str] | None:
        """(version, document), or None before the first save."""
        raise NotImplementedError

    def save_state(self, expected_version: int, document: str, entry: AuditEntry) -> bool:
        """Write `document` as version `expected_version + 1` if the stored version is still
        `expected_version` (0: none stored yet), with its audit row; False if another
        writer got there first (nothing written)."""
        raise NotImplementedError

    def audit(self, limit: int = 50) -> Sequence[AuditEntry]:
        """Most recent first."""
        raise NotImplementedError

    def report_bundle(self, spiffe_id: SpiffeId, sequence: int, now: datetime) -> None:
        """Record that a sidecar of `spiffe_id` holds trust material at `sequence`."""
        raise NotImplementedError

    def bundle_reports(self) -> dict[SpiffeId, tuple[int, datetime]]:
        raise NotImplementedError

    def leaves_until(self, issued_until: datetime) -> datetime | None:
        raise NotImplementedError

    def active_workload_ids(self, now: datetime) -> set[SpiffeId]:
        raise NotImplementedError


def _ids(rows: Sequence[Sequence[Any]]) -> set[SpiffeId]:
    found: set[SpiffeId] = set()
    for row in rows:
        try:
            found.add(SpiffeId.parse(str(row[0])))
        except SpiffeIdError:
            continue  # a row this code cannot read names no sidecar it can wait for
    return found


@final
class _SqliteTrust(TrustStore):
    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        with store._transaction() as cur:
            for statement in _SQLITE_SCHEMA:
                cur.execute(statement)

    def load_state(self) -> tuple[int, str] | None:
        with self._store._transaction(write=False) as cur:
            row = cur.execute("SELECT version, document FROM trust_state WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def save_state(self, expected_version: int, document: str, entry: AuditEntry) -> bool:
        with self._store._transaction() as cur:
            row = cur.execute("SELECT version FROM trust_state WHERE id = 1").fetchone()
            if (int(row[0]) if row else 0) != expected_version:
                return False
            cur.execute(
                "INSERT INTO trust_state (id, version, document) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
                "document = excluded.document",
                (expected_version + 1, document),
            )
            cur.execute(
                "INSERT INTO ca_audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                (_micros(entry.at), _clip(entry.actor), _clip(entry.action), _clip(entry.detail)),
            )
        return True

    def audit(self, limit: int = 50) -> Sequence[AuditEntry]:
        with self._store._transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT at, actor, action, detail FROM ca_audit ORDER BY id DESC LIMIT ?",
                (max(0, limit),),
            ).fetchall()
        return [AuditEntry(_from_micros(r[0]), r[1], r[2], r[3]) for r in rows]

    def report_bundle(self, spiffe_id: SpiffeId, sequence: int, now: datetime) -> None:
        with self._store._transaction(durable=False) as cur:
            cur.execute(
                "INSERT INTO bundle_reports (spiffe_id, sequence, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (spiffe_id) DO UPDATE SET "
                "sequence = max(sequence, excluded.sequence), seen_at = excluded.seen_at",
                (str(spiffe_id), sequence, _micros(now)),
            )

    def bundle_reports(self) -> dict[SpiffeId, tuple[int, datetime]]:
        with self._store._transaction(write=False) as cur:
            rows = cur.execute("SELECT spiffe_id, sequence, seen_at FROM bundle_reports").fetchall()
        return {spiffe_id: (int(r[1]), _from_micros(r[2])) for r in rows for spiffe_id in _ids([r])}

    def leaves_until(self, issued_until: datetime) -> datetime | None:
        with self._store._transaction(write=False) as cur:
            row = cur.execute(
                "SELECT max(not_after) FROM issued WHERE issued_at <= ? AND kind <> 'ca-server'",
                (_micros(issued_until),),
            ).fetchone()
        return _from_micros(row[0]) if row and row[0] is not None else None

    def active_workload_ids(self, now: datetime) -> set[SpiffeId]:
        with self._store._transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT DISTINCT spiffe_id FROM issued "
                "WHERE not_after > ? AND kind IN ('bootstrap', 'renew')",
                (_micros(now),),
            ).fetchall()
        return _ids(rows)


@final
class _PostgresTrust(TrustStore):
    def __init__(self, store: Any) -> None:
        self._store = store

        def create(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for statement in _PG_SCHEMA:
                conn.execute(statement)

        store._transaction(create)

    def load_state(self) -> tuple[int, str] | None:
        row = self._store._read(
            lambda conn: conn.execute(
                "SELECT version, document FROM trust_state WHERE id = 1"
            ).fetchone()
        )
        return (int(row[0]), str(row[1])) if row else None

    def save_state(self, expected_version: int, document: str, entry: AuditEntry) -> bool:
        def run(conn: Any) -> bool:
            if expected_version == 0:
                done = conn.execute(
                    "INSERT INTO trust_state (id, version, document) VALUES (1, 1, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    (document,),
                ).rowcount
            else:
                done = conn.execute(
                    "UPDATE trust_state SET version = version + 1, document = %s "
                    "WHERE id = 1 AND version = %s",
                    (document, expected_version),
                ).rowcount
            if done != 1:
                return False
            conn.execute(
                "INSERT INTO ca_audit (at, actor, action, detail) VALUES (%s, %s, %s, %s)",
                (entry.at, _clip(entry.actor), _clip(entry.action), _clip(entry.detail)),
            )
            return True

        return bool(self._store._transaction(run))

    def audit(self, limit: int = 50) -> Sequence[AuditEntry]:
        rows = self._store._read(
            lambda conn: conn.execute(
                "SELECT at, actor, action, detail FROM ca_audit ORDER BY seq DESC LIMIT %s",
                (max(0, limit),),
            ).fetchall()
        )
        return [AuditEntry(r[0].astimezone(UTC), r[1], r[2], r[3]) for r in rows]

    def report_bundle(self, spiffe_id: SpiffeId, sequence: int, now: datetime) -> None:
        self._store._read(  # one statement: a retry cannot duplicate
            lambda conn: conn.execute(
                "INSERT INTO bundle_reports (spiffe_id, sequence, seen_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (spiffe_id) DO UPDATE SET sequence = "
                "greatest(bundle_reports.sequence, excluded.sequence), seen_at = excluded.seen_at",
                (str(spiffe_id), sequence, now),
            )
        )

    def bundle_reports(self) -> dict[SpiffeId, tuple[int, datetime]]:
        rows = self._store._read(
            lambda conn: conn.execute(
                "SELECT spiffe_id, sequence, seen_at FROM bundle_reports"
            ).fetchall()
        )
        return {
            spiffe_id: (int(r[1]), r[2].astimezone(UTC)) for r in rows for spiffe_id in _ids([r])
        }

    def leaves_until(self, issued_until: datetime) -> datetime | None:
        row = self._store._read(
            lambda conn: conn.execute(
                "SELECT max(not_after) FROM issued_certificates "
                "WHERE issued_at <= %s AND kind <> 'ca-server'",
                (issued_until,),
            ).fetchone()
        )
        return row[0].astimezone(UTC) if row and row[0] is not None else None

    def active_workload_ids(self, now: datetime) -> set[SpiffeId]:
        rows = self._store._read(
            lambda conn: conn.execute(
                "SELECT DISTINCT spiffe_id FROM issued_certificates "
                "WHERE not_after > %s AND kind IN ('bootstrap', 'renew')",
                (now,),
            ).fetchall()
        )
        return _ids(rows)


def trust_store(store: StateStore) -> TrustStore:
    """The rotation tables of `store`'s database (created if missing)."""
    if isinstance(store, SqliteStore):
        return _SqliteTrust(store)
    from mesh_ca.store.postgres import PostgresStore  # psycopg only when asked

    if isinstance(store, PostgresStore):
        return _PostgresTrust(store)
    raise StoreError(f"{type(store).__name__}: key rotation needs the SQLite or PostgreSQL store")
