"""`ControlStore` on the CA's PostgreSQL database (migration 3), for several CA replicas.

Shares the `PostgresStore`'s connection pool and transactions. Every change runs
``pg_notify('mesh_ca_control', ...)`` inside its transaction, so it is announced exactly
when it commits; `listen` holds one extra connection in LISTEN mode and hands the payloads
to the replica's watchers. The per-ID registration limit is checked under a transaction
advisory lock on the ID, so concurrent registrations on several replicas cannot pass it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, final

import psycopg

from mesh_ca.store.base import StoreUnavailable
from mesh_ca.store.control import (
    CHANNEL,
    Enforcement,
    PublishedPolicy,
    Registration,
    ServiceEndpoints,
    TooManyRegistrations,
)
from mesh_ca.store.postgres import PostgresStore, _aware, _utc

__all__ = ["PostgresControlStore"]

_Conn = psycopg.Connection[tuple[Any, ...]]
# Namespaces the per-ID advisory locks (pg_advisory_xact_lock(int, int)): "mcp1".
_LOCK_SPACE: Final = 0x6D637031
_LISTEN_POLL_SECONDS: Final = 0.5


def _bump(conn: _Conn, service: str) -> int:
    row = conn.execute(
        "INSERT INTO control_services (service, version) VALUES (%s, 1) "
        "ON CONFLICT (service) DO UPDATE SET version = control_services.version + 1 "
        "RETURNING version",
        (service,),
    ).fetchone()
    assert row is not None
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"endpoints:{service}"))
    return int(row[0])


@final
class PostgresControlStore:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def register(self, registration: Registration, now: datetime, limit: int) -> int | None:
        r = registration
        now = _aware(now)

        def run(conn: _Conn) -> int | None:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, r.spiffe_id)
            )
            row = conn.execute(
                "SELECT protocol, expires_at FROM control_registrations "
                "WHERE service = %s AND spiffe_id = %s AND address = %s FOR UPDATE",
                (r.service, r.spiffe_id, r.address),
            ).fetchone()
            if row is not None and row[1] > now:
                conn.execute(
                    "UPDATE control_registrations SET protocol = %s, expires_at = %s "
                    "WHERE service = %s AND spiffe_id = %s AND address = %s",
                    (r.protocol, _aware(r.expires_at), r.service, r.spiffe_id, r.address),
                )
                return _bump(conn, r.service) if row[0] != r.protocol else None
            held = conn.execute(
                "SELECT count(*) FROM control_registrations "
                "WHERE spiffe_id = %s AND expires_at > %s",
                (r.spiffe_id, now),
            ).fetchone()
            if held is not None and int(held[0]) >= limit:
                raise TooManyRegistrations(r.spiffe_id, limit)
            conn.execute(
                "INSERT INTO control_registrations "
                "(service, spiffe_id, address, protocol, expires_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (service, spiffe_id, address) DO UPDATE "
                "SET protocol = excluded.protocol, expires_at = excluded.expires_at",
                (r.service, r.spiffe_id, r.address, r.protocol, _aware(r.expires_at)),
            )
            return _bump(conn, r.service)

        return self._store._transaction(run)

    def deregister(self, service: str, spiffe_id: str, address: str) -> int | None:
        def run(conn: _Conn) -> int | None:
            gone = conn.execute(
                "DELETE FROM control_registrations "
                "WHERE service = %s AND spiffe_id = %s AND address = %s",
                (service, spiffe_id, address),
            ).rowcount
            return _bump(conn, service) if gone else None

        return self._store._transaction(run)

    def expire(self, now: datetime) -> dict[str, int]:
        def run(conn: _Conn) -> dict[str, int]:
            rows = conn.execute(
                "DELETE FROM control_registrations WHERE expires_at <= %s RETURNING service",
                (_aware(now),),
            ).fetchall()
            return {service: _bump(conn, service) for service in sorted({r[0] for r in rows})}

        return self._store._transaction(run)

    def endpoints(self, service: str, now: datetime) -> ServiceEndpoints:
        def run(conn: _Conn) -> ServiceEndpoints:
            row = conn.execute(
                "SELECT version FROM control_services WHERE service = %s", (service,)
            ).fetchone()
            rows = conn.execute(
                "SELECT service, spiffe_id, address, protocol, expires_at "
                "FROM control_registrations WHERE service = %s AND expires_at > %s "
                "ORDER BY address, spiffe_id",
                (service, _aware(now)),
            ).fetchall()
            return ServiceEndpoints(service, int(row[0]) if row else 0, _registrations(rows))

        return self._store._transaction(run)

    def all_endpoints(self, now: datetime) -> Sequence[ServiceEndpoints]:
        def run(conn: _Conn) -> list[ServiceEndpoints]:
            versions = conn.execute(
                "SELECT service, version FROM control_services ORDER BY service"
            ).fetchall()
            rows = conn.execute(
                "SELECT service, spiffe_id, address, protocol, expires_at "
                "FROM control_registrations WHERE expires_at > %s ORDER BY address, spiffe_id",
                (_aware(now),),
            ).fetchall()
            by_service: dict[str, list[Registration]] = {}
            for registration in _registrations(rows):
                by_service.setdefault(registration.service, []).append(registration)
            return [ServiceEndpoints(s, int(v), tuple(by_service.get(s, ()))) for s, v in versions]

        return self._store._transaction(run)

    def publish_policy(
        self, files: Mapping[str, str], sha256: str, now: datetime
    ) -> PublishedPolicy:
        def run(conn: _Conn) -> PublishedPolicy:
            # One publisher at a time across replicas: the version is max + 1.
            conn.execute("LOCK TABLE control_policies IN EXCLUSIVE MODE")
            latest = conn.execute(
                "SELECT version, sha256, published_at, files FROM control_policies "
                "ORDER BY version DESC LIMIT 1"
            ).fetchone()
            if latest is not None and latest[1] == sha256:
                return _policy(latest)
            version = (int(latest[0]) if latest else 0) + 1
            conn.execute(
                "INSERT INTO control_policies (version, sha256, published_at, files) "
                "VALUES (%s, %s, %s, %s)",
                (version, sha256, _aware(now), json.dumps(dict(files), sort_keys=True)),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"policies:{version}"))
            return PublishedPolicy(version, sha256, now, dict(files))

        return self._store._transaction(run)

    def latest_policy(self) -> PublishedPolicy | None:
        row = self._store._read(
            lambda conn: conn.execute(
                "SELECT version, sha256, published_at, files FROM control_policies "
                "ORDER BY version DESC LIMIT 1"
            ).fetchone()
        )
        return _policy(row) if row else None

    def record_enforcement(self, spiffe_id: str, service: str, version: int, now: datetime) -> None:
        self._store._read(
            lambda conn: conn.execute(
                "INSERT INTO control_enforcement (spiffe_id, service, version, seen_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (spiffe_id, service) "
                "DO UPDATE SET version = excluded.version, seen_at = excluded.seen_at",
                (spiffe_id, service, version, _aware(now)),
            )
        )

    def enforcement(self) -> Sequence[Enforcement]:
        rows = self._store._read(
            lambda conn: conn.execute(
                "SELECT spiffe_id, service, version, seen_at FROM control_enforcement "
                "ORDER BY service, spiffe_id"
            ).fetchall()
        )
        return [Enforcement(r[0], r[1], int(r[2]), _utc(r[3])) for r in rows]

    def listen(self, on_change: Callable[[str], None], stopped: Callable[[], bool]) -> None:
        conn = self._store._connect()
        try:
            conn.execute("LISTEN mesh_ca_control")  # CHANNEL
            while not stopped():
                for note in conn.notifies(timeout=_LISTEN_POLL_SECONDS, stop_after=64):
                    on_change(note.payload)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"{self._store.where}: change notifications lost: {exc}"
            ) from None
        finally:
            conn.close()


def _registrations(rows: Sequence[tuple[Any, ...]]) -> tuple[Registration, ...]:
    return tuple(Registration(r[0], r[1], r[2], r[3], _utc(r[4])) for r in rows)


def _policy(row: tuple[Any, ...]) -> PublishedPolicy:
    return PublishedPolicy(int(row[0]), row[1], _utc(row[2]), json.loads(row[3]))
