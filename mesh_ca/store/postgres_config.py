"""Open the PostgreSQL store from the CA config: the URL, and a password kept out of it.

The password comes from ``[store] password_env`` (an environment variable's name) or
``[store] password_file`` (a file, relative to the CA directory, readable by its owner
only, as libpq demands of ``.pgpass``). With neither, libpq's own means apply (``.pgpass``,
``PGPASSWORD``, peer or trust auth). The password is never part of any message.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mesh_ca.config import CONFIG_FILE, StoreConfig
from meshgate.errors import ConfigError

if TYPE_CHECKING:
    from mesh_ca.store.postgres import PostgresStore

__all__ = ["open_postgres", "store_password"]


def store_password(
    store: StoreConfig, ca_dir: Path, environ: Mapping[str, str] | None = None
) -> str | None:
    """The database password named by the config, or None when it names none."""
    source = ca_dir / CONFIG_FILE
    if store.password_env and store.password_file:
        raise ConfigError(
            f"{source}: store: give password_env or password_file, not both",
            file=source,
            key="store",
        )
    if store.password_env:
        value = (os.environ if environ is None else environ).get(store.password_env)
        if not value:
            raise ConfigError(
                f"{source}: store.password_env: environment variable "
                f"{store.password_env!r} is not set or empty",
                file=source,
                key="store.password_env",
            )
        return value
    if store.password_file:
        path = Path(store.password_file)
        path = path if path.is_absolute() else ca_dir / path
        try:
            mode = path.stat().st_mode
            data = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{source}: store.password_file: {path}: cannot read ({exc.strerror})",
                file=source,
                key="store.password_file",
            ) from exc
        except UnicodeDecodeError:
            raise ConfigError(
                f"{source}: store.password_file: {path}: not UTF-8 text",
                file=source,
                key="store.password_file",
            ) from None
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigError(
                f"{source}: store.password_file: {path} is readable by others "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it",
                file=source,
                key="store.password_file",
            )
        lines = data.splitlines()
        if not lines or not lines[0]:
            raise ConfigError(
                f"{source}: store.password_file: {path}: first line is empty",
                file=source,
                key="store.password_file",
            )
        return lines[0]
    return None


def open_postgres(
    store: StoreConfig,
    ca_dir: Path,
    *,
    migrate: bool = True,
    environ: Mapping[str, str] | None = None,
) -> PostgresStore:
    """A `PostgresStore` for ``[store] kind = "postgres"``; migrates the schema by default."""
    if not store.url:
        raise ConfigError(
            f"{ca_dir / CONFIG_FILE}: store.url: kind = 'postgres' needs url",
            file=ca_dir / CONFIG_FILE,
            key="store.url",
        )
    try:
        # psycopg is an optional extra: a CA on SQLite must not need it installed.
        from mesh_ca.store.postgres import PostgresStore
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("psycopg"):
            raise
        raise ConfigError(
            f"{ca_dir / CONFIG_FILE}: store.kind: 'postgres' needs the psycopg driver, "
            "which is not installed; install meshgate[postgres] (pip install 'meshgate[postgres]')",
            file=ca_dir / CONFIG_FILE,
            key="store.kind",
        ) from exc
    return PostgresStore(store.url, store_password(store, ca_dir, environ), migrate=migrate)
