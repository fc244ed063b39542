"""``mesh-ca db``: state-store maintenance. ``db migrate`` brings the schema up to date.

`mesh-ca serve` migrates on start as well; the command is for operators who migrate before
rolling out replicas, and is idempotent (a second run changes nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mesh_ca.config import CONFIG_FILE, load_config
from mesh_ca.store import open_store
from mesh_ca.store.base import StoreError

__all__ = ["add_db_parser", "db_main"]


def add_db_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db`` and its actions to the ``mesh-ca`` subcommands."""
    text = "State-store maintenance (schema migrations)."
    p = sub.add_parser("db", help=text, description=text)
    actions = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    text = "Create or upgrade the state-store schema to this version's; idempotent."
    m = actions.add_parser("migrate", help=text, description=text)
    m.add_argument("--dir", type=Path, required=True, help="the CA directory")


def db_main(args: argparse.Namespace) -> int:
    """Run ``mesh-ca db ACTION``; raises `StoreError`/`ConfigError` for the CLI to report."""
    directory: Path = args.dir
    if args.db_command != "migrate":
        raise AssertionError(f"unknown db action {args.db_command!r}")
    file = directory / CONFIG_FILE
    if not file.is_file():
        raise StoreError(f"{directory}: not a CA directory (no {CONFIG_FILE}); run init")
    config = load_config(file)
    if config.store.kind == "postgres":
        from mesh_ca.store.postgres_config import open_postgres

        store = open_postgres(config.store, directory)
        try:
            result = store.migration
        finally:
            store.close()
        assert result is not None
        if result.applied:
            message = f"migrated from version {result.from_version} to {result.to_version}"
        else:
            message = f"already at version {result.to_version}; nothing to do"
        sys.stdout.write(f"{store.where}: schema {message}\n")
        return 0
    # SQLite creates and upgrades its schema whenever it is opened.
    open_store(config, directory).close()
    sys.stdout.write(f"SQLite {directory / config.store.path}: schema up to date\n")
    return 0
