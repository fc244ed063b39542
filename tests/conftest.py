"""Shared pytest fixtures. Keep each one small; say who needs it."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # psycopg is the optional `postgres` extra; only its tests import it
    from tests.pg_server import PgServer
    from tests.softhsm import SoftToken


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server per test session (per xdist worker), stopped at the end."""
    from tests.pg_server import running_postgres

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


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftToken]:
    """One SoftHSM2 token per test session (per xdist worker), for the HSM-key tests:
    SoftHSM2 reads its config once per process, so every test in a worker shares it."""
    from tests.softhsm import softhsm_token

    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as token:
        yield token


# Test kinds. Every test is exactly one of: `unit` (pure cores and in-memory components: no
# processes, no sockets), `integration` (real processes or sockets on loopback), `interop`
# (real outside peers: openssl, curl, py-spiffe) or `postgres` (a real PostgreSQL server).
# A module says which with `pytestmark` (tests/integration/ and tests/security/ are
# `integration` throughout); any other test that says nothing is `unit`, and the guard
# below makes that true: a unit test that starts a process or binds or connects a socket
# fails, naming the marker to add. So `pytest -m unit` is the fast, pure set.
_KINDS = ("postgres", "interop", "integration")


_PROCESS_FOLDERS = ("integration", "security")  # tests/<folder>/: real processes throughout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(kind) for kind in _KINDS):
            continue
        if item.path.parent.name in _PROCESS_FOLDERS:
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


def _refuse(what: str) -> Callable[..., object]:
    def refused(*_args: object, **_kwargs: object) -> object:
        raise AssertionError(
            f"a unit test may not {what}; mark the test or its module "
            "pytest.mark.integration (or interop / postgres)"
        )

    return refused


@contextmanager
def _no_processes_or_sockets() -> Iterator[None]:
    patches = [
        (subprocess.Popen, "__init__", _refuse("start a process")),
        (socket.socket, "bind", _refuse("bind a socket")),
        (socket.socket, "connect", _refuse("connect a socket")),
        (socket.socket, "connect_ex", _refuse("connect a socket")),
    ]
    # socket.socket inherits bind/connect from _socket.socket: shadow them, then unshadow.
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("unit") is None:
        return (yield)
    with _no_processes_or_sockets():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("unit") is None:
        return (yield)
    with _no_processes_or_sockets():
        return (yield)
