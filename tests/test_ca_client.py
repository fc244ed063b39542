"""The CA client authenticates the CA by SPIFFE ID and fails over between addresses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from mesh_ca.client import CaClient, CaUnavailable
from mesh_ca.identity import SpiffeId, TrustDomain
from mesh_ca.issuance import issue_leaf, make_csr
from mesh_ca.keys import generate_key, private_key_pem
from mesh_ca.server.identity import server_context
from tests.ca_server_process import TRUST_DOMAIN, CaServer, running_ca_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    with running_ca_server(tmp_path_factory.mktemp("ca")) as running:
        yield running


async def impostor(
    server: CaServer, spiffe_id: SpiffeId, task_status: trio.TaskStatus[int]
) -> None:
    """A TLS server with a valid SVID of the same CA, but not the CA's own ID."""
    key = generate_key()
    leaf = issue_leaf(make_csr(key), spiffe_id, server.ca.signer, datetime.now(UTC))
    chain = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (leaf, server.ca.signer.cert)
    )
    context = server_context(chain, private_key_pem(key), server.bundles)

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            await tls.do_handshake()
            await tls.receive_some(65536)
            await tls.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_the_client_refuses_a_server_whose_svid_is_not_the_ca(server: CaServer) -> None:
    fake_id = SpiffeId.workload(TRUST_DOMAIN, "evil", "ca")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(impostor, server, fake_id)
        client = CaClient([f"127.0.0.1:{port}"], TrustDomain(TRUST_DOMAIN), server.bundles)
        assert not await client.health()
        with pytest.raises(CaUnavailable) as caught:
            await client.bootstrap(
                server.token(SpiffeId.workload(TRUST_DOMAIN, "a", "b")), generate_key()
            )
        assert caught.value.code == "ca_identity"
        assert str(fake_id) in caught.value.message
        nursery.cancel_scope.cancel()


async def test_the_client_fails_over_to_the_next_address(server: CaServer) -> None:
    sid = SpiffeId.workload(TRUST_DOMAIN, "failover", "app")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(impostor, server, SpiffeId.workload(TRUST_DOMAIN, "x", "y"))
        closed = await trio.open_tcp_listeners(0, host="127.0.0.1")
        dead = closed[0].socket.getsockname()[1]
        await closed[0].aclose()  # nothing listens there any more
        addresses = [f"127.0.0.1:{dead}", f"127.0.0.1:{port}", server.address]
        async with CaClient(addresses, TrustDomain(TRUST_DOMAIN), server.bundles) as client:
            issued = await client.bootstrap(server.token(sid), generate_key())
            assert issued.spiffe_id == sid
            # Kept alive: the next call reuses the connection to the working address.
            assert await client.health()
        nursery.cancel_scope.cancel()


async def test_the_client_keeps_connections_alive_between_calls(server: CaServer) -> None:
    async with CaClient([server.address], TrustDomain(TRUST_DOMAIN), server.bundles) as client:
        for _ in range(5):
            await client.fetch_bundle()
        pools = list(client._idle.values())
        assert [len(p) for p in pools] == [1]
        conn = pools[0][0]
        await client.fetch_revocations()
        assert client._idle[(0, b"")] == [conn]
