"""TokenSigningKey: cryptography builds and encodes the certificate, the "token" only signs a
digest and returns raw r||s. Here the token is a fake backed by a software key; the real
SoftHSM2 token is in tests/test_hsm_ca_keys.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from mesh_ca.issuance import Signer, issue_leaf, make_csr, make_intermediate, make_root
from mesh_ca.issuance.token_key import TokenKeyError, TokenSigningKey
from meshgate.identity import BundleSet, SpiffeId, TrustBundle, TrustDomain, verify_svid
from meshgate.keys import generate_key

NOW = datetime.now(UTC).replace(microsecond=0)
TD = TrustDomain("example.org")


class FakeToken:
    """Signs digests as CKM_ECDSA does (raw r||s, fixed width), and records them."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.digests: list[bytes] = []

    def sign_digest(self, digest: bytes) -> bytes:
        self.digests.append(digest)
        der = self.key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def signing_key(self) -> TokenSigningKey:
        return TokenSigningKey(self.key.public_key(), self.sign_digest, "fake token key 'k'")


def test_a_whole_hierarchy_signed_by_token_keys_verifies() -> None:
    root_token, inter_token = FakeToken(), FakeToken()
    root_key, inter_key = root_token.signing_key(), inter_token.signing_key()
    root = make_root(TD, root_key, NOW)
    intermediate = make_intermediate(TD, inter_key, root, root_key, NOW)
    signer = Signer(intermediate, inter_key)
    leaf = issue_leaf(make_csr(generate_key()), SpiffeId.workload(TD, "ns", "svc"), signer, NOW)
    root.verify_directly_issued_by(root)
    intermediate.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(intermediate)
    bundles = BundleSet.of(TrustBundle(TD, (root,), (intermediate,)))
    assert verify_svid(leaf, [intermediate], bundles, NOW).spiffe_id.path == "/ns/ns/svc/svc"
    assert len(root_token.digests) == 2  # the root itself and the intermediate
    assert len(inter_token.digests) == 1  # the leaf


def test_the_token_signs_the_sha256_of_the_to_be_signed_bytes() -> None:
    token = FakeToken()
    root = make_root(TD, token.signing_key(), NOW)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(root.tbs_certificate_bytes)
    assert token.digests == [digest.finalize()]
    assert root.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256


def test_csrs_and_crls_are_signed_too() -> None:
    token = FakeToken()
    key = token.signing_key()
    csr = make_csr(key)
    assert csr.is_signature_valid
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ca")])
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(NOW)
        .next_update(NOW + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    assert crl.is_signature_valid(token.key.public_key())


def test_a_prehashed_digest_goes_to_the_token_as_is() -> None:
    token = FakeToken()
    digest = bytes(range(32))
    signature = token.signing_key().sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    token.key.public_key().verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert token.digests == [digest]
    with pytest.raises(TokenKeyError, match="prehashed digest is 3 bytes"):
        token.signing_key().sign(b"abc", ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_a_signature_of_the_wrong_width_is_refused() -> None:
    token = FakeToken()
    key = TokenSigningKey(token.key.public_key(), lambda _digest: b"\x01" * 63, "fake 'k'")
    with pytest.raises(TokenKeyError, match="63-byte signature, not 64"):
        key.sign(b"data", ec.ECDSA(hashes.SHA256()))


def test_sha1_is_refused() -> None:
    with pytest.raises(TokenKeyError, match="hash sha1 is not accepted"):
        FakeToken().signing_key().sign(b"data", ec.ECDSA(hashes.SHA1()))


def test_the_private_key_cannot_be_read_out() -> None:
    key = FakeToken().signing_key()
    with pytest.raises(TokenKeyError, match="fake token key 'k': exporting the private key"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    with pytest.raises(TokenKeyError, match="private numbers"):
        key.private_numbers()


def test_it_looks_like_a_p256_key_and_copies_are_itself() -> None:
    token = FakeToken()
    key = token.signing_key()
    assert key.curve.name == "secp256r1"
    assert key.key_size == 256
    assert key.public_key() == token.key.public_key()
    assert copy.copy(key) is key
    assert copy.deepcopy(key) is key
    assert "fake token key 'k'" in repr(key)
