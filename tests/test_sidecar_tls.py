"""Mesh handshakes over in-memory TLS: each SVID rule, secure naming, revocation, fail-closed."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshgate.clock import TrioWallClock
from meshgate.identity import SpiffeId, TrustDomain
from meshgate.transport.mtls import client_context, mesh_context
from meshgate.transport.tls_stream import TlsStream
from sidecar.identity.credentials import CredentialStore, Revocations
from sidecar.transport.mesh_tls import (
    HandshakeFailure,
    MeshConnection,
    MeshTlsError,
    accept_mesh,
    connect_mesh,
)
from tests.pki import Leaf
from tests.pki import TestPki as Pki
from tests.sidecar_helpers import bundle_with_intermediates, store_for

NOW = datetime.now(UTC)
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(now=NOW)


@pytest.fixture(scope="module")
def other_domain() -> Pki:
    return Pki(trust_domain=TrustDomain("other.org"), now=NOW)


def _now() -> datetime:
    return datetime.now(UTC)


async def _run_both(
    first: Callable[[], Awaitable[object]], second: Callable[[], Awaitable[object]]
) -> tuple[object, object]:
    results: list[object] = [None, None]

    async def run(index: int, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            result = await fn()
            if isinstance(result, MeshConnection):
                await result.stream.aclose()  # lets the other side finish
            results[index] = result
        except (MeshTlsError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            results[index] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, first)
        nursery.start_soon(run, 1, second)
    return results[0], results[1]


async def _plain_peer(stream: TlsStream) -> TlsStream:
    from meshgate.transport.tls_stream import TlsError

    try:
        await stream.do_handshake()
        await stream.receive_some()  # a server's refusal arrives as an alert or EOF
    except (TlsError, trio.BrokenResourceError):
        pass
    await stream.aclose()
    return stream


async def _inbound_result(
    server_store: CredentialStore, client: ssl.SSLContext, now: Callable[[], datetime] = _now
) -> object:
    left, right = trio.testing.memory_stream_pair()
    server, _ = await _run_both(
        lambda: accept_mesh(right, server_store, now, timeout_seconds=TIMEOUT),
        lambda: _plain_peer(TlsStream(left, client, server_side=False)),
    )
    return server


def _client(leaf: Leaf, pki: Pki) -> ssl.SSLContext:
    return mesh_context("client", leaf.chain_pem(), leaf.key_pem(), pki.bundles)


@pytest.fixture
def inbound_store(pki: Pki, other_domain: Pki) -> CredentialStore:
    leaf = pki.leaf(pki.spiffe_id("ns", "server"))
    return store_for(leaf, bundle_with_intermediates(pki, other_domain), NOW)


async def test_a_valid_svid_is_accepted_and_named(pki: Pki, inbound_store: CredentialStore) -> None:
    peer = pki.spiffe_id("ns", "client")
    result = await _inbound_result(inbound_store, _client(pki.leaf(peer), pki))
    assert isinstance(result, MeshConnection)
    assert result.peer_id == peer
    assert result.stream.version() == "TLSv1.3"
    assert result.expires_at <= result.credentials.not_after


def _uri(pki: Pki) -> list[str]:
    return [str(pki.spiffe_id("ns", "client"))]


BROKEN_LEAVES: list[tuple[str, Callable[[Pki], Leaf], HandshakeFailure]] = [
    ("leaf_with_ca_true", lambda p: p.raw_leaf(_uri(p), ca=True), HandshakeFailure.BAD_SVID),
    (
        "two_uri_sans",
        lambda p: p.raw_leaf([*_uri(p), "spiffe://example.org/ns/x/svc/y"]),
        HandshakeFailure.BAD_SVID,
    ),
    ("no_key_usage", lambda p: p.raw_leaf(_uri(p), key_usage=None), HandshakeFailure.BAD_SVID),
    (
        "server_auth_only_eku",
        lambda p: p.raw_leaf(_uri(p), ekus=[ExtendedKeyUsageOID.SERVER_AUTH]),
        HandshakeFailure.BAD_SVID,
    ),
    (
        "expired",
        lambda p: p.raw_leaf(
            _uri(p), not_before=NOW - timedelta(hours=2), not_after=NOW - timedelta(hours=1)
        ),
        HandshakeFailure.EXPIRED,
    ),
    (
        "not_yet_valid",
        lambda p: p.raw_leaf(
            _uri(p), not_before=NOW + timedelta(hours=1), not_after=NOW + timedelta(hours=2)
        ),
        HandshakeFailure.NOT_YET_VALID,
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in BROKEN_LEAVES], ids=[n for n, _, _ in BROKEN_LEAVES]
)
async def test_inbound_refuses_a_leaf_that_breaks_an_svid_rule(
    pki: Pki,
    inbound_store: CredentialStore,
    make: Callable[[Pki], Leaf],
    reason: HandshakeFailure,
) -> None:
    result = await _inbound_result(inbound_store, _client(make(pki), pki))
    assert isinstance(result, MeshTlsError), result
    assert result.reason is reason


async def test_inbound_refuses_an_id_signed_by_another_trust_domains_ca(
    pki: Pki, other_domain: Pki, inbound_store: CredentialStore
) -> None:
    # other.org's CA is trusted (federation), but it must not mint example.org IDs.
    forged = other_domain.raw_leaf(_uri(pki))
    result = await _inbound_result(inbound_store, _client(forged, other_domain))
    assert isinstance(result, MeshTlsError)
    assert result.reason is HandshakeFailure.UNKNOWN_CA


async def test_inbound_refuses_an_unknown_root(inbound_store: CredentialStore) -> None:
    stranger = Pki(now=NOW)
    leaf = stranger.leaf(stranger.spiffe_id("ns", "client"))
    result = await _inbound_result(inbound_store, _client(leaf, stranger))
    assert isinstance(result, MeshTlsError)
    assert result.reason is HandshakeFailure.UNKNOWN_CA


async def test_inbound_refuses_a_client_without_certificate(
    pki: Pki, inbound_store: CredentialStore
) -> None:
    result = await _inbound_result(inbound_store, client_context(pki.bundles))
    assert isinstance(result, MeshTlsError)
    assert result.reason is HandshakeFailure.NO_CLIENT_CERT


@pytest.mark.parametrize("by", ["spiffe_id", "serial"])
async def test_inbound_refuses_a_revoked_peer(
    pki: Pki, inbound_store: CredentialStore, by: str
) -> None:
    leaf = pki.leaf(pki.spiffe_id("ns", "client"))
    inbound_store.publish_revocations(
        Revocations(spiffe_ids=frozenset({pki.spiffe_id("ns", "client")}))
        if by == "spiffe_id"
        else Revocations(serials=frozenset({leaf.cert.serial_number}))
    )
    result = await _inbound_result(inbound_store, _client(leaf, pki))
    assert isinstance(result, MeshTlsError)
    assert result.reason is HandshakeFailure.REVOKED


async def test_a_silent_peer_times_out(
    inbound_store: CredentialStore, autojump_clock: object
) -> None:
    _left, right = trio.testing.memory_stream_pair()
    with pytest.raises(MeshTlsError) as info:
        await accept_mesh(right, inbound_store, _now, timeout_seconds=TIMEOUT)
    assert info.value.reason is HandshakeFailure.HANDSHAKE_TIMEOUT


async def _outbound_result(
    pki: Pki, upstream: Leaf, expected: set[SpiffeId], store: CredentialStore | None = None
) -> object:
    own = store or store_for(
        pki.leaf(pki.spiffe_id("ns", "client")), bundle_with_intermediates(pki), NOW
    )
    server_ctx = mesh_context("server", upstream.chain_pem(), upstream.key_pem(), pki.bundles)
    left, right = trio.testing.memory_stream_pair()
    client, _ = await _run_both(
        lambda: connect_mesh(
            left, own, _now, expected=frozenset(expected), timeout_seconds=TIMEOUT
        ),
        lambda: _plain_peer(TlsStream(right, server_ctx, server_side=True)),
    )
    return client


async def test_outbound_accepts_the_configured_upstream_id(pki: Pki) -> None:
    api = pki.spiffe_id("ns", "api")
    result = await _outbound_result(pki, pki.leaf(api), {api})
    assert isinstance(result, MeshConnection)
    assert result.peer_id == api


async def test_outbound_refuses_a_valid_svid_with_another_id(pki: Pki) -> None:
    impostor = pki.leaf(pki.spiffe_id("ns", "not-api"))
    result = await _outbound_result(pki, impostor, {pki.spiffe_id("ns", "api")})
    assert isinstance(result, MeshTlsError)
    assert result.reason is HandshakeFailure.IDENTITY_MISMATCH
    assert "not-api" in result.detail


async def test_outbound_refuses_a_revoked_upstream(pki: Pki) -> None:
    api = pki.spiffe_id("ns", "api")
    own = store_for(pki.leaf(pki.spiffe_id("ns", "client")), bundle_with_intermediates(pki), NOW)
    own.publish_revocations(Revocations(spiffe_ids=frozenset({api})))
    result = await _outbound_result(pki, pki.leaf(api), {api}, own)
    assert isinstance(result, MeshTlsError)
    assert result.reason is HandshakeFailure.REVOKED


async def test_expired_own_credentials_refuse_both_directions(
    pki: Pki, autojump_clock: object
) -> None:
    clock = TrioWallClock(NOW)
    own = store_for(
        pki.leaf(pki.spiffe_id("ns", "me"), ttl=timedelta(minutes=10)),
        bundle_with_intermediates(pki),
        NOW,
    )
    await trio.sleep(11 * 60)  # MockClock: eleven simulated minutes
    left, right = trio.testing.memory_stream_pair()
    with pytest.raises(MeshTlsError) as inbound:
        await accept_mesh(right, own, clock.now, timeout_seconds=TIMEOUT)
    with pytest.raises(MeshTlsError) as outbound:
        await connect_mesh(
            left, own, clock.now, expected=frozenset({pki.spiffe_id()}), timeout_seconds=TIMEOUT
        )
    assert inbound.value.reason is outbound.value.reason is HandshakeFailure.NO_CREDENTIALS
    # Nothing was sent: no plaintext fallback, not even a ClientHello.
    with pytest.raises(trio.ClosedResourceError):
        await right.receive_some()


async def test_no_credentials_yet_refuses() -> None:
    _left, right = trio.testing.memory_stream_pair()
    with pytest.raises(MeshTlsError) as info:
        await accept_mesh(right, CredentialStore(), _now, timeout_seconds=TIMEOUT)
    assert info.value.reason is HandshakeFailure.NO_CREDENTIALS
