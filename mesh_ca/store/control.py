"""The control plane's part of the CA store: registrations with leases, a version per
service, published policy sets, and which policy version each sidecar enforces.

Kept apart from `StateStore` (tokens, ledger, revocations): `control_store(store)` gives the
`ControlStore` that shares a backend's database and transactions (`SqliteControlStore`,
`PostgresControlStore`); both pass tests/test_control_store.py. Synchronous, like
`StateStore`: trio shells call it from worker threads.

Rules every backend keeps:
- A registration is keyed by (service, SPIFFE ID, address). Registering it again renews
  its lease. Each change of a service's endpoint set (a new endpoint, a protocol change, a
  deregistration, an expiry) bumps that service's version by one, in the same transaction;
  a plain renewal does not (watchers are not woken every few seconds per instance).
- One ID holds at most `limit` unexpired registrations: one more raises
  `TooManyRegistrations` and writes nothing (the check and the insert are one step, also
  against concurrent registrations of that ID on other replicas).
- Versions never go back: a service whose last endpoint left keeps its version row.
- A policy set is published only when its content hash differs from the latest published
  one, so replicas reading the same directory publish it once.
- With PostgreSQL every change is announced (`NOTIFY mesh_ca_control`) on commit, so the
  other replicas' watchers hear of it at once (`ControlStore.listen`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol, final

from mesh_ca.store.base import StateStore, StoreError

__all__ = [
    "CHANNEL",
    "ControlStore",
    "Enforcement",
    "PublishedPolicy",
    "Registration",
    "ServiceEndpoints",
    "TooManyRegistrations",
    "control_store",
]

# The NOTIFY channel; payloads are "endpoints:SERVICE" or "policies:VERSION".
CHANNEL: Final = "mesh_ca_control"


class TooManyRegistrations(StoreError):  # noqa: N818 - reads as the fact it reports
    """The ID already holds `limit` registrations; nothing was written."""

    def __init__(self, spiffe_id: str, limit: int) -> None:
        super().__init__(f"{spiffe_id} already holds {limit} registrations (the limit)")
        self.spiffe_id = spiffe_id
        self.limit = limit


@final
@dataclass(frozen=True, slots=True)
class Registration:
    service: str
    spiffe_id: str
    address: str
    protocol: str
    expires_at: datetime


@final
@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """A service's endpoint set at `version` (0: never had one)."""

    service: str
    version: int
    registrations: tuple[Registration, ...]


@final
@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    version: int  # 1, 2, ... in publishing order
    sha256: str  # `files_sha256(files)`
    published_at: datetime
    files: Mapping[str, str]


@final
@dataclass(frozen=True, slots=True)
class Enforcement:
    """What a sidecar last said it enforces (`after` of its policies watch)."""

    spiffe_id: str
    service: str
    version: int
    seen_at: datetime


class ControlStore(Protocol):
    def register(self, registration: Registration, now: datetime, limit: int) -> int | None:
        """Add or renew; the service's new version if its endpoint set changed, else None.
        Raises `TooManyRegistrations`."""
        ...

    def deregister(self, service: str, spiffe_id: str, address: str) -> int | None:
        """Remove one registration; the service's new version, or None if there was none."""
        ...

    def expire(self, now: datetime) -> dict[str, int]:
        """Remove every registration whose lease ended by `now`; {service: new version}."""
        ...

    def endpoints(self, service: str, now: datetime) -> ServiceEndpoints:
        """The unexpired registrations of `service` and its version."""
        ...

    def all_endpoints(self, now: datetime) -> Sequence[ServiceEndpoints]:
        """Every service that has a version, sorted by name."""
        ...

    def publish_policy(
        self, files: Mapping[str, str], sha256: str, now: datetime
    ) -> PublishedPolicy:
        """Publish `files` as the next version unless the latest has the same `sha256`;
        returns the latest published set either way."""
        ...

    def latest_policy(self) -> PublishedPolicy | None: ...

    def record_enforcement(
        self, spiffe_id: str, service: str, version: int, now: datetime
    ) -> None: ...

    def enforcement(self) -> Sequence[Enforcement]:
        """Every (ID, service) that asked for policies, sorted."""
        ...

    def listen(self, on_change: Callable[[str], None], stopped: Callable[[], bool]) -> None:
        """Call `on_change(payload)` for each change another process announces, until
        `stopped()`; blocks (run it in a thread). Raises `StoreUnavailable` when the
        connection is lost. A backend without notifications returns at once."""
        ...


def control_store(store: StateStore) -> ControlStore:
    """The control-plane store sharing `store`'s database."""
    from mesh_ca.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from mesh_ca.store.control_sqlite import SqliteControlStore

        return SqliteControlStore(store)
    from mesh_ca.store.postgres import PostgresStore  # psycopg only when asked

    if isinstance(store, PostgresStore):
        from mesh_ca.store.control_postgres import PostgresControlStore

        return PostgresControlStore(store)
    raise StoreError(f"the control plane needs a SQLite or PostgreSQL store, not {store!r}")
