"""Federation, pure parts and in-memory TLS: bundles kept per trust domain, never mixed.

A federated trust domain's bundle holds its roots only; its intermediates come from the
chain its workloads send. Each peer is verified against its own trust domain's bundle, so
a federated CA can mint neither a local ID nor a third domain's; a trust domain without a
bundle is refused with a reason that names it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from mesh_ca.config import ConfigError, config_from_mapping
from mesh_ca.federation.config import FederatedDomainConfig
from mesh_ca.federation.state import FederationState
from meshgate.identity import (
    BundleError,
    BundleSet,
    SvidError,
    SvidFailure,
    TrustBundle,
    TrustDomain,
    verify_svid,
)
from meshgate.identity.federation import (
    FederationError,
    federated_bundles_document,
    merge_federated,
    parse_endpoint_url,
    parse_federated_bundles,
    refresh_delay_seconds,
)
from meshgate.transport.mtls import mesh_context
from meshgate.transport.tls_stream import TlsStream
from sidecar.identity.federation import apply_federated
from sidecar.transport.mesh_tls import HandshakeFailure, MeshConnection, MeshTlsError, accept_mesh
from tests.pki import TestPki as Pki
from tests.sidecar_helpers import store_for

NOW = datetime.now(UTC)
A, B, C = TrustDomain("a.example"), TrustDomain("b.example"), TrustDomain("c.example")


@pytest.fixture(scope="module")
def a() -> Pki:
    return Pki(trust_domain=A, now=NOW)


@pytest.fixture(scope="module")
def b() -> Pki:
    return Pki(trust_domain=B, now=NOW)


@pytest.fixture(scope="module")
def c() -> Pki:
    return Pki(trust_domain=C, now=NOW)


# -- verification picks the peer's own trust domain's bundle --------------------------------


def test_a_federated_leaf_verifies_with_the_intermediate_it_sent(a: Pki, b: Pki) -> None:
    leaf = b.leaf(b.spiffe_id("shop", "orders"))
    bundles = BundleSet.of(a.bundle, b.bundle)  # roots only, as a SPIFFE bundle carries
    verified = verify_svid(leaf.cert, leaf.chain, bundles, NOW)
    assert verified.spiffe_id.trust_domain == B
    assert verified.intermediates == leaf.chain
    with pytest.raises(SvidError) as refused:  # without its chain there is no path
        verify_svid(leaf.cert, (), bundles, NOW)
    assert refused.value.reason is SvidFailure.UNTRUSTED


def test_a_federated_ca_cannot_mint_a_local_id(a: Pki, b: Pki) -> None:
    forged = b.raw_leaf([str(a.spiffe_id("ops", "admin"))])
    with pytest.raises(SvidError) as refused:
        verify_svid(forged.cert, forged.chain, BundleSet.of(a.bundle, b.bundle), NOW)
    assert refused.value.reason is SvidFailure.UNTRUSTED
    assert "a.example bundle" in str(refused.value)


def test_a_federated_ca_cannot_mint_a_third_domains_id(a: Pki, b: Pki, c: Pki) -> None:
    forged = b.raw_leaf([str(c.spiffe_id("shop", "web"))])
    with pytest.raises(SvidError) as refused:
        verify_svid(forged.cert, forged.chain, BundleSet.of(a.bundle, b.bundle), NOW)
    assert refused.value.reason is SvidFailure.UNKNOWN_TRUST_DOMAIN
    assert "c.example" in str(refused.value)
    assert "not federated" in str(refused.value)


# -- the same over real TLS (in memory): the chain comes from the handshake ------------------


async def _accept(server: Pki, bundles: BundleSet, client: Pki, leaf_of: Pki) -> object:
    """`leaf_of`'s CA issues the client's SVID; `client`'s roots are what it trusts."""
    server_leaf = server.leaf(server.spiffe_id("shop", "orders"))
    store = store_for(server_leaf, bundles, NOW)
    client_leaf = leaf_of.leaf(leaf_of.spiffe_id("shop", "web"))
    context = mesh_context("client", client_leaf.chain_pem(), client_leaf.key_pem(), client.bundles)
    left, right = trio.testing.memory_stream_pair()
    result: list[object] = []

    async def serve() -> None:
        try:
            conn = await accept_mesh(right, store, lambda: NOW, timeout_seconds=5)
            result.append(conn)
            await conn.stream.aclose()
        except MeshTlsError as exc:
            result.append(exc)

    async def connect() -> None:
        stream = TlsStream(left, context, server_side=False)
        try:
            await stream.do_handshake()
            await stream.receive_some()
        except Exception:
            pass
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(connect)
    return result[0]


async def test_a_federated_workload_is_accepted_over_tls_and_named(a: Pki, b: Pki) -> None:
    # B trusts a.example's roots only (no intermediates): the client's chain supplies it.
    result = await _accept(b, BundleSet.of(b.bundle, a.bundle), b, a)
    assert isinstance(result, MeshConnection), result
    assert result.peer_id == a.spiffe_id("shop", "web")
    assert result.peer.intermediates  # kept to re-check the peer when bundles change


async def test_an_unfederated_workload_is_refused_with_the_domains_held(
    a: Pki, b: Pki, c: Pki
) -> None:
    result = await _accept(b, BundleSet.of(b.bundle, a.bundle), b, c)
    assert isinstance(result, MeshTlsError)
    assert result.reason is HandshakeFailure.UNKNOWN_CA
    assert "(a.example, b.example)" in result.detail
    assert "unfederated trust domain" in result.detail


# -- the federated-bundles document and merging ------------------------------------------------


def test_the_document_round_trips_and_keeps_each_bundle_under_its_domain(a: Pki, b: Pki) -> None:
    doc = json.dumps(federated_bundles_document([b.bundle, a.bundle]))
    parsed = parse_federated_bundles(doc, C)
    assert set(parsed) == {A, B}
    assert parsed[A].roots == (a.root,)
    assert parsed[B].roots == (b.root,)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ('{"trust_domains": {"c.example": {"keys": []}}}', "own trust domain"),
        ('{"trust_domains": {"B.example": {"keys": []}}}', "B.example"),
        ('{"trust_domains": {"a.example": {"keys": []}, "a.example": {"keys": []}}}', "duplicate"),
        ('{"trust_domains": {"a.example": {"nokeys": []}}}', "keys"),
        ('{"bundles": {}}', "trust_domains"),
        ("[", "not JSON"),
    ],
)
def test_a_bad_document_is_refused_whole(document: str, problem: str) -> None:
    with pytest.raises(FederationError, match=problem):
        parse_federated_bundles(document, C)


def test_merging_keeps_the_local_bundle_and_drops_what_is_no_longer_federated(
    a: Pki, b: Pki, c: Pki
) -> None:
    current = BundleSet.of(a.bundle, b.bundle)
    impostor = TrustBundle(A, (c.root,))  # "a.example" from the CA's document: never used
    merged = merge_federated(current, A, BundleSet.of(impostor, c.bundle))
    assert set(merged) == {A, C}
    assert merged[A] is current[A]


def test_apply_says_what_changed_and_keeps_the_set_when_nothing_did(a: Pki, b: Pki, c: Pki) -> None:
    current = BundleSet.of(a.bundle, b.bundle)
    same = apply_federated(current, A, BundleSet.of(TrustBundle(B, (b.root,), sequence=9)))
    assert not same.changed
    assert same.bundles is current
    update = apply_federated(current, A, BundleSet.of(c.bundle))
    assert (update.added, update.removed) == ((C,), (B,))
    assert update.describe() == "now trusts c.example; no longer trusts b.example"
    rotated = apply_federated(current, A, BundleSet.of(TrustBundle(B, (b.root, c.root))))
    assert rotated.updated == (B,)
    assert rotated.changed


# -- endpoint URLs, refresh timing, config --------------------------------------------------


def test_endpoint_urls_are_https_without_userinfo() -> None:
    url = parse_endpoint_url("https://ca.b.example/v1/bundle?x=1")
    assert (url.host, url.port, url.target) == ("ca.b.example", 443, "/v1/bundle?x=1")
    assert parse_endpoint_url("https://[::1]:8443").authority == "[::1]:8443"
    for bad in ("http://h/", "https://u:p@h/", "https://h/#f", "https:///x", "https://h/a b"):
        with pytest.raises(FederationError):
            parse_endpoint_url(bad)


def test_refresh_follows_the_hint_within_bounds(b: Pki) -> None:
    assert refresh_delay_seconds(None) == 300
    assert refresh_delay_seconds(TrustBundle(B, (b.root,), refresh_hint_seconds=60)) == 60
    assert refresh_delay_seconds(TrustBundle(B, (b.root,), refresh_hint_seconds=0)) == 1
    assert refresh_delay_seconds(TrustBundle(B, (b.root,), refresh_hint_seconds=60), 5) == 5


def _entry(td: str, **extra: object) -> FederatedDomainConfig:
    return FederatedDomainConfig.model_validate({"trust_domain": td, **extra})


def test_the_state_adds_removes_refreshes_and_refuses_a_rollback(a: Pki, b: Pki) -> None:
    state = FederationState(a.bundle)
    entry = _entry(
        "b.example",
        bundle_endpoint_url="https://127.0.0.1:1/v1/bundle",
        endpoint_spiffe_id="spiffe://b.example/mesh/ca",
    )
    stored = TrustBundle(B, (b.root,), sequence=5, refresh_hint_seconds=60)
    assert state.configure((entry,), {B: stored}) == ([B], [])
    (due,) = state.due(NOW)
    assert due.bundle is stored
    assert due.source == "stored"
    assert state.endpoint_bundle(due) is stored  # self-serving: its own latest bundle
    assert not state.accept(due, stored, NOW, "endpoint")
    assert state.due(NOW + timedelta(seconds=59)) == []
    assert state.due(NOW + timedelta(seconds=60)) == [due]
    with pytest.raises(BundleError, match="went back"):
        state.accept(due, TrustBundle(B, (b.root,), sequence=4), NOW, "endpoint")
    assert due.bundle is stored
    state.failed(due, "down", NOW)
    assert due.next_at == NOW + timedelta(seconds=30)  # retried before the 60 s hint
    assert json.loads(state.document())["trust_domains"].keys() == {"b.example"}
    edited = entry.model_copy(update={"refresh_seconds": 5})
    assert state.configure((edited,), None) == ([], [])  # edited: neither added nor removed
    (due,) = state.due(NOW)  # refreshed at once, with the bundle it had
    assert due.bundle is stored
    assert state.configure((), None) == ([], [B])
    assert json.loads(state.document()) == {"trust_domains": {}}


def test_config_refuses_federating_with_itself_or_twice() -> None:
    entry = {"trust_domain": "a.example", "bundle_file": "a.json"}
    with pytest.raises(ConfigError, match="own trust domain"):
        config_from_mapping({"trust_domain": "a.example", "federation": {"trust_domains": [entry]}})
    with pytest.raises(ConfigError, match="listed twice"):
        config_from_mapping(
            {"trust_domain": "b.example", "federation": {"trust_domains": [entry, entry]}}
        )
    with pytest.raises(ConfigError, match="endpoint_spiffe_id"):
        config_from_mapping(
            {
                "trust_domain": "b.example",
                "federation": {
                    "trust_domains": [
                        {"trust_domain": "a.example", "bundle_endpoint_url": "https://h/"}
                    ]
                },
            }
        )


def test_config_needs_a_bundle_to_authenticate_each_endpoint() -> None:
    def config(**entry: object) -> None:
        config_from_mapping(
            {
                "trust_domain": "b.example",
                "federation": {
                    "trust_domains": [
                        {
                            "trust_domain": "a.example",
                            "bundle_endpoint_url": "https://h/",
                            **entry,
                        }
                    ]
                },
            }
        )

    with pytest.raises(ConfigError, match="needs bundle_file"):
        config(endpoint_spiffe_id="spiffe://a.example/mesh/ca")
    with pytest.raises(ConfigError, match="holds no bundle"):
        config(endpoint_spiffe_id="spiffe://c.example/bundles", bundle_file="a.json")
    config(endpoint_spiffe_id="spiffe://a.example/mesh/ca", bundle_file="a.json")
    config(endpoint_spiffe_id="spiffe://b.example/mesh/ca")  # served by our own domain
