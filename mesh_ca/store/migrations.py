"""Versioned schema migrations for the PostgreSQL state store.

`MIGRATIONS` is an ordered, append-only list: step N brings the schema from version N-1 to
N and is never edited once released (add a new step instead). The `schema_version` table
records each applied step. `migrate` runs under a transaction-scoped advisory lock, so
several CA replicas starting at once apply each step exactly once; it is idempotent. A
database at a version newer than this code knows is refused (`SchemaVersionError`), never
written to: an older replica must not guess at a newer schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, LiteralString, final

import psycopg

from mesh_ca.store.base import StoreUnavailable

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "MigrationResult",
    "SchemaVersionError",
    "check_version",
    "current_version",
    "migrate",
]

# pg_advisory_xact_lock key: "meshgate" in ASCII, so it cannot collide by accident.
_LOCK_KEY: Final = 0x6D65736867617465


class SchemaVersionError(StoreUnavailable):
    """The database schema is at a version this code cannot use (newer, or not migrated)."""


@final
@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[LiteralString, ...]


@final
@dataclass(frozen=True, slots=True)
class MigrationResult:
    from_version: int
    to_version: int

    @property
    def applied(self) -> int:
        return self.to_version - self.from_version


# Serials are numeric(49, 0): X.509 serials reach 159 bits (48 decimal digits), past bigint.
# `seq` keeps insertion order for "most recent first" when two rows share a timestamp.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "join tokens, issued-certificate ledger, revocations",
        (
            """CREATE TABLE join_tokens (
                token_id    text PRIMARY KEY,
                secret_hash bytea NOT NULL,
                spiffe_id   text NOT NULL,
                created_at  timestamptz NOT NULL,
                expires_at  timestamptz NOT NULL,
                used_at     timestamptz,
                CHECK (expires_at > created_at)
            )""",
            "CREATE INDEX tokens_outstanding ON join_tokens (expires_at) WHERE used_at IS NULL",
            """CREATE TABLE issued_certificates (
                seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                serial      numeric(49, 0) NOT NULL UNIQUE CHECK (serial > 0),
                spiffe_id   text NOT NULL,
                kind        text NOT NULL,
                issued_at   timestamptz NOT NULL,
                not_after   timestamptz NOT NULL,
                replica     text NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX issued_by_time ON issued_certificates (issued_at, seq)",
            "CREATE INDEX issued_by_id ON issued_certificates (spiffe_id, issued_at, seq)",
            """CREATE TABLE revocations (
                seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                spiffe_id   text UNIQUE,
                serial      numeric(49, 0) UNIQUE CHECK (serial > 0),
                revoked_at  timestamptz NOT NULL,
                reason      text NOT NULL DEFAULT '',
                CHECK ((spiffe_id IS NULL) <> (serial IS NULL))
            )""",
        ),
    ),
    Migration(
        2,
        "public key bindings: one SPIFFE ID per key",
        (
            """CREATE TABLE key_bindings (
                key_sha256  bytea PRIMARY KEY CHECK (length(key_sha256) = 32),
                spiffe_id   text NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "control plane: registrations, service versions, policy sets, enforcement",
        (
            """CREATE TABLE control_registrations (
                service     text NOT NULL,
                spiffe_id   text NOT NULL,
                address     text NOT NULL,
                protocol    text NOT NULL,
                expires_at  timestamptz NOT NULL,
                PRIMARY KEY (service, spiffe_id, address)
            )""",
            "CREATE INDEX control_registrations_by_id ON control_registrations (spiffe_id)",
            "CREATE INDEX control_registrations_by_expiry ON control_registrations (expires_at)",
            """CREATE TABLE control_services (
                service     text PRIMARY KEY,
                version     bigint NOT NULL
            )""",
            """CREATE TABLE control_policies (
                version      bigint PRIMARY KEY,
                sha256       text NOT NULL,
                published_at timestamptz NOT NULL,
                files        text NOT NULL
            )""",
            """CREATE TABLE control_enforcement (
                spiffe_id   text NOT NULL,
                service     text NOT NULL,
                version     bigint NOT NULL,
                seen_at     timestamptz NOT NULL,
                PRIMARY KEY (spiffe_id, service)
            )""",
        ),
    ),
)

LATEST_VERSION: Final = len(MIGRATIONS)

_CREATE_VERSION_TABLE: Final = """CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def _check_list() -> None:
    for index, step in enumerate(MIGRATIONS, start=1):
        if step.version != index:
            raise AssertionError(f"MIGRATIONS[{index - 1}] has version {step.version}")


_check_list()


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The applied schema version; 0 for an empty database."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def _refuse_newer(version: int, where: str) -> None:
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"{where}: database schema is at version {version}, newer than this meshgate "
            f"knows (latest {LATEST_VERSION}); upgrade meshgate, or point it at another database"
        )


def check_version(conn: psycopg.Connection[Any], where: str = "PostgreSQL") -> int:
    """Fail unless the schema is exactly at `LATEST_VERSION`; fails closed."""
    with conn.transaction():
        version = current_version(conn)
    _refuse_newer(version, where)
    if version < LATEST_VERSION:
        raise SchemaVersionError(
            f"{where}: database schema is at version {version}, this meshgate needs "
            f"{LATEST_VERSION}; run `mesh-ca db migrate --dir DIR`"
        )
    return version


def migrate(conn: psycopg.Connection[Any], where: str = "PostgreSQL") -> MigrationResult:
    """Bring the schema to `LATEST_VERSION` in one transaction; idempotent.

    `conn` must not be inside a transaction (autocommit, or idle). Concurrent callers
    serialize on an advisory lock, so each step runs once. Raises `SchemaVersionError`
    for a newer schema without touching it.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_CREATE_VERSION_TABLE)
        start = current_version(conn)
        _refuse_newer(start, where)
        for step in MIGRATIONS[start:]:
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                (step.version, step.description),
            )
    return MigrationResult(start, LATEST_VERSION)
