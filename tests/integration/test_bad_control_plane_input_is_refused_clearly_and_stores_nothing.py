"""A real `mesh-ca serve` refuses bad control-plane input with a clear error, at a bounded
cost, storing nothing: no client certificate, garbage, unknown-field and oversized bodies,
an advertised address that is not an address, a thousand registrations from one ID, and
watchers that never read their answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from mesh_ca.config import ServerConfig
from mesh_ca.store.control import control_store
from tests.ca_server_process import CaServer, https_request, serving_ca_dir
from tests.control_helpers import JSON, Caller, control_ca, shop

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CaServer]:
    ca = control_ca(
        tmp_path,
        max_registrations_per_id=16,
        lease_ttl_seconds=600,  # no lease ends while the thousand registrations run
        renew_seconds=60,
        server=ServerConfig(rate_limit_per_second=10_000.0, rate_limit_burst=10_000),
    )
    with serving_ca_dir(ca, tmp_path / "server.log") as running:
        yield running
    assert running.process.returncode == 0, running.log()


def registrations(server: CaServer) -> int:
    store = server.store()
    try:
        services = control_store(store).all_endpoints(datetime.now(UTC))
        return sum(len(s.registrations) for s in services)
    finally:
        store.close()


def error_of(body: bytes) -> tuple[str, str]:
    document = json.loads(body)
    return document["error"], document["message"]


async def test_malformed_requests_get_a_clear_error_and_change_nothing(server: CaServer) -> None:
    orders = Caller.of(server, shop("orders"))
    good = {"service": "orders", "address": "127.0.0.1:9001", "protocol": "http"}

    anonymous = await https_request(
        server, "POST", "/v1/control/register", json.dumps(good).encode(), headers=JSON
    )
    assert anonymous.status == 401
    assert error_of(anonymous.body)[0] == "client_cert_required"

    for body, status, code, says in [
        (b"\x00\xffnot json", 400, "bad_request", "Invalid JSON"),
        (json.dumps({**good, "spiffe_id": str(shop("web"))}).encode(), 400, "", "unknown field"),
        (json.dumps({**good, "address": "0.0.0.0:9001"}).encode(), 400, "", "peers can dial"),
        (json.dumps({**good, "address": "orders"}).encode(), 400, "", "not host:port"),
        (json.dumps({**good, "address": "10.0.0.1:99999"}).encode(), 400, "", "port"),
        (json.dumps({**good, "service": "x" * 500}).encode(), 400, "", "service"),
        (json.dumps({**good, "protocol": "udp"}).encode(), 400, "", "protocol"),
        (b"{" + b" " * 70_000 + b"}", 413, "body_too_large", "exceeds"),
    ]:
        reply = await orders.post("/v1/control/register", body)
        assert reply.status == status, (body[:80], reply.body)
        error, message = error_of(reply.body)
        assert error == (code or "bad_request")
        assert says in message, message
    wrong_type = await https_request(
        server,
        "POST",
        "/v1/control/register",
        json.dumps(good).encode(),
        headers=[("content-type", "text/plain")],
        context=orders.context,
    )
    assert wrong_type.status == 415
    watch = await orders.post("/v1/control/endpoints", {"service": "orders", "wait_ms": 10**9})
    assert watch.status == 400
    assert registrations(server) == 0


async def test_a_thousand_registrations_from_one_id_stop_at_its_limit(server: CaServer) -> None:
    orders = Caller.of(server, shop("orders"))
    statuses: list[int] = []

    async def register_range(start: int) -> None:
        for port in range(start, start + 125):
            reply = await orders.register("orders", f"127.0.0.1:{port}")
            statuses.append(reply.status)

    async with trio.open_nursery() as nursery:
        for worker in range(8):
            nursery.start_soon(register_range, 10_000 + worker * 125)
    assert statuses.count(200) == 16
    assert statuses.count(429) == 1000 - 16
    assert registrations(server) == 16
    refused = await orders.register("orders", "127.0.0.1:20000")
    assert error_of(refused.body)[0] == "too_many_registrations"
    assert "max_registrations_per_id" in error_of(refused.body)[1]
    # Another ID has its own allowance.
    payments = Caller.of(server, shop("payments"))
    assert (await payments.register("payments", "127.0.0.1:1")).status == 200


async def test_watchers_that_never_read_do_not_hold_back_the_others(server: CaServer) -> None:
    orders, web = Caller.of(server, shop("orders")), Caller.of(server, shop("web"))
    body = json.dumps({"service": "orders", "after": 0, "wait_ms": 30_000}).encode()
    request = (
        b"POST /v1/control/endpoints HTTP/1.1\r\nhost: ca\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    silent: list[trio.SSLStream[trio.SocketStream]] = []
    try:
        for _ in range(100):  # each sends a watch, then never reads a byte
            tcp = await trio.open_tcp_stream(server.host, server.port)
            stream = trio.SSLStream(tcp, web.context)
            await stream.send_all(request)
            silent.append(stream)
        start = await web.watch("orders", after=0, wait_ms=0)
        async with trio.open_nursery() as nursery:
            seen: list[dict[str, object]] = []

            async def watch() -> None:
                seen.append(await web.watch("orders", after=start["version"]))

            nursery.start_soon(watch)
            assert (await orders.register("orders", "127.0.0.1:9001")).status == 200
        assert len(seen[0]["endpoints"]) == 1  # type: ignore[arg-type]
    finally:
        for stream in silent:
            await trio.aclose_forcefully(stream)
