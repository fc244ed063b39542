"""Request and response bodies through the http inbound: streamed, re-framed by us, limited."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from sidecar.config import TimeoutsConfig
from tests.http_inbound_harness import Harness, copy_policies, read_responses


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return copy_policies(tmp_path / "policies")


POST_HEAD = b"POST /orders HTTP/1.1\r\nhost: orders\r\n"


async def test_a_chunked_body_is_streamed_to_the_app_before_it_ends(shop: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(POST_HEAD + b"transfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
        with trio.fail_after(5):
            await h.app.body_seen.wait()  # the app has bytes while the client is still sending
        assert h.app.requests[0].body == b"hello"
        await stream.send_all(b"6\r\n world\r\n0\r\nx-trailer: dropped\r\n\r\n")
        [response] = await read_responses(stream, ["POST"])
        assert response.status == 200
        [seen] = h.app.requests
        assert seen.body == b"hello world"
        assert seen.values("transfer-encoding") == ["chunked"]
        assert seen.values("x-trailer") == []
        nursery.cancel_scope.cancel()


async def test_a_content_length_body_arrives_whole_and_the_connection_is_reused(
    shop: Path,
) -> None:
    body = bytes(range(256)) * 512  # 128 KiB: several TLS records and reads
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        request = POST_HEAD + b"content-length: %d\r\n\r\n%s" % (len(body), body)
        await stream.send_all(request + request)
        responses = await read_responses(stream, ["POST", "POST"])
        assert [r.status for r in responses] == [200, 200]
        assert [r.body for r in h.app.requests] == [body, body]
        assert h.app.requests[0].values("content-length") == [str(len(body))]
        assert h.app.connections == 1
        nursery.cancel_scope.cancel()


async def test_a_denied_request_with_a_body_is_refused_and_the_connection_closed(
    shop: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        stream = await h.connect()
        await stream.send_all(
            b"PUT /orders/1 HTTP/1.1\r\nhost: orders\r\ncontent-length: 5\r\n\r\nhello"
        )
        [response] = await read_responses(stream, ["PUT"])
        assert response.status == 403
        assert response.header("connection") == "close"
        assert h.app.connections == 0
        nursery.cancel_scope.cancel()


async def test_a_body_that_stalls_gets_408_and_the_app_connection_is_dropped(
    shop: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop, timeouts=TimeoutsConfig(body_idle_timeout_seconds=3))
        stream = await h.connect()
        await stream.send_all(POST_HEAD + b"content-length: 10\r\n\r\nabc")
        [response] = await read_responses(stream, ["POST"])
        assert response.status == 408
        assert h.inbound.pool.idle == 0
        nursery.cancel_scope.cancel()


async def test_a_response_without_length_is_chunked_for_http11_clients(shop: Path) -> None:
    async def until_close_app() -> trio.abc.Stream:
        sidecar_end, app_end = trio.testing.memory_stream_pair()

        async def serve() -> None:
            await app_end.receive_some()
            await app_end.send_all(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
            await app_end.send_all(b"part two")
            await app_end.aclose()

        nursery.start_soon(serve)
        return sidecar_end

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, shop)
        h.inbound.pool._connect = until_close_app
        stream = await h.connect()
        await stream.send_all(b"GET /orders/1 HTTP/1.1\r\nhost: orders\r\n\r\n")
        [response] = await read_responses(stream, ["GET"])
        assert response.body == b"part one, part two"
        assert response.header("transfer-encoding") == "chunked"
        assert response.header("connection") is None  # the client connection stays open
        nursery.cancel_scope.cancel()
