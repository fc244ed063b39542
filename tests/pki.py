"""Test PKI: a root, an intermediate and leaves that can break one SVID rule at a time.

Shared by the unit, component and integration tests; uses the real issuance code for the
good path and a raw builder for the deliberately broken leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh_ca.issuance import Signer, issue_leaf, make_csr, make_intermediate, make_root
from meshgate.identity import BundleSet, SpiffeId, TrustBundle, TrustDomain
from meshgate.keys import PrivateKey, generate_key, private_key_pem, write_private_file


@dataclass
class Leaf:
    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # intermediates sent after the leaf

    def chain_pem(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain)
        )

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def write(self, directory: Path, stem: str = "svid") -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(self.chain_pem())
        write_private_file(key_path, self.key_pem())
        return cert_path, key_path


@dataclass
class TestPki:
    __test__ = False  # a factory, not a test class: keeps pytest from collecting it

    trust_domain: TrustDomain = field(default_factory=lambda: TrustDomain("example.org"))
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.root_key = generate_key()
        self.root = make_root(self.trust_domain, self.root_key, self.now - timedelta(days=1))
        self.signer_key = generate_key()
        self.intermediate = make_intermediate(
            self.trust_domain,
            self.signer_key,
            self.root,
            self.root_key,
            self.now - timedelta(days=1),
        )
        self.signer = Signer(self.intermediate, self.signer_key)

    @property
    def bundle(self) -> TrustBundle:
        return TrustBundle(self.trust_domain, (self.root,))

    @property
    def bundles(self) -> BundleSet:
        return BundleSet.of(self.bundle)

    def bundle_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def spiffe_id(self, namespace: str = "default", service: str = "app") -> SpiffeId:
        return SpiffeId.workload(self.trust_domain, namespace, service)

    def leaf(
        self,
        spiffe_id: SpiffeId | str,
        *,
        ttl: timedelta = timedelta(hours=1),
        now: datetime | None = None,
    ) -> Leaf:
        """A correct SVID issued by the real issuance code."""
        sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
        key = generate_key()
        cert = issue_leaf(make_csr(key), sid, self.signer, now or self.now, ttl)
        return Leaf(cert, key, (self.intermediate,))

    def raw_leaf(
        self,
        uris: list[str],
        *,
        ca: bool = False,
        key_usage: x509.KeyUsage | bool | None = True,
        key_usage_critical: bool = True,
        ekus: list[x509.ObjectIdentifier] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        signer: Signer | None = None,
        dns_names: tuple[str, ...] = (),
    ) -> Leaf:
        """A leaf built by hand, to break exactly one rule of the SVID profile."""
        signer = signer or self.signer
        key = generate_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(signer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or self.now - timedelta(minutes=1))
            .not_valid_after(not_after or self.now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(u) for u in uris]
                    + [x509.DNSName(d) for d in dns_names]
                ),
                critical=True,
            )
        if key_usage is True:
            key_usage = x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            )
        if isinstance(key_usage, x509.KeyUsage):
            builder = builder.add_extension(key_usage, critical=key_usage_critical)
        eku = (
            ekus
            if ekus is not None
            else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        cert = builder.sign(signer.key, hashes.SHA256())
        return Leaf(cert, key, (signer.cert,))
