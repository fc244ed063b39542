"""TlsStream passes trio's stream conformance suite, half-close included, over real TLS 1.3."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

from meshgate.transport.mtls import mesh_context
from meshgate.transport.tls_stream import TlsError, TlsStream
from tests.pki import TestPki as Pki


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = Pki()
    server, client = pki.leaf(pki.spiffe_id("ns", "server")), pki.leaf(pki.spiffe_id("ns", "c"))
    return (
        mesh_context("server", server.chain_pem(), server.key_pem(), pki.bundles),
        mesh_context("client", client.chain_pem(), client.key_pem(), pki.bundles),
    )


async def _pair(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], *, lockstep: bool = False
) -> tuple[TlsStream, TlsStream]:
    left, right = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    client = TlsStream(left, contexts[1], server_side=False)
    server = TlsStream(right, contexts[0], server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def test_conforms_to_half_closeable_stream_over_memory_streams(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def make() -> tuple[TlsStream, TlsStream]:
        return await _pair(contexts)

    await trio.testing.check_half_closeable_stream(make, None)


async def test_conforms_to_half_closeable_stream_over_lockstep_streams(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def make() -> tuple[TlsStream, TlsStream]:
        return await _pair(contexts, lockstep=True)

    await trio.testing.check_half_closeable_stream(make, None)


async def test_peer_can_reply_after_receiving_close_notify(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    client, server = await _pair(contexts)
    await client.send_all(b"request")
    await client.send_eof()
    assert await server.receive_some() == b"request"
    assert await server.receive_some() == b""
    await server.send_all(b"reply")
    await server.aclose()
    assert await client.receive_some() == b"reply"
    assert await client.receive_some() == b""
    assert client.version() == "TLSv1.3"
    await client.aclose()


async def test_transport_eof_without_close_notify_is_a_truncation(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    client, server = await _pair(contexts)
    await client.send_all(b"partial")
    await client.transport.aclose()
    assert await server.receive_some() == b"partial"
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    await server.aclose()


async def test_handshake_failure_is_a_tls_error_with_the_ssl_cause(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    stranger = Pki()
    leaf = stranger.leaf(stranger.spiffe_id())
    foreign = mesh_context("client", leaf.chain_pem(), leaf.key_pem(), stranger.bundles)
    left, right = trio.testing.memory_stream_pair()
    client = TlsStream(left, foreign, server_side=False)
    server = TlsStream(right, contexts[0], server_side=True)
    errors: list[BaseException] = []

    async def run(stream: TlsStream) -> None:
        try:
            await stream.do_handshake()
        except (TlsError, trio.BrokenResourceError) as exc:
            errors.append(exc)
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, client)
        nursery.start_soon(run, server)
    assert any(isinstance(e, TlsError) and isinstance(e.__cause__, ssl.SSLError) for e in errors)


async def test_send_eof_keeps_the_peers_records_that_are_not_read_yet(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    # Regression: Python's unwrap() reads after sending close_notify, and OpenSSL drops
    # application data it meets there. Half-close must not lose the peer's bytes.
    client, server = await _pair(contexts)
    payload = bytes(range(256)) * 1024  # 256 KiB: many records, some still undecrypted
    await server.send_all(payload)
    await server.send_eof()
    received = bytearray(await client.receive_some(1))  # pulls records into the BIO
    await client.send_eof()
    while data := await client.receive_some(1000):
        received += data
    assert received == payload
    assert await server.receive_some() == b""
    await client.aclose()
    await server.aclose()
