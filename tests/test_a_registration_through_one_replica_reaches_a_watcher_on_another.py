"""Two real `mesh-ca serve` replicas on one real PostgreSQL: a registration made through
replica A reaches a watcher long-polling on replica B (LISTEN/NOTIFY, no polling), and so
does its lease's end; both replicas serve the one published policy version; after the
database restarts, B listens again and its watchers hear of A's changes."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from mesh_ca.ca_dir import load_ca_dir
from mesh_ca.config import ServerConfig, StoreConfig
from tests.ca_server_process import CaServer, serving_ca_dir
from tests.control_helpers import Caller, control_ca, shop
from tests.pg_server import PgServer, running_postgres

pytestmark = pytest.mark.postgres

PASSWORD_ENV = "MESH_TEST_CONTROL_PG_PASSWORD"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    """This module's own server: the restart test stops and starts it."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def replicas(
    postgres: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CaServer, CaServer]]:
    postgres.start()  # a no-op unless an earlier test left it stopped
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    pg_url = postgres.url(postgres.create_database())
    ca = control_ca(
        tmp_path,
        store=StoreConfig(kind="postgres", url=pg_url, password_env=PASSWORD_ENV),
        server=ServerConfig(rate_limit_per_second=10_000.0, rate_limit_burst=10_000),
        lease_ttl_seconds=3,
        renew_seconds=1,
    )
    copy = tmp_path / "ca-b"
    shutil.copytree(ca.path, copy)  # the documented way to make a replica
    serve = ("-m", "mesh_ca.cli", "serve")
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                serving_ca_dir(
                    load_ca_dir(directory),
                    tmp_path / f"replica-{name}.log",
                    argv=serve,
                    extra=("--replica", name),
                )
            )
            for name, directory in (("a", ca.path), ("b", copy))
        ]
        yield servers[0], servers[1]
    for server in servers:
        assert server.process.returncode == 0, server.log()


async def test_a_registration_on_a_reaches_a_watcher_on_b_and_so_does_its_expiry(
    replicas: tuple[CaServer, CaServer],
) -> None:
    a, b = replicas
    on_b = Caller.of(b, shop("web"))
    start = await on_b.watch("orders", after=0, wait_ms=0)
    async with trio.open_nursery() as nursery:
        seen: list[dict[str, object]] = []

        async def watch() -> None:
            seen.append(await on_b.watch("orders", after=start["version"], wait_ms=25_000))

        nursery.start_soon(watch)
        await trio.sleep(0.2)  # let the watch reach B (a late one is answered at once too)
        orders_on_a = Caller.of(a, shop("orders"))
        assert (await orders_on_a.register("orders", "127.0.0.1:9001")).status == 200
    (grown,) = seen
    assert [e["address"] for e in grown["endpoints"]] == ["127.0.0.1:9001"]  # type: ignore[attr-defined]

    # No renewals: the lease (3 s) ends, swept by either replica; B's watcher sees it.
    with trio.fail_after(20):
        version = grown["version"]
        while True:
            current = await on_b.watch("orders", after=version)  # type: ignore[arg-type]
            if not current["endpoints"]:
                break
            version = current["version"]

    # One published policy version, served alike by both replicas.
    orders_on_b = Caller.of(b, shop("orders"))
    from_a = await Caller.of(a, shop("orders")).ok("/v1/control/policies", {"service": "orders"})
    from_b = await orders_on_b.ok("/v1/control/policies", {"service": "orders"})
    assert (
        (from_a["version"], from_a["sha256"])
        == (from_b["version"], from_b["sha256"])
        == (
            1,
            from_a["sha256"],
        )
    )


async def test_after_a_database_restart_b_hears_of_a_again(
    replicas: tuple[CaServer, CaServer], postgres: PgServer
) -> None:
    a, b = replicas
    on_b = Caller.of(b, shop("web"))
    orders_on_a = Caller.of(a, shop("orders"))
    assert (await orders_on_a.register("orders", "127.0.0.1:9001")).status == 200
    postgres.stop()
    failed = await orders_on_a.register("orders", "127.0.0.1:9002")
    assert failed.status == 503  # store_unavailable: nothing changed
    postgres.start()
    # A registration through A, retried until the database is back, reaches B's watcher:
    # B's listener connection died with the server and was opened again.
    with trio.fail_after(30):
        while (await orders_on_a.register("orders", "127.0.0.1:9002")).status != 200:
            await trio.sleep(0.2)
        version = 0
        while True:
            current = await on_b.watch("orders", after=version, wait_ms=25_000)
            if "127.0.0.1:9002" in [e["address"] for e in current["endpoints"]]:
                break
            version = current["version"]
    assert "change_listener_lost" in b.log()
