"""The X509-SVID profile: each rule broken alone is refused; issuance yields only the profile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh_ca.issuance import (
    BACKDATE,
    IssuanceError,
    Signer,
    issue_leaf,
    make_csr,
    make_intermediate,
    parse_csr,
)
from meshgate.identity import (
    BundleSet,
    SpiffeId,
    SvidError,
    SvidFailure,
    TrustBundle,
    TrustDomain,
    verify_svid,
)
from meshgate.keys import generate_key
from tests.pki import Leaf
from tests.pki import TestPki as Pki  # aliased: pytest would try to collect "Test*"

NOW = datetime.now(UTC).replace(microsecond=0)
SID = "spiffe://example.org/ns/default/svc/app"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(now=NOW)


@pytest.fixture(scope="module")
def other_pki() -> Pki:
    return Pki(trust_domain=TrustDomain("other.org"), now=NOW)


def refused(leaf: Leaf, bundles: BundleSet, reason: SvidFailure, now: datetime = NOW) -> None:
    with pytest.raises(SvidError) as info:
        verify_svid(leaf.cert, list(leaf.chain), bundles, now)
    assert info.value.reason is reason, info.value


def _ku(**overrides: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags["digital_signature"] = True
    flags.update(overrides)
    return x509.KeyUsage(**flags)


def test_good_leaf_passes(pki: Pki) -> None:
    for leaf in (pki.raw_leaf([SID]), pki.leaf(SID)):
        verified = verify_svid(leaf.cert, list(leaf.chain), pki.bundles, NOW)
        assert verified.spiffe_id == SpiffeId.parse(SID)


def test_good_leaf_verifies_with_the_bundles_intermediates_alone(pki: Pki) -> None:
    leaf = pki.leaf(SID)
    bundle = TrustBundle(pki.trust_domain, (pki.root,), (pki.intermediate,))
    assert verify_svid(leaf.cert, [], BundleSet.of(bundle), NOW).leaf == leaf.cert


def test_ca_true_is_refused(pki: Pki) -> None:
    refused(pki.raw_leaf([SID], ca=True, key_usage=_ku()), pki.bundles, SvidFailure.NOT_LEAF)


def test_two_uri_sans_are_refused(pki: Pki) -> None:
    leaf = pki.raw_leaf([SID, "spiffe://example.org/ns/default/svc/other"])
    refused(leaf, pki.bundles, SvidFailure.URI_SAN)


def test_no_uri_san_is_refused(pki: Pki) -> None:
    refused(pki.raw_leaf([]), pki.bundles, SvidFailure.URI_SAN)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://Example.org/x",
        "spiffe://example.org/a//b",
        "spiffe://example.org/x/",
        "spiffe://example.org:443/x",
        "https://example.org/x",
        "spiffe://example.org",
    ],
)
def test_bad_spiffe_id_in_san_is_refused(pki: Pki, uri: str) -> None:
    refused(pki.raw_leaf([uri]), pki.bundles, SvidFailure.BAD_SPIFFE_ID)


def test_no_key_usage_is_refused(pki: Pki) -> None:
    refused(pki.raw_leaf([SID], key_usage=None), pki.bundles, SvidFailure.KEY_USAGE)


def test_key_usage_not_critical_is_refused(pki: Pki) -> None:
    leaf = pki.raw_leaf([SID], key_usage_critical=False)
    refused(leaf, pki.bundles, SvidFailure.KEY_USAGE)


@pytest.mark.parametrize("flag", ["key_cert_sign", "crl_sign"])
def test_key_cert_sign_or_crl_sign_is_refused(pki: Pki, flag: str) -> None:
    leaf = pki.raw_leaf([SID], key_usage=_ku(**{flag: True}))
    refused(leaf, pki.bundles, SvidFailure.KEY_USAGE)


def test_key_usage_without_digital_signature_is_refused(pki: Pki) -> None:
    leaf = pki.raw_leaf([SID], key_usage=_ku(digital_signature=False, key_agreement=True))
    refused(leaf, pki.bundles, SvidFailure.KEY_USAGE)


def test_no_eku_is_refused(pki: Pki) -> None:
    refused(pki.raw_leaf([SID], ekus=[]), pki.bundles, SvidFailure.EXTENDED_KEY_USAGE)


@pytest.mark.parametrize(
    "ekus",
    [[ExtendedKeyUsageOID.SERVER_AUTH], [ExtendedKeyUsageOID.CLIENT_AUTH]],
    ids=["server-only", "client-only"],
)
def test_eku_missing_a_purpose_is_refused(pki: Pki, ekus: list[x509.ObjectIdentifier]) -> None:
    refused(pki.raw_leaf([SID], ekus=ekus), pki.bundles, SvidFailure.EXTENDED_KEY_USAGE)


def test_expired_is_refused(pki: Pki) -> None:
    leaf = pki.raw_leaf(
        [SID], not_before=NOW - timedelta(hours=2), not_after=NOW - timedelta(seconds=1)
    )
    refused(leaf, pki.bundles, SvidFailure.EXPIRED)


def test_not_yet_valid_is_refused(pki: Pki) -> None:
    leaf = pki.raw_leaf(
        [SID], not_before=NOW + timedelta(minutes=5), not_after=NOW + timedelta(hours=1)
    )
    refused(leaf, pki.bundles, SvidFailure.NOT_YET_VALID)


def test_signed_by_another_trust_domains_ca_is_refused(pki: Pki, other_pki: Pki) -> None:
    # other.org's CA mints an example.org ID: only example.org's bundle may vouch for it.
    leaf = other_pki.raw_leaf([SID])
    refused(leaf, BundleSet.of(pki.bundle, other_pki.bundle), SvidFailure.UNTRUSTED)


def test_unknown_root_is_refused(pki: Pki) -> None:
    stranger = Pki(now=NOW)  # same trust domain name, different keys
    refused(stranger.raw_leaf([SID]), pki.bundles, SvidFailure.UNTRUSTED)


def test_trust_domain_without_bundle_is_refused(pki: Pki, other_pki: Pki) -> None:
    leaf = other_pki.raw_leaf(["spiffe://other.org/ns/a/svc/b"])
    refused(leaf, pki.bundles, SvidFailure.UNKNOWN_TRUST_DOMAIN)


# Issuance


def _greedy_csr() -> x509.CertificateSigningRequest:
    """A CSR asking for another ID, DNS names, CA:TRUE and keyCertSign."""
    key = generate_key()
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://example.org/ns/kube-system/svc/admin"),
                    x509.DNSName("evil.example.org"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ku(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_issue_leaf_ignores_csr_sans_extensions_and_ca_requests(pki: Pki) -> None:
    csr = _greedy_csr()
    cert = issue_leaf(
        parse_csr(csr.public_bytes(serialization.Encoding.PEM)),
        SpiffeId.parse(SID),
        pki.signer,
        NOW,
    )
    verified = verify_svid(cert, [pki.intermediate], pki.bundles, NOW)
    assert verified.spiffe_id == SpiffeId.parse(SID)
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(SID)]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.digital_signature, ku.key_cert_sign, ku.crl_sign) == (True, False, False)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert {type(e.value) for e in cert.extensions} == {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.SubjectAlternativeName,
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
    }
    assert {type(e.value): e.critical for e in cert.extensions} == {
        x509.BasicConstraints: True,
        x509.KeyUsage: True,
        x509.ExtendedKeyUsage: False,
        x509.SubjectAlternativeName: True,
        x509.SubjectKeyIdentifier: False,
        x509.AuthorityKeyIdentifier: False,
    }
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(csr.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = pki.intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == issuer_ski.value.digest
    assert cert.public_key() == csr.public_key()


def test_issue_leaf_caps_lifetime_at_signer_not_after(pki: Pki) -> None:
    key = generate_key()
    short = make_intermediate(
        pki.trust_domain,
        key,
        pki.root,
        pki.root_key,
        NOW - timedelta(days=1),
        ttl=timedelta(days=1, minutes=30),
    )
    signer = Signer(short, key)
    cert = issue_leaf(
        make_csr(generate_key()), SpiffeId.parse(SID), signer, NOW, timedelta(hours=1)
    )
    assert cert.not_valid_after_utc == signer.not_after
    assert cert.not_valid_after_utc < NOW + timedelta(hours=1)


def test_issue_leaf_backdates_not_before_and_applies_ttl(pki: Pki) -> None:
    cert = issue_leaf(
        make_csr(generate_key()), SpiffeId.parse(SID), pki.signer, NOW, timedelta(hours=2)
    )
    assert cert.not_valid_before_utc == NOW - BACKDATE == NOW - timedelta(seconds=10)
    assert cert.not_valid_after_utc == NOW + timedelta(hours=2)


@pytest.mark.parametrize(
    "ttl",
    [timedelta(minutes=5) - timedelta(seconds=1), timedelta(hours=24, seconds=1), timedelta(0)],
)
def test_issue_leaf_rejects_ttl_outside_5m_to_24h(pki: Pki, ttl: timedelta) -> None:
    with pytest.raises(IssuanceError, match="TTL"):
        issue_leaf(make_csr(generate_key()), SpiffeId.parse(SID), pki.signer, NOW, ttl)


@pytest.mark.parametrize("ttl", [timedelta(minutes=5), timedelta(hours=24)])
def test_issue_leaf_accepts_ttl_bounds(pki: Pki, ttl: timedelta) -> None:
    cert = issue_leaf(make_csr(generate_key()), SpiffeId.parse(SID), pki.signer, NOW, ttl)
    assert cert.not_valid_after_utc == NOW + ttl


def _tampered_csr() -> bytes:
    key = generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aaaa")]))
        .sign(key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(b"aaaa") == 1
    return der.replace(b"aaaa", b"aaab")


def test_csr_with_a_bad_signature_is_rejected(pki: Pki) -> None:
    der = _tampered_csr()
    with pytest.raises(IssuanceError, match="signature"):
        parse_csr(der)
    csr = x509.load_der_x509_csr(der)
    with pytest.raises(IssuanceError, match="signature"):
        issue_leaf(csr, SpiffeId.parse(SID), pki.signer, NOW)


def test_expired_signer_cannot_issue(pki: Pki) -> None:
    with pytest.raises(IssuanceError, match="expired"):
        issue_leaf(make_csr(generate_key()), SpiffeId.parse(SID), pki.signer, pki.signer.not_after)


def test_serials_are_random_and_at_least_64_bits(pki: Pki) -> None:
    csr = make_csr(generate_key())
    serials = [
        issue_leaf(csr, SpiffeId.parse(SID), pki.signer, NOW).serial_number for _ in range(32)
    ]
    assert len(set(serials)) == len(serials)
    assert all(s.bit_length() > 64 for s in serials)
    # Random, not counting: the top bits vary.
    assert len({s >> 140 for s in serials}) > 1


@pytest.mark.parametrize("ttl", [timedelta(seconds=30), timedelta(minutes=4)])
def test_issue_leaf_issues_short_ttls_only_when_the_caller_lowers_the_minimum(
    pki: Pki, ttl: timedelta
) -> None:
    sid = SpiffeId.parse(SID)
    with pytest.raises(IssuanceError, match="outside 0:05:00"):
        issue_leaf(make_csr(generate_key()), sid, pki.signer, NOW, ttl)
    cert = issue_leaf(
        make_csr(generate_key()), sid, pki.signer, NOW, ttl, min_ttl=timedelta(seconds=30)
    )
    assert cert.not_valid_after_utc == NOW + ttl
    assert cert.not_valid_before_utc == NOW - BACKDATE


def test_issue_leaf_applies_the_callers_maximum(pki: Pki) -> None:
    with pytest.raises(IssuanceError, match=r"outside 0:05:00 \.\. 2:00:00"):
        issue_leaf(
            make_csr(generate_key()),
            SpiffeId.parse(SID),
            pki.signer,
            NOW,
            timedelta(hours=3),
            max_ttl=timedelta(hours=2),
        )


@pytest.mark.parametrize(
    ("min_ttl", "max_ttl"),
    [
        (timedelta(seconds=29), None),  # below the 30 s floor
        (None, timedelta(hours=25)),  # above the 24 h maximum
        (timedelta(hours=2), timedelta(hours=1)),  # inverted
    ],
)
def test_issue_leaf_refuses_bounds_outside_30s_to_24h(
    pki: Pki, min_ttl: timedelta | None, max_ttl: timedelta | None
) -> None:
    with pytest.raises(IssuanceError, match="TTL bounds"):
        issue_leaf(
            make_csr(generate_key()),
            SpiffeId.parse(SID),
            pki.signer,
            NOW,
            timedelta(hours=1),
            min_ttl=min_ttl,
            max_ttl=max_ttl,
        )
