"""The CA service a rotation step swaps in (`CaService.with_authority`): it signs with the new
slot, publishes the new trust material, keeps the federated bundles and the bundle reporter,
and takes a sidecar's report of the sequence it holds only from its verified SVID."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from mesh_ca.issuance import Signer, issue_leaf, make_csr, make_intermediate
from mesh_ca.server.core import ApiRequest, CaAuthority, CaService
from mesh_ca.server.ratelimit import RateLimiter
from mesh_ca.store import SqliteStore
from meshgate.identity import SpiffeId, TrustBundle
from meshgate.keys import generate_key
from tests.pki import TestPki as Pki

WEB = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "state.db") as opened:
        yield opened


def authority(pki: Pki, signer: Signer, sequence: int) -> CaAuthority:
    return CaAuthority(
        trust_domain=pki.trust_domain,
        signer=signer,
        bundle=TrustBundle(pki.trust_domain, (pki.root,), (signer.cert,), sequence),
        leaf_ttl=timedelta(hours=1),
        token_ttl=timedelta(minutes=10),
    )


def held(sequence: int, peer: x509.Certificate | None) -> ApiRequest:
    body = json.dumps({"sequence": sequence}).encode()
    return ApiRequest("POST", "/v1/bundle/held", "application/json", body, "10.0.0.1", peer)


def test_the_swapped_in_service_publishes_the_new_slot_and_keeps_what_others_published(
    store: SqliteStore,
) -> None:
    pki, now = Pki(), datetime.now(UTC)
    old = CaService(authority(pki, pki.signer, 7), store, RateLimiter(100, 100))
    reports: list[tuple[SpiffeId, int]] = []
    old.bundle_reporter = lambda sid, seq, _: reports.append((sid, seq))
    old.publish_federated(b'{"trust_domains": {"b.example": {}}}')
    key = generate_key()
    nxt = Signer(make_intermediate(pki.trust_domain, key, pki.root, pki.root_key, now), key)
    new = old.with_authority(
        dataclasses.replace(
            authority(pki, nxt, 8),
            bundle=TrustBundle(pki.trust_domain, (pki.root,), (pki.signer.cert, nxt.cert), 8),
        )
    )
    bundle = json.loads(new.handle(ApiRequest("GET", "/v1/bundle", None, b"", "-"), now, 0).body)
    assert bundle["spiffe_sequence"] == 8
    assert len(bundle["meshgate_intermediates"]) == 2
    assert new.reports is old.reports  # the mesh view's window survives the step
    federated = new.handle(ApiRequest("GET", "/v1/federation/bundles", None, b"", "-"), now, 0)
    assert json.loads(federated.body) == {"trust_domains": {"b.example": {}}}

    # A leaf of the old intermediate still authenticates its holder to the new service.
    leaf = issue_leaf(make_csr(generate_key()), WEB, pki.signer, now)
    response = new.handle(held(8, leaf), now, 0)
    assert response.status == 200, response.body
    assert json.loads(response.body) == {"recorded": True, "sequence": 8}
    assert reports == [(WEB, 8)]
    # No client certificate: refused, nothing recorded.
    assert new.handle(held(9, None), now, 0).status == 401
    assert reports == [(WEB, 8)]
