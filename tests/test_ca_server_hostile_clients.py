"""A real CA server process on loopback against clients that misbehave on the wire."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio

from meshgate.transport.mtls import client_context
from tests.ca_server_process import CaServer, running_ca_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    with running_ca_server(tmp_path_factory.mktemp("ca")) as running:
        yield running
    assert running.process.returncode == 0, running.log()


async def exchange(server: CaServer, data: bytes) -> bytes:
    """Send `data` over TLS in full, then read until the server closes."""
    tcp = await trio.open_tcp_stream(server.host, server.port)
    stream = trio.SSLStream(tcp, client_context(server.bundles))
    received = b""
    try:
        with trio.fail_after(10):
            await stream.send_all(data)
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:
                pass  # the server closes without close_notify after "connection: close"
    finally:
        await trio.aclose_forcefully(stream)
    return received


async def access_lines(server: CaServer, path: str) -> list[dict[str, object]]:
    """The access-log lines for `path` (they go out in batches: wait for one)."""
    with trio.fail_after(5):
        while True:
            lines = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
            found = [line for line in lines if line.get("path") == path]
            if found:
                return found
            await trio.sleep(0.05)


async def test_a_body_far_over_the_limit_still_gets_its_413(server: CaServer) -> None:
    # The client sends the whole body before it reads, as HTTP clients do. A server that
    # closes with the body unread makes the kernel reset the connection, and the client
    # sees "connection reset" instead of the 413.
    body = b"A" * (2 * 1024 * 1024)
    head = (
        "POST /v1/bootstrap HTTP/1.1\r\nHost: ca\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    received = await exchange(server, head + body)
    assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"] == "body_too_large"


async def test_a_refused_request_is_logged_with_its_source(server: CaServer) -> None:
    head = b"POST /v1/renew HTTP/1.1\r\nHost: ca\r\ncontent-length: 99999999\r\n\r\n"
    assert (await exchange(server, head)).startswith(b"HTTP/1.1 413 ")
    [line] = await access_lines(server, "/v1/renew")
    assert (line["status"], line["source"]) == (413, "127.0.0.1")


async def test_a_repeated_head_changed_by_one_byte_is_refused_on_the_same_connection(
    server: CaServer,
) -> None:
    # The reader keeps the verdict of a head the connection repeats: the same bytes twice
    # are answered twice, and the third, one space away from them, is read afresh and
    # refused; pipelined, so all three arrive on one keep-alive connection.
    good = b"GET /v1/bundle HTTP/1.1\r\nHost: ca\r\naccept: application/json\r\n\r\n"
    bad = good.replace(b"accept:", b"accept :")
    received = await exchange(server, good + good + bad)
    responses = received.split(b"HTTP/1.1 ")[1:]
    assert [r[:3] for r in responses] == [b"200", b"200", b"400"], received[-300:]
    assert b"whitespace before the colon" in responses[2]
