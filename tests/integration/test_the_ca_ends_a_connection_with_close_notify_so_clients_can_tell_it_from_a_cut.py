"""A real `mesh-ca` server ends its connections with a TLS close_notify: after a response
with ``connection: close``, after a refused request head, and when a kept-alive client
closes first. Before the CA moved onto the shared `TlsStream` it only closed the socket, so
a strict TLS client (trio's `SSLStream`, which refuses a ragged EOF) could not tell the end
of the connection from an attacker or a network cutting it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

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


@contextlib.asynccontextmanager
async def _connect(server: CaServer) -> AsyncIterator[trio.SSLStream[trio.SocketStream]]:
    tcp = await trio.open_tcp_stream(server.host, server.port)
    # https_compatible=False (the default): a TCP EOF without close_notify is an error.
    stream = trio.SSLStream(tcp, client_context(server.bundles))
    try:
        await stream.do_handshake()
        yield stream
    finally:
        await trio.aclose_forcefully(tcp)


async def _read_to_the_end(stream: trio.SSLStream[trio.SocketStream]) -> bytes:
    """Everything the server sends until its close_notify; a cut raises BrokenResourceError."""
    received = bytearray()
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)


async def test_a_response_with_connection_close_ends_in_close_notify(server: CaServer) -> None:
    async with _connect(server) as stream:
        await stream.send_all(
            f"GET /healthz HTTP/1.1\r\nhost: {server.address}\r\nconnection: close\r\n\r\n".encode()
        )
        reply = await _read_to_the_end(stream)
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert reply.endswith(b'{"status":"ok"}')


async def test_a_refused_request_head_is_answered_then_ends_in_close_notify(
    server: CaServer,
) -> None:
    async with _connect(server) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
        reply = await _read_to_the_end(stream)
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert b"connection: close" in reply


async def test_when_a_kept_alive_client_closes_first_the_server_answers_its_close_notify(
    server: CaServer,
) -> None:
    async with _connect(server) as stream:
        request = f"GET /healthz HTTP/1.1\r\nhost: {server.address}\r\n\r\n".encode()
        await stream.send_all(request)
        with trio.fail_after(10):
            reply = await stream.receive_some(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        with trio.fail_after(10):
            # unwrap: our close_notify, then wait for the server's (an EOF without it raises).
            await stream.unwrap()
