"""The http outbound over a discovered endpoint set (in memory, real mTLS): a request cut
before its response on a fresh connection (the peer died) is retried on another endpoint
when idempotent, never when not; consecutive failures eject the endpoint; an endpoint
that left the set gets no new request."""

from __future__ import annotations

import trio

from sidecar.config import Address
from sidecar.outbound.endpoints import EndpointTable
from sidecar.outbound.http import HttpOutbound
from sidecar.outbound.mesh_pool import MeshPool
from sidecar.transport.mesh_tls import accept_mesh
from tests.test_http_outbound import GET, Harness, roundtrip, status_and_body

DYING = Address("127.0.0.1", 9001)
HEALTHY = Address("127.0.0.1", 9002)


class Dying:
    """Completes the mesh handshake, takes the request, closes without an answer."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.requests = 0

    async def serve(self, transport: trio.abc.Stream) -> None:
        dest = self.harness.destination
        try:
            conn = await accept_mesh(transport, dest.store, dest.clock.now, timeout_seconds=5)
        except Exception:  # a refused handshake: nothing to serve
            return
        if await conn.stream.receive_some():
            self.requests += 1
        await trio.aclose_forcefully(conn.stream)


def discovered(h: Harness, nursery: trio.Nursery) -> tuple[HttpOutbound, Dying, EndpointTable]:
    dying = Dying(h)

    async def connect(endpoint: Address) -> trio.abc.Stream:
        if endpoint == DYING:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(dying.serve, theirs)
            return ours
        return await h.destination.connect(endpoint)

    table = EndpointTable(frozenset(), eject_after=2, eject_seconds=60.0, discovered=True)
    table.replace([(DYING, h.orders_id), (HEALTHY, h.orders_id)], version=1)
    pool = MeshPool(h.config, h.runtime, connect, table=table)
    nursery.start_soon(pool.run)
    return HttpOutbound(h.config, h.runtime, pool), dying, table


async def client(h: Harness, outbound: HttpOutbound) -> trio.abc.Stream:
    ours, sidecar_end = trio.testing.memory_stream_pair()
    h.nursery.start_soon(outbound.handle, sidecar_end)
    return ours


async def test_an_idempotent_request_cut_by_a_dying_peer_is_retried_on_another_endpoint(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        outbound, dying, table = discovered(h, nursery)
        for _ in range(8):
            stream = await client(h, outbound)
            status, body, _ = status_and_body(await roundtrip(stream, GET))
            assert (status, body) == (200, b"/items/1")
            await stream.aclose()
        # Two failures (the first request, then the next the round robin sent there)
        # ejected it; every request still succeeded, on the other endpoint.
        assert dying.requests == 2
        assert outbound.retries == 2
        assert table.ejected(DYING, trio.current_time())
        assert len(h.destination.requests) == 8
        nursery.cancel_scope.cancel()


async def test_a_post_cut_by_a_dying_peer_is_not_retried(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        outbound, dying, _ = discovered(h, nursery)
        stream = await client(h, outbound)
        post = b"POST /orders HTTP/1.1\r\nhost: orders\r\ncontent-length: 5\r\n\r\nhello"
        status, body, _ = status_and_body(await roundtrip(stream, post, "POST"))
        assert status == 502
        assert b"127.0.0.1:9001" in body
        assert dying.requests == 1
        assert outbound.retries == 0
        assert h.destination.requests == []
        nursery.cancel_scope.cancel()


async def test_an_endpoint_that_left_the_set_gets_no_new_request(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        outbound, dying, table = discovered(h, nursery)
        table.replace([(HEALTHY, h.orders_id)], version=2)
        for _ in range(4):
            stream = await client(h, outbound)
            assert status_and_body(await roundtrip(stream, GET))[0] == 200
            await stream.aclose()
        assert dying.requests == 0
        assert outbound.retries == 0
        table.replace([], version=3)
        stream = await client(h, outbound)
        status, body, _ = status_and_body(await roundtrip(stream, GET))
        assert status == 503
        assert b"no endpoint of orders is registered" in body
        nursery.cancel_scope.cancel()
