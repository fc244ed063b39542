"""The CA state store: the interface, the SQLite backend, and backend selection."""

from __future__ import annotations

from pathlib import Path

from mesh_ca.config import CaConfig
from mesh_ca.store.base import (
    GroupingStore,
    IdRevoked,
    IssuedRecord,
    KeyBound,
    Revocation,
    StateStore,
    StoreError,
    StoreUnavailable,
    TokenError,
    TokenFailure,
    TokenRecord,
    TokenWrongId,
)
from mesh_ca.store.sqlite import SqliteStore

__all__ = [
    "GroupingStore",
    "IdRevoked",
    "IssuedRecord",
    "KeyBound",
    "Revocation",
    "SqliteStore",
    "StateStore",
    "StoreError",
    "StoreUnavailable",
    "TokenError",
    "TokenFailure",
    "TokenRecord",
    "TokenWrongId",
    "open_store",
]


def open_store(config: CaConfig, ca_dir: Path) -> StateStore:
    """The backend named by ``[store] kind`` in the CA config."""
    if config.store.kind == "sqlite":
        path = Path(config.store.path)
        return SqliteStore(path if path.is_absolute() else ca_dir / path)
    if config.store.kind == "postgres":
        from mesh_ca.store.postgres_config import open_postgres  # psycopg only when asked

        return open_postgres(config.store, ca_dir)
    raise StoreUnavailable(f"store kind {config.store.kind!r} is not available in this build")
