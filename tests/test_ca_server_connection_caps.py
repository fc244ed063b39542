"""The CA server's connection caps over real loopback sockets: one source cannot take them all."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from mesh_ca.server.http import CaHttpServer, ServerLimits
from meshgate.transport.mtls import client_context
from tests.ca_server_process import https_request, running_ca_server
from tests.test_ca_server_shell import make_server

pytestmark = pytest.mark.integration

LIMITS = ServerLimits(max_connections=8, max_connections_per_source=4, threaded_handlers=False)


async def refused(stream: trio.SocketStream) -> bool:
    """True when the server closes `stream` without a word."""
    with trio.fail_after(5):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True


async def wait_for_connections(server: CaHttpServer, count: int) -> None:
    with trio.fail_after(5):
        while server.connections != count:
            await trio.sleep(0.01)


async def test_one_source_holding_connections_does_not_lock_out_another(tmp_path: Path) -> None:
    server, bundles = make_server(tmp_path, LIMITS)

    async def handler(stream: trio.SocketStream) -> None:
        await server.handle_connection(stream, str(stream.socket.getpeername()[0]))

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        # A client that opens connections and never says anything (up to the handshake
        # timeout each), from one address.
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        await wait_for_connections(server, 4)
        extra = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        assert [await refused(stream) for stream in extra] == [True] * 4
        assert server.connections == 4
        # Another address still gets served.
        tcp = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
        tls = trio.SSLStream(tcp, client_context(bundles))
        with trio.fail_after(10):
            await tls.send_all(b"GET /healthz HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
            assert (await tls.receive_some(65536)).startswith(b"HTTP/1.1 200 OK")
        for stream in [*held, *extra, tls]:
            await trio.aclose_forcefully(stream)
        await wait_for_connections(server, 0)  # every slot is given back
        assert server.connections_per_source == {}  # no entry left behind
        nursery.cancel_scope.cancel()


async def test_the_per_source_cap_comes_from_ca_toml(tmp_path: Path) -> None:
    # server.max_connections_per_source in the CA config reaches the real `mesh-ca serve`.
    with running_ca_server(tmp_path, max_connections_per_source=2) as running:
        held = [await trio.open_tcp_stream(running.host, running.port) for _ in range(2)]
        await trio.sleep(0.5)  # both accepted and waiting for their handshakes
        with trio.fail_after(10):
            while "max_connections_per_source" not in running.log():
                third = await trio.open_tcp_stream(running.host, running.port)
                assert await refused(third)
                await trio.aclose_forcefully(third)
                await trio.sleep(0.05)
        for stream in held:
            await trio.aclose_forcefully(stream)
        reply = await https_request(running, "GET", "/healthz")  # freed slots serve again
        assert reply.status == 200
