"""The pure CA API core and rate limiter, with time passed in (no TLS, no sockets)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh_ca.api import SvidResponse
from mesh_ca.issuance import make_csr
from mesh_ca.server.core import ApiRequest, ApiResponse, CaAuthority, CaService
from mesh_ca.server.ratelimit import RateLimiter, source_key
from mesh_ca.store import SqliteStore, StoreUnavailable
from mesh_ca.tokens import new_token
from meshgate.identity import SpiffeId
from meshgate.keys import generate_key
from tests.pki import TestPki as Pki

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ADMIN = "spiffe://example.org/ops/admin"


def test_the_limiter_allows_a_burst_then_refills_at_the_rate() -> None:
    limiter = RateLimiter(2.0, 3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after("a") == pytest.approx(0.5)
    assert limiter.allow("b", 0.0)  # sources are independent
    assert not limiter.allow("a", 0.4)
    assert limiter.allow("a", 0.6)
    assert [limiter.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]


def test_the_limiter_table_is_bounded() -> None:
    limiter = RateLimiter(1.0, 1, max_sources=3)
    for index in range(10):
        limiter.allow(f"10.0.0.{index}", float(index) * 0.01)
    assert len(limiter) == 3


def test_a_full_limiter_drops_refilled_buckets_first_then_the_least_recently_used() -> None:
    limiter = RateLimiter(1.0, 1, max_sources=3)  # a bucket refills in 1 s
    assert limiter.allow("old", 0.0)
    assert limiter.allow("a", 5.0)
    assert limiter.allow("b", 5.1)
    assert limiter.allow("c", 5.2)  # full: "old" refilled long ago, so it goes
    assert not limiter.allow("a", 5.3)  # "a" kept its (empty) bucket
    assert limiter.allow("d", 5.4)  # nothing refilled: the least recently used, "b", goes
    assert limiter.allow("b", 5.5)  # a fresh bucket
    assert not limiter.allow("a", 5.6)  # "a" was used at 5.3, so it stayed


@pytest.fixture
def pki() -> Pki:
    return Pki(now=T0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "state.db") as opened:
        yield opened


def service(pki: Pki, store: object, rate: float = 1000.0, burst: int = 1000) -> CaService:
    authority = CaAuthority(
        trust_domain=pki.trust_domain,
        signer=pki.signer,
        bundle=pki.bundle,
        leaf_ttl=timedelta(hours=1),
        token_ttl=timedelta(minutes=10),
        admin_ids=frozenset({SpiffeId.parse(ADMIN)}),
    )
    return CaService(authority, store, RateLimiter(rate, burst))  # type: ignore[arg-type]


def post(path: str, body: Mapping[str, object], peer: x509.Certificate | None = None) -> ApiRequest:
    return ApiRequest("POST", path, "application/json", json.dumps(body).encode(), "10.1.1.1", peer)


def csr() -> str:
    return make_csr(generate_key()).public_bytes(serialization.Encoding.PEM).decode()


def token_for(store: SqliteStore, spiffe_id: str, ttl: timedelta = timedelta(minutes=10)) -> str:
    token, token_id, secret_hash = new_token()
    store.add_token(token_id, secret_hash, SpiffeId.parse(spiffe_id), T0, T0 + ttl)
    return token


def error(response: ApiResponse) -> tuple[int, str]:
    return response.status, json.loads(response.body)["error"]


def test_bootstrap_issues_for_the_token_binding_only(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    sid = "spiffe://example.org/ns/a/svc/b"
    response = api.handle(
        post("/v1/bootstrap", {"token": token_for(store, sid), "csr": csr()}), T0, 0
    )
    assert response.status == 200
    body = json.loads(response.body)
    assert body["spiffe_id"] == sid
    assert response.log["spiffe_id"] == sid
    assert "token" not in response.log  # only the public token id
    assert [r.kind for r in store.issued()] == ["bootstrap"]


def test_the_svid_body_is_exactly_the_svid_response_model(pki: Pki, store: SqliteStore) -> None:
    # The core builds this body from bytes (no pydantic on the hot path): it must be the
    # very bytes pydantic would write for the same model, and parse back strictly.
    api = service(pki, store)
    sid = "spiffe://example.org/ns/a/svc/b"
    response = api.handle(
        post("/v1/bootstrap", {"token": token_for(store, sid), "csr": csr()}), T0, 0
    )
    parsed = SvidResponse.model_validate_json(response.body)
    assert response.body == parsed.model_dump_json().encode()
    leaf = x509.load_pem_x509_certificates(parsed.chain_pem.encode())[0]
    assert parsed.not_after == leaf.not_valid_after_utc
    assert parsed.serial == format(leaf.serial_number, "x")
    assert parsed.bundle_pem == pki.bundle.roots_pem().decode()
    assert parsed.chain_pem.endswith(
        pki.signer.cert.public_bytes(serialization.Encoding.PEM).decode()
    )


def test_an_expired_token_is_refused_at_the_time_passed_in(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    token = token_for(store, "spiffe://example.org/ns/a/svc/b")
    late = T0 + timedelta(minutes=10, seconds=1)
    assert error(api.handle(post("/v1/bootstrap", {"token": token, "csr": csr()}), late, 0)) == (
        403,
        "token_expired",
    )
    assert store.issued_count() == 0


def test_a_token_bound_to_a_reserved_id_is_refused(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    token = token_for(store, "spiffe://example.org/mesh/ca")
    response = api.handle(post("/v1/bootstrap", {"token": token, "csr": csr()}), T0, 0)
    assert error(response) == (403, "reserved_id")
    assert store.issued_count() == 0


def test_renewal_checks_the_client_svid_at_now(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    leaf = pki.leaf("spiffe://example.org/ns/a/svc/b", now=T0).cert
    ok = api.handle(post("/v1/renew", {"csr": csr()}, leaf), T0 + timedelta(minutes=30), 0)
    assert ok.status == 200
    late = T0 + timedelta(hours=1, seconds=1)
    assert error(api.handle(post("/v1/renew", {"csr": csr()}, leaf), late, 0)) == (
        403,
        "svid_expired",
    )
    foreign = Pki(now=T0).leaf("spiffe://example.org/ns/a/svc/b").cert  # another CA
    assert error(api.handle(post("/v1/renew", {"csr": csr()}, foreign), T0, 0))[1] == "svid_invalid"
    assert [r.kind for r in store.issued()] == ["renew"]


def test_a_revoked_certificate_serial_cannot_renew(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    leaf = pki.leaf("spiffe://example.org/ns/a/svc/b", now=T0).cert
    store.revoke(T0, serial=leaf.serial_number)
    assert error(api.handle(post("/v1/renew", {"csr": csr()}, leaf), T0, 0)) == (403, "revoked")


def test_admin_is_only_for_listed_ids(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store)
    body = {"spiffe_id": "spiffe://example.org/ns/a/svc/c"}
    other = pki.leaf("spiffe://example.org/ns/ops/svc/admin", now=T0).cert
    assert error(api.handle(post("/v1/admin/tokens", body, other), T0, 0)) == (403, "not_admin")
    admin = pki.leaf(ADMIN, now=T0).cert
    assert api.handle(post("/v1/admin/tokens", body, admin), T0, 0).status == 200
    revoke = api.handle(
        post("/v1/admin/revoke", {"serial": "ff", "spiffe_id": ADMIN}, admin), T0, 0
    )
    assert error(revoke) == (400, "bad_request")  # exactly one of the two
    # A reason is printed by `mesh-ca status`: no terminal escapes, no NUL.
    for reason in ("\x1b[2Jgone", "a\x00b", "two\nlines"):
        bad = api.handle(post("/v1/admin/revoke", {"serial": "ff", "reason": reason}, admin), T0, 0)
        assert error(bad) == (400, "bad_request")
    assert store.revocations() == []
    fine = {"serial": "ff", "reason": "key compromise — rotated"}
    assert api.handle(post("/v1/admin/revoke", fine, admin), T0, 0).status == 200


def test_revoke_refuses_ids_outside_the_trust_domain_like_the_cli(
    pki: Pki, store: SqliteStore
) -> None:
    # Such a row would match no certificate this CA issued, yet every sidecar would fetch it.
    api = service(pki, store)
    admin = pki.leaf(ADMIN, now=T0).cert
    for spiffe_id, words in (
        ("spiffe://other.org/ns/a/svc/b", "not in trust domain example.org"),
        ("spiffe://example.org", "names the trust domain, not a workload"),
        # The CA server's own ID: re-issued with a new key at every start, so a revocation
        # by name would change nothing but give a false sense of having done something.
        ("spiffe://example.org/mesh/ca", "restart the CA to replace its SVID"),
    ):
        refused = api.handle(post("/v1/admin/revoke", {"spiffe_id": spiffe_id}, admin), T0, 0)
        assert error(refused) == (400, "bad_request")
        assert words in json.loads(refused.body)["message"]
    assert store.revocations() == []


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("fe80::1%eth0", "fe80::/64"),
        ("-", "-"),
    ],
)
def test_limits_count_an_ipv6_client_by_its_64(address: str, key: str) -> None:
    assert source_key(address) == key


def test_one_ipv6_64_shares_one_rate_limit(pki: Pki, store: SqliteStore) -> None:
    # A client holding a /64 must not get a fresh bucket per address.
    api = service(pki, store, rate=1.0, burst=1)

    def bootstrap_from(address: str) -> ApiResponse:
        body = json.dumps({"token": "mgt_x", "csr": csr()}).encode()
        request = ApiRequest("POST", "/v1/bootstrap", "application/json", body, address)
        return api.handle(request, T0, 10.0)

    assert error(bootstrap_from("2001:db8:1:2::1"))[0] == 401  # allowed, then a bad token
    assert error(bootstrap_from("2001:db8:1:2::2")) == (429, "rate_limited")
    assert error(bootstrap_from("2001:db8:1:3::1"))[0] == 401  # another /64


def test_the_rate_limit_uses_the_monotonic_time_passed_in(pki: Pki, store: SqliteStore) -> None:
    api = service(pki, store, rate=1.0, burst=1)
    request = post("/v1/bootstrap", {"token": "mgt_x", "csr": csr()})
    assert error(api.handle(request, T0, 10.0))[0] == 401
    limited = api.handle(request, T0, 10.1)
    assert error(limited) == (429, "rate_limited")
    assert dict(limited.headers)["retry-after"] == "1"
    assert error(api.handle(request, T0, 11.2))[0] == 401


class _DownStore:
    def __getattr__(self, name: str) -> object:
        def down(*args: object, **kwargs: object) -> None:
            raise StoreUnavailable("database is down")

        return down


def test_an_unavailable_store_is_503_and_readyz_says_so(pki: Pki) -> None:
    api = service(pki, _DownStore())
    token, _, _ = new_token()
    assert error(api.handle(post("/v1/bootstrap", {"token": token, "csr": csr()}), T0, 0)) == (
        503,
        "store_unavailable",
    )
    readyz = api.handle(ApiRequest("GET", "/readyz", None, b"", "x"), T0, 0)
    assert error(readyz) == (503, "store_unavailable")
    assert api.handle(ApiRequest("GET", "/healthz", None, b"", "x"), T0, 0).status == 200


def pem_csr(key: object) -> str:
    return make_csr(key).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]


def test_a_csr_over_the_cas_own_intermediate_or_root_key_is_refused(
    pki: Pki, store: SqliteStore
) -> None:
    api = service(pki, store)
    sid = "spiffe://example.org/ns/a/svc/b"
    for ca_key in (pki.signer_key, pki.root_key):
        request = post("/v1/bootstrap", {"token": token_for(store, sid), "csr": pem_csr(ca_key)})
        response = api.handle(request, T0, 0)
        assert error(response) == (400, "ca_key")
        assert "CA's own keys" in json.loads(response.body)["message"]
        leaf = pki.leaf(sid, now=T0).cert
        assert error(api.handle(post("/v1/renew", {"csr": pem_csr(ca_key)}, leaf), T0, 0)) == (
            400,
            "ca_key",
        )
    assert store.issued_count() == 0
    assert len(store.outstanding_tokens(T0)) == 2  # refused before any token was consumed


def test_issue_leaf_itself_refuses_the_signers_key(pki: Pki) -> None:
    from mesh_ca.issuance import CaKeyReuse, issue_leaf

    with pytest.raises(CaKeyReuse):
        issue_leaf(make_csr(pki.signer_key), pki.spiffe_id(), pki.signer, T0)


def test_a_key_issued_to_one_id_is_refused_for_another_but_may_renew_the_same_id(
    pki: Pki, store: SqliteStore
) -> None:
    api = service(pki, store)
    alice, bob = "spiffe://example.org/ns/a/svc/alice", "spiffe://example.org/ns/a/svc/bob"
    key = generate_key()
    first = api.handle(
        post("/v1/bootstrap", {"token": token_for(store, alice), "csr": pem_csr(key)}), T0, 0
    )
    assert first.status == 200
    refused = api.handle(
        post("/v1/bootstrap", {"token": token_for(store, bob), "csr": pem_csr(key)}), T0, 0
    )
    assert error(refused) == (409, "key_bound")
    assert alice not in json.loads(refused.body)["message"]  # the holder is not revealed
    assert refused.log["bound_to"] == alice  # but the CA's access log names it
    bob_leaf = pki.leaf(bob, now=T0).cert
    assert error(api.handle(post("/v1/renew", {"csr": pem_csr(key)}, bob_leaf), T0, 0)) == (
        409,
        "key_bound",
    )
    # Alice renewing with the key she already holds is allowed (documented in security.md).
    alice_leaf = x509.load_pem_x509_certificates(json.loads(first.body)["chain_pem"].encode())[0]
    assert api.handle(post("/v1/renew", {"csr": pem_csr(key)}, alice_leaf), T0, 0).status == 200
    assert [str(r.spiffe_id) for r in store.issued()] == [alice, alice]
    # Bob's token was rolled back: still usable.
    assert [t.spiffe_id for t in store.outstanding_tokens(T0)] == [SpiffeId.parse(bob)]


def test_verified_client_svids_do_not_pile_up_across_renewals(pki: Pki, store: SqliteStore) -> None:
    """Each renewal presents a new certificate; the verified-SVID memo kept every one until
    it held 4,096 (~4 KB of CA memory per certificate issued). Expired ones now go."""
    api = service(pki, store)
    for i in range(300):
        now = T0 + timedelta(minutes=10 * i)
        leaf = pki.leaf("spiffe://example.org/ns/a/svc/b", ttl=timedelta(minutes=5), now=now)
        assert api.handle(post("/v1/renew", {"csr": csr()}, leaf.cert), now, 0).status == 200
        assert len(api.clients.verified) <= 65  # the sweep floor, plus the one just verified
