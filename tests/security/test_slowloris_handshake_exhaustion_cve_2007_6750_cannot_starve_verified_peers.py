"""Attack class: connection-slot exhaustion by sockets that never finish (Slowloris).

Advisory: CVE-2007-6750 (Slowloris: partial requests hold every worker of a server until
its timeout). Here the partial step is the TLS handshake: sockets that never send a
ClientHello used to hold every inbound slot (`max_connections`) until the handshake
timeout, and verified peers were reset.

Against a real `mesh-sidecar` (tcp inbound) with small caps: silent sockets from one
address get only `max_handshaking_per_source` pending slots; silent sockets from many
addresses get only `max_handshaking_connections`, and a new connection evicts the
oldest pending one; a verified peer from another address still handshakes and reaches
the app. A silent socket is closed after `client_hello_timeout_seconds`.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio

from meshgate.transport.mtls import mesh_context
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, Sidecar, free_port, running_sidecar, write_config, write_identity

pytestmark = pytest.mark.integration


def _metric(sidecar: Sidecar, reason: str) -> float:
    url = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    pattern = (
        r'meshgate_connections_refused_total\{direction="inbound",reason="'
        + re.escape(reason)
        + r'"\} ([0-9.e+]+)'
    )
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


async def _until(sidecar: Sidecar, reason: str, at_least: float) -> None:
    """Wait (with a deadline) until the refusal counter for `reason` reaches `at_least`."""
    with trio.fail_after(20):
        while await trio.to_thread.run_sync(_metric, sidecar, reason) < at_least:
            await trio.sleep(0.05)


async def _connect_from(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _verified_exchange(source: str, port: int, context: ssl.SSLContext) -> bytes:
    stream = trio.SSLStream(await _connect_from(source, port), context)
    try:
        with trio.fail_after(15):
            await stream.do_handshake()
            await stream.send_all(b"hello from a verified peer")
            return bytes(await stream.receive_some(65536))
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def _silent(sources: list[str], port: int) -> AsyncIterator[list[trio.SocketStream]]:
    streams = [await _connect_from(source, port) for source in sources]
    try:
        yield streams
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


@contextmanager
def _sidecar(
    tmp: Path, pki: Pki, app_port: int, **settings: object
) -> Iterator[tuple[Sidecar, int, ssl.SSLContext]]:
    peer_id, own_id = pki.spiffe_id("shop", "frontend"), pki.spiffe_id("shop", "orders")
    files = write_identity(pki, pki.leaf(own_id), tmp / "b")
    port, admin = free_port(), free_port()
    limits = {k: v for k, v in settings.items() if k.startswith("max_")}
    timeouts = {k: v for k, v in settings.items() if k.endswith("_seconds")}
    config = write_config(
        tmp / "b.toml",
        {
            "identity": {"spiffe_id": str(own_id), **files},
            "inbound": {
                "listen": f"127.0.0.1:{port}",
                "app": f"127.0.0.1:{app_port}",
                "service": "orders",
                "allowed_ids": [str(peer_id)],
            },
            "admin": {"listen": f"127.0.0.1:{admin}"},
            "limits": limits,
            "timeouts": timeouts,
        },
    )
    peer = pki.leaf(peer_id)
    context = mesh_context("client", peer.chain_pem(), peer.key_pem(), pki.bundles)
    with running_sidecar(config, admin) as sidecar:
        yield sidecar, port, context


async def test_silent_sockets_from_one_or_many_sources_cannot_take_a_verified_peers_slot(
    tmp_path: Path,
) -> None:
    pki, app = Pki(), EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        with _sidecar(
            tmp_path,
            pki,
            app.port,
            max_connections=12,
            max_handshaking_connections=6,
            max_handshaking_per_source=3,
            client_hello_timeout_seconds=120,
            handshake_timeout_seconds=120,
        ) as (sidecar, port, context):
            # One address opens as many silent sockets as there are slots in all.
            async with _silent(["127.0.0.1"] * 12, port):
                await _until(sidecar, "max_handshaking_per_source", 9)
                reply = await _verified_exchange("127.0.0.2", port, context)
                assert reply == b"hello from a verified peer"
                # Many addresses, one silent socket each: the pending budget (6) fills,
                # and each newcomer evicts the oldest pending socket instead of waiting.
                sources = [f"127.0.0.{n}" for n in range(10, 20)]
                async with _silent(sources, port):
                    await _until(sidecar, "handshake_evicted", 7)
                    reply = await _verified_exchange("127.0.0.3", port, context)
                    assert reply == b"hello from a verified peer"
            assert app.connections == 2  # only the verified peers reached the app
        nursery.cancel_scope.cancel()


async def test_a_socket_that_never_sends_a_client_hello_is_closed_early(tmp_path: Path) -> None:
    pki, app = Pki(), EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        with _sidecar(
            tmp_path, pki, app.port, client_hello_timeout_seconds=0.5, handshake_timeout_seconds=60
        ) as (sidecar, port, _):
            async with _silent(["127.0.0.1"], port) as (stream,):
                with trio.fail_after(20):
                    with contextlib.suppress(trio.BrokenResourceError):  # a reset is a close too
                        assert await stream.receive_some(1024) == b""  # closed by the sidecar
            await _until(sidecar, "client_hello_timeout", 1)
            assert '"reason":"client_hello_timeout"' in sidecar.log()
        assert app.connections == 0
        nursery.cancel_scope.cancel()
