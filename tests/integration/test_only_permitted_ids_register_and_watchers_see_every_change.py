"""A real `mesh-ca serve`: policy decides who may register a service (default deny, refusals
logged and never stored); long-poll watchers see registrations, deregistrations and lease
expiry; renewals keep an endpoint without waking anyone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from mesh_ca.store.control import control_store
from tests.ca_server_process import CaServer, serving_ca_dir
from tests.control_helpers import Caller, control_ca, shop

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CaServer]:
    ca = control_ca(tmp_path, lease_ttl_seconds=3, renew_seconds=1)
    with serving_ca_dir(ca, tmp_path / "server.log") as running:
        yield running
    assert running.process.returncode == 0, running.log()


def stored(server: CaServer, service: str) -> list[str]:
    store = server.store()
    try:
        from datetime import UTC, datetime

        current = control_store(store).endpoints(service, datetime.now(UTC))
        return [f"{r.spiffe_id} {r.address}" for r in current.registrations]
    finally:
        store.close()


async def test_a_permitted_id_registers_and_an_unpermitted_one_is_refused(
    server: CaServer,
) -> None:
    orders = Caller.of(server, shop("orders"))
    reply = await orders.register("orders", "127.0.0.1:9001")
    assert reply.status == 200, reply.body
    lease = json.loads(reply.body)
    assert lease["spiffe_id"] == str(shop("orders"))  # from the handshake, not the body
    assert (lease["ttl_seconds"], lease["renew_seconds"]) == (3, 1)

    web = Caller.of(server, shop("web"))
    refused = await web.register("orders", "127.0.0.1:9002")
    assert refused.status == 403
    assert json.loads(refused.body)["error"] == "registration_denied"
    assert "may not serve orders" in json.loads(refused.body)["message"]
    assert stored(server, "orders") == [f"{shop('orders')} 127.0.0.1:9001"]
    assert '"event": "registration_denied"' in server.log()
    assert str(shop("web")) in server.log()

    endpoints = await web.watch("orders", after=0, wait_ms=0)
    assert [e["address"] for e in endpoints["endpoints"]] == ["127.0.0.1:9001"]
    assert endpoints["endpoints"][0]["spiffe_id"] == str(shop("orders"))


async def test_watchers_see_a_new_instance_a_deregistration_and_an_expired_lease(
    server: CaServer,
) -> None:
    first, second = Caller.of(server, shop("orders")), Caller.of(server, shop("orders"))
    web = Caller.of(server, shop("web"))
    assert (await first.register("orders", "127.0.0.1:9001")).status == 200
    start = await web.watch("orders", after=0, wait_ms=0)

    async with trio.open_nursery() as nursery:
        seen: list[dict[str, object]] = []

        async def watch() -> None:
            seen.append(await web.watch("orders", after=start["version"]))

        nursery.start_soon(watch)
        await trio.sleep(0.2)  # let the watch reach the server (a wait would also be answered)
        assert (await second.register("orders", "127.0.0.1:9002")).status == 200
    (grown,) = seen
    assert grown["version"] == start["version"] + 1
    assert len(grown["endpoints"]) == 2  # type: ignore[arg-type]

    # A renewal does not change the version: a watcher keeps waiting.
    assert (await second.register("orders", "127.0.0.1:9002")).status == 200
    same = await web.watch("orders", after=grown["version"], wait_ms=300)  # type: ignore[arg-type]
    assert same["version"] == grown["version"]

    removed = await second.ok(
        "/v1/control/deregister",
        {"service": "orders", "address": "127.0.0.1:9002", "protocol": "http"},
    )
    assert removed == {"removed": True}
    shrunk = await web.watch("orders", after=grown["version"], wait_ms=0)  # type: ignore[arg-type]
    assert [e["address"] for e in shrunk["endpoints"]] == ["127.0.0.1:9001"]

    # `first` stops renewing: its lease (3 s) ends and it leaves the set.
    with trio.fail_after(20):
        version = shrunk["version"]
        while True:
            current = await web.watch("orders", after=version)
            if not current["endpoints"]:
                break
            version = current["version"]
    assert stored(server, "orders") == []


async def test_a_revoked_id_cannot_register(server: CaServer) -> None:
    orders = Caller.of(server, shop("orders"))
    store = server.store()
    try:
        from datetime import UTC, datetime

        store.revoke(datetime.now(UTC), spiffe_id=shop("orders"), reason="test")
    finally:
        store.close()
    refused = await orders.register("orders", "127.0.0.1:9001")
    assert refused.status == 403
    assert json.loads(refused.body)["error"] == "revoked"
    assert stored(server, "orders") == []


async def test_a_renewal_is_decided_again_when_policy_withdraws_the_permission(
    server: CaServer,
) -> None:
    orders = Caller.of(server, shop("orders"))
    assert (await orders.register("orders", "127.0.0.1:9001")).status == 200
    policies = server.ca.path.parent / "policies"
    (policies / "registration.cedar").write_text(
        '@id("nobody-serves-orders")\n'
        'forbid (principal, action == Action::"register", resource == Service::"orders");\n'
        '@id("shop-serves")\n'
        'permit (principal in Namespace::"shop", action == Action::"register", resource);\n'
    )
    with trio.fail_after(20):
        while True:  # the control plane publishes the edit within its poll interval
            reply = await orders.register("orders", "127.0.0.1:9001")
            if reply.status == 403:
                break
            await trio.sleep(0.1)
    assert "nobody-serves-orders" in json.loads(reply.body)["message"]


async def test_a_waiting_watcher_is_answered_when_the_ca_stops(server: CaServer) -> None:
    web = Caller.of(server, shop("web"))
    async with trio.open_nursery() as nursery:
        seen: list[dict[str, object]] = []

        async def watch() -> None:
            seen.append(await web.watch("orders", after=0, wait_ms=30_000))

        nursery.start_soon(watch)
        await trio.sleep(0.3)  # let the watch reach the server and wait
        server.process.terminate()
    assert seen == [{"service": "orders", "version": 0, "endpoints": []}]
    await trio.to_thread.run_sync(server.process.wait, 15)
    assert server.process.returncode == 0, server.log()
