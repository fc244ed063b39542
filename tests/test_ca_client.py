"""The CA client authenticates the CA by SPIFFE ID and fails over between addresses."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh_ca.client import CaClient, CaUnavailable
from mesh_ca.issuance import issue_leaf, make_csr
from mesh_ca.server.identity import server_context
from meshgate.identity import SpiffeId, TrustDomain
from meshgate.keys import generate_key, private_key_pem
from tests.ca_server_process import TRUST_DOMAIN, CaServer, running_ca_server

pytestmark = pytest.mark.integration


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


def _open_sockets() -> int:
    return sum(
        os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


async def test_renewing_again_and_again_keeps_no_connection_of_a_superseded_svid(
    server: CaServer,
) -> None:
    """A kept-alive mTLS connection belongs to the SVID it was opened with; once a renewal
    supersedes that SVID nothing uses it again. It used to stay in the idle pool forever
    (one socket per rotation, CLOSE-WAIT once the CA dropped it: ~4 fds a minute at 30 s
    SVIDs in the soak)."""
    sid = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/rotating")
    key = generate_key()
    leaf = issue_leaf(make_csr(key), sid, server.ca.signer, datetime.now(UTC))
    chain: tuple[x509.Certificate, ...] = (leaf, server.ca.signer.cert)
    async with CaClient([server.address], TrustDomain(TRUST_DOMAIN), server.bundles) as client:
        new_key = generate_key()
        issued = await client.renew(chain, key, new_key)
        chain, key = issued.chain, new_key
        before = _open_sockets()
        for _ in range(6):
            new_key = generate_key()
            issued = await client.renew(chain, key, new_key)
            chain, key = issued.chain, new_key
        assert issued.spiffe_id == sid
        # Each renewal's connection belonged to the SVID it superseded: closed, none kept.
        assert _open_sockets() <= before
        assert sum(len(pool) for pool in client._idle.values()) == 0


# A CA that answers badly: the CA's own SVID (so the client talks to it), canned replies.


def ca_server_svid_context(server: CaServer) -> ssl.SSLContext:
    key = generate_key()
    ca_id = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/mesh/ca")
    leaf = issue_leaf(make_csr(key), ca_id, server.ca.signer, datetime.now(UTC))
    chain = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (leaf, server.ca.signer.cert)
    )
    return server_context(chain, private_key_pem(key), server.bundles)


async def bad_ca(
    server: CaServer,
    answer: Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]],
    task_status: trio.TaskStatus[str],
) -> None:
    """Reads one whole request per connection, then lets `answer` write (and close)."""
    context = ca_server_svid_context(server)

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        http = h11.Connection(h11.SERVER)
        try:
            await tls.do_handshake()
            while http.their_state is not h11.DONE:
                if http.next_event() is h11.NEED_DATA:
                    http.receive_data(bytes(await tls.receive_some(65536)))
            await answer(tls)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    await trio.serve_listeners(handle, listeners)


def reply(status: int, body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n" % (status, len(body), extra)
    return head + body


def canned(data: bytes) -> Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]:
    async def answer(tls: trio.SSLStream[trio.SocketStream]) -> None:
        await tls.send_all(data)

    return answer


async def test_a_bundle_nested_past_the_parser_limit_is_an_unusable_answer(
    server: CaServer,
) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bad_ca, server, canned(reply(200, b"[" * 200_000)))
        async with CaClient([address], TrustDomain(TRUST_DOMAIN), server.bundles) as client:
            with pytest.raises(CaUnavailable) as caught:  # was a RecursionError out of the client
                await client.fetch_bundle()
        assert (caught.value.status, caught.value.code) == (200, "bad_response")
        assert "bundle" in caught.value.message
        nursery.cancel_scope.cancel()


async def test_an_issued_leaf_with_a_key_of_unknown_type_is_refused(server: CaServer) -> None:
    key = generate_key()
    sid = SpiffeId.workload(TRUST_DOMAIN, "odd", "key")
    leaf = issue_leaf(make_csr(key), sid, server.ca.signer, datetime.now(UTC))
    der = leaf.public_bytes(serialization.Encoding.DER)
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # OID 1.2.840.10045.2.1
    odd = x509.load_der_x509_certificate(
        der.replace(ec_public_key, bytes.fromhex("06072a8648ce3d0209"))
    )
    pem = serialization.Encoding.PEM
    body = json.dumps(
        {
            "spiffe_id": str(sid),
            "chain_pem": (odd.public_bytes(pem) + server.ca.signer.cert.public_bytes(pem)).decode(),
            "bundle_pem": server.ca.bundle.roots_pem().decode(),
            "serial": format(leaf.serial_number, "x"),
            "not_after": leaf.not_valid_after_utc.isoformat(),
        }
    ).encode()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bad_ca, server, canned(reply(200, body)))
        async with CaClient([address], TrustDomain(TRUST_DOMAIN), server.bundles) as client:
            with pytest.raises(CaUnavailable) as caught:  # was UnsupportedAlgorithm
                await client.bootstrap(server.token(sid), key)
        assert caught.value.code == "bad_response"
        assert "issued SVID refused" in caught.value.message
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("status", [302, 204])
async def test_an_answer_neither_200_nor_4xx_is_unusable_and_the_next_address_is_tried(
    server: CaServer, status: int
) -> None:
    """Not a refusal: the sidecar would drop its join token on a refusal (CaClientError)."""
    sid = SpiffeId.workload(TRUST_DOMAIN, "redirected", f"app{status}")
    answer = canned(reply(status, b"", b"location: https://elsewhere.example/\r\n"))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bad_ca, server, answer)
        async with CaClient([address], TrustDomain(TRUST_DOMAIN), server.bundles) as alone:
            with pytest.raises(CaUnavailable) as caught:
                await alone.bootstrap(server.token(sid), generate_key())
        assert caught.value.status == status
        assert "refused" not in str(caught.value)
        pair = [address, server.address]
        async with CaClient(pair, TrustDomain(TRUST_DOMAIN), server.bundles) as client:
            issued = await client.bootstrap(server.token(sid), generate_key())
        assert issued.spiffe_id == sid
        nursery.cancel_scope.cancel()


async def test_a_response_cut_off_says_what_happened(server: CaServer) -> None:
    cut = canned(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"keys"')
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bad_ca, server, cut)
        async with CaClient([address], TrustDomain(TRUST_DOMAIN), server.bundles) as client:
            with pytest.raises(CaUnavailable) as caught:
                await client.fetch_bundle()
            detail = caught.value.message.removeprefix(f"{address}:").strip()
        assert detail  # was empty: "127.0.0.1:PORT: "
        nursery.cancel_scope.cancel()
