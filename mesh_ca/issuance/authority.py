"""The CA hierarchy: a long-lived root and an online intermediate that signs leaves."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshgate.identity import TrustDomain
from meshgate.keys import PrivateKey, public_key_der

__all__ = [
    "DEFAULT_INTERMEDIATE_TTL",
    "DEFAULT_ROOT_TTL",
    "Signer",
    "make_intermediate",
    "make_root",
]

DEFAULT_ROOT_TTL = timedelta(days=3650)
DEFAULT_INTERMEDIATE_TTL = timedelta(days=365)


@final
@dataclass(frozen=True)
class Signer:
    """A CA certificate with its key, and the chain above it up to (not including) the root."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    # Read once: every leaf needs both, and recomputing them (a date conversion, a SHA-1
    # over the public key) was ~20 µs of a leaf's ~190 µs.
    not_after: datetime = field(init=False, repr=False, compare=False)
    authority_key_id: x509.Extension[x509.AuthorityKeyIdentifier] = field(
        init=False, repr=False, compare=False
    )
    # The CA's own public keys (signer and chain, as DER SubjectPublicKeyInfo): a CSR over
    # one of them is refused, so no leaf ever shares a key with a CA certificate.
    ca_public_keys: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        object.__setattr__(
            self,
            "ca_public_keys",
            frozenset(public_key_der(c.public_key()) for c in (self.cert, *self.chain)),
        )
        object.__setattr__(self, "not_after", self.cert.not_valid_after_utc)
        object.__setattr__(
            self, "authority_key_id", x509.Extension(aki.oid, critical=False, value=aki)
        )


def _ca_name(trust_domain: TrustDomain, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshgate {role} CA {trust_domain}"),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def make_root(
    trust_domain: TrustDomain, key: PrivateKey, now: datetime, ttl: timedelta = DEFAULT_ROOT_TTL
) -> x509.Certificate:
    name = _ca_name(trust_domain, "root")
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(seconds=10))
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain.id_string())]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def make_intermediate(
    trust_domain: TrustDomain,
    key: PrivateKey,
    parent: x509.Certificate,
    parent_key: PrivateKey,
    now: datetime,
    ttl: timedelta = DEFAULT_INTERMEDIATE_TTL,
    *,
    label: str = "intermediate",
) -> x509.Certificate:
    """An intermediate under `parent`, never outliving it."""
    public = key.public_key()
    not_after = min(now + ttl, parent.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_ca_name(trust_domain, label))
        .issuer_name(parent.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(seconds=10))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain.id_string())]),
            critical=False,
        )
        .sign(parent_key, hashes.SHA256())
    )
