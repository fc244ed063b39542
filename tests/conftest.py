"""Shared pytest fixtures. Keep each one small; say who needs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg_server import PgServer, running_postgres


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server per test session (per xdist worker), stopped at the end."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def pg_password(pg_server: PgServer) -> str:
    """The superuser password for `pg_url` (kept out of the URL, as the CA config does)."""
    return pg_server.password


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A URL (without password) of a fresh, empty database on the session's server."""
    name = pg_server.fresh_database()
    yield pg_server.url(name)
    pg_server.release_database(name)
