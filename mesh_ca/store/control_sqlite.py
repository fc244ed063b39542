"""`ControlStore` on the CA's SQLite file (the tables of `mesh_ca.store.sqlite`'s schema 3).

Shares the `SqliteStore`'s connection, lock and transactions. One process only: SQLite has
no change notification, so `listen` returns at once (one CA process sees its own changes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import final

from mesh_ca.store.control import (
    Enforcement,
    PublishedPolicy,
    Registration,
    ServiceEndpoints,
    TooManyRegistrations,
)
from mesh_ca.store.sqlite import SqliteStore, _from_micros, _micros

__all__ = ["SqliteControlStore"]


def _bump(cur: sqlite3.Cursor, service: str) -> int:
    row = cur.execute(
        "INSERT INTO control_services (service, version) VALUES (?, 1) "
        "ON CONFLICT (service) DO UPDATE SET version = version + 1 RETURNING version",
        (service,),
    ).fetchone()
    return int(row[0])


@final
class SqliteControlStore:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def register(self, registration: Registration, now: datetime, limit: int) -> int | None:
        r = registration
        with self._store._transaction(durable=False) as cur:
            row = cur.execute(
                "SELECT protocol, expires_at FROM control_registrations "
                "WHERE service = ? AND spiffe_id = ? AND address = ?",
                (r.service, r.spiffe_id, r.address),
            ).fetchone()
            if row is not None and row[1] > _micros(now):
                cur.execute(
                    "UPDATE control_registrations SET protocol = ?, expires_at = ? "
                    "WHERE service = ? AND spiffe_id = ? AND address = ?",
                    (r.protocol, _micros(r.expires_at), r.service, r.spiffe_id, r.address),
                )
                return _bump(cur, r.service) if row[0] != r.protocol else None
            (held,) = cur.execute(
                "SELECT count(*) FROM control_registrations WHERE spiffe_id = ? AND expires_at > ?",
                (r.spiffe_id, _micros(now)),
            ).fetchone()
            if held >= limit:
                raise TooManyRegistrations(r.spiffe_id, limit)
            cur.execute(
                "INSERT OR REPLACE INTO control_registrations "
                "(service, spiffe_id, address, protocol, expires_at) VALUES (?, ?, ?, ?, ?)",
                (r.service, r.spiffe_id, r.address, r.protocol, _micros(r.expires_at)),
            )
            return _bump(cur, r.service)

    def deregister(self, service: str, spiffe_id: str, address: str) -> int | None:
        with self._store._transaction(durable=False) as cur:
            cur.execute(
                "DELETE FROM control_registrations "
                "WHERE service = ? AND spiffe_id = ? AND address = ?",
                (service, spiffe_id, address),
            )
            return _bump(cur, service) if cur.rowcount else None

    def expire(self, now: datetime) -> dict[str, int]:
        with self._store._transaction(durable=False) as cur:
            services = {
                str(row[0])
                for row in cur.execute(
                    "DELETE FROM control_registrations WHERE expires_at <= ? RETURNING service",
                    (_micros(now),),
                ).fetchall()
            }
            return {service: _bump(cur, service) for service in sorted(services)}

    def endpoints(self, service: str, now: datetime) -> ServiceEndpoints:
        with self._store._transaction(write=False) as cur:
            row = cur.execute(
                "SELECT version FROM control_services WHERE service = ?", (service,)
            ).fetchone()
            rows = cur.execute(
                "SELECT service, spiffe_id, address, protocol, expires_at "
                "FROM control_registrations WHERE service = ? AND expires_at > ? "
                "ORDER BY address, spiffe_id",
                (service, _micros(now)),
            ).fetchall()
        return ServiceEndpoints(service, int(row[0]) if row else 0, _registrations(rows))

    def all_endpoints(self, now: datetime) -> Sequence[ServiceEndpoints]:
        with self._store._transaction(write=False) as cur:
            versions = cur.execute(
                "SELECT service, version FROM control_services ORDER BY service"
            ).fetchall()
            rows = cur.execute(
                "SELECT service, spiffe_id, address, protocol, expires_at "
                "FROM control_registrations WHERE expires_at > ? ORDER BY address, spiffe_id",
                (_micros(now),),
            ).fetchall()
        return _grouped(versions, _registrations(rows))

    def publish_policy(
        self, files: Mapping[str, str], sha256: str, now: datetime
    ) -> PublishedPolicy:
        with self._store._transaction(durable=True) as cur:
            latest = cur.execute(
                "SELECT version, sha256, published_at, files FROM control_policies "
                "ORDER BY version DESC LIMIT 1"
            ).fetchone()
            if latest is not None and latest[1] == sha256:
                return _policy(latest)
            version = (int(latest[0]) if latest else 0) + 1
            text = json.dumps(dict(files), sort_keys=True)
            cur.execute(
                "INSERT INTO control_policies (version, sha256, published_at, files) "
                "VALUES (?, ?, ?, ?)",
                (version, sha256, _micros(now), text),
            )
            return PublishedPolicy(version, sha256, now, dict(files))

    def latest_policy(self) -> PublishedPolicy | None:
        with self._store._transaction(write=False) as cur:
            row = cur.execute(
                "SELECT version, sha256, published_at, files FROM control_policies "
                "ORDER BY version DESC LIMIT 1"
            ).fetchone()
        return _policy(row) if row else None

    def record_enforcement(self, spiffe_id: str, service: str, version: int, now: datetime) -> None:
        with self._store._transaction(durable=False) as cur:
            cur.execute(
                "INSERT INTO control_enforcement (spiffe_id, service, version, seen_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (spiffe_id, service) "
                "DO UPDATE SET version = excluded.version, seen_at = excluded.seen_at",
                (spiffe_id, service, version, _micros(now)),
            )

    def enforcement(self) -> Sequence[Enforcement]:
        with self._store._transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT spiffe_id, service, version, seen_at FROM control_enforcement "
                "ORDER BY service, spiffe_id"
            ).fetchall()
        return [Enforcement(r[0], r[1], int(r[2]), _from_micros(r[3])) for r in rows]

    def listen(self, on_change: Callable[[str], None], stopped: Callable[[], bool]) -> None:
        return  # one process: its own changes are all there is


def _registrations(rows: Sequence[Sequence[object]]) -> tuple[Registration, ...]:
    return tuple(
        Registration(str(r[0]), str(r[1]), str(r[2]), str(r[3]), _from_micros(int(str(r[4]))))
        for r in rows
    )


def _grouped(
    versions: Sequence[Sequence[object]], registrations: Sequence[Registration]
) -> list[ServiceEndpoints]:
    by_service: dict[str, list[Registration]] = {}
    for registration in registrations:
        by_service.setdefault(registration.service, []).append(registration)
    return [
        ServiceEndpoints(str(service), int(str(version)), tuple(by_service.get(str(service), ())))
        for service, version in versions
    ]


def _policy(row: Sequence[object]) -> PublishedPolicy:
    files = json.loads(str(row[3]))
    return PublishedPolicy(int(str(row[0])), str(row[1]), _from_micros(int(str(row[2]))), files)
