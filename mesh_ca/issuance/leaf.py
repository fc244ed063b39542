"""X509-SVID leaves from CSRs.

The CA decides the identity: the SPIFFE ID comes from the caller (the token's binding or
the current certificate), and everything the CSR asks for beyond its public key — subject,
SANs, extensions, CA:TRUE — is ignored. The CSR's signature is checked (proof of
possession) and the lifetime is capped at the signer's notAfter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh_ca.issuance.authority import Signer
from meshgate.errors import MeshgateError
from meshgate.identity import SpiffeId
from meshgate.keys import PrivateKey, public_key_der

__all__ = [
    "BACKDATE",
    "DEFAULT_LEAF_TTL",
    "FLOOR_LEAF_TTL",
    "MAX_LEAF_TTL",
    "MIN_LEAF_TTL",
    "CaKeyReuse",
    "IssuanceError",
    "check_not_ca_key",
    "issue_leaf",
    "make_csr",
    "parse_csr",
    "parse_csr_key",
]

DEFAULT_LEAF_TTL = timedelta(hours=1)
MIN_LEAF_TTL = timedelta(minutes=5)  # the production minimum (DESIGN: 5 min .. 24 h)
MAX_LEAF_TTL = timedelta(hours=24)
# The lowest minimum a CA may configure (``issuance.min_ttl_seconds``): for demos and tests
# that want to watch rotations; shorter leaves would expire within a few renewal retries.
FLOOR_LEAF_TTL = timedelta(seconds=30)
BACKDATE = timedelta(seconds=10)
MAX_CSR_BYTES = 16 * 1024
_ACCEPTED_CURVES = ("secp256r1", "secp384r1")
_EMPTY_NAME = x509.Name([])


def _extension(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, value)


# The part of the X509-SVID leaf profile that is the same in every leaf (DESIGN: Identity).
_LEAF_PROFILE: tuple[x509.Extension[x509.ExtensionType], ...] = (
    _extension(x509.BasicConstraints(ca=False, path_length=None), critical=True),
    _extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    ),
    _extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        critical=False,
    ),
)


class IssuanceError(MeshgateError, ValueError):
    """The request cannot be signed (bad CSR, bad TTL, signer expired); message says why."""


class CaKeyReuse(IssuanceError):  # noqa: N818 - reads as the fact it reports
    """The CSR's public key is one of the CA's own keys: the requester's fault, never signed."""


def parse_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """A PEM (or DER) CSR with a valid self-signature over an accepted EC key."""
    return parse_csr_key(data)[0]


def parse_csr_key(
    data: bytes | str,
) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePublicKey]:
    """`parse_csr`, and the CSR's public key (decoding it again costs ~45 µs)."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_CSR_BYTES:
        raise IssuanceError(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = (
            x509.load_pem_x509_csr(raw)
            if raw.lstrip().startswith(b"-----")
            else x509.load_der_x509_csr(raw)
        )
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion: found by fuzzing
        raise IssuanceError(f"CSR is not a PEM or DER certificate request: {exc}") from exc
    try:
        public = csr.public_key()
    except (ValueError, x509.UnsupportedGeneralNameType, UnsupportedAlgorithm) as exc:
        # UnsupportedAlgorithm: an unknown key type OID (found by fuzzing: it was a 500).
        raise IssuanceError(f"CSR public key is unreadable: {exc}") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IssuanceError(f"CSR key is {type(public).__name__}; only EC P-256/P-384 is accepted")
    if public.curve.name not in _ACCEPTED_CURVES:
        raise IssuanceError(f"CSR key curve {public.curve.name} is not P-256 or P-384")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IssuanceError(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise IssuanceError("CSR signature does not verify (no proof of possession)")
    return csr, public


def check_not_ca_key(
    public: ec.EllipticCurvePublicKey, ca_keys: frozenset[bytes], der: bytes | None = None
) -> None:
    """Refuse a CSR over one of the CA's own keys (`ca_keys`: DER SubjectPublicKeyInfo of
    the root(s), intermediate and chain). Whoever holds such a key already holds the CA; a
    leaf sharing it would let a CA key act as a workload and blur which key signs what.
    `der`: `public` already encoded by the caller (`public_key_der`)."""
    if (der if der is not None else public_key_der(public)) in ca_keys:
        raise CaKeyReuse(
            "CSR public key is one of the CA's own keys (root or intermediate); "
            "a workload must generate its own key"
        )


def make_csr(key: PrivateKey) -> x509.CertificateSigningRequest:
    """The minimal CSR a workload sends: its public key, signed; the CA sets the rest."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )


def check_ttl(
    ttl: timedelta, min_ttl: timedelta | None = None, max_ttl: timedelta | None = None
) -> None:
    """`ttl` within the caller's bounds (the CA config), which must lie in 30 s .. 24 h.

    Without bounds the production range `MIN_LEAF_TTL` .. `MAX_LEAF_TTL` applies.
    """
    low = MIN_LEAF_TTL if min_ttl is None else min_ttl
    high = MAX_LEAF_TTL if max_ttl is None else max_ttl
    if low < FLOOR_LEAF_TTL or high > MAX_LEAF_TTL or low > high:
        raise IssuanceError(
            f"TTL bounds {low} .. {high} are outside {FLOOR_LEAF_TTL} .. {MAX_LEAF_TTL}"
        )
    if not low <= ttl <= high:
        raise IssuanceError(f"TTL {ttl} is outside {low} .. {high} for workload certificates")


def issue_leaf(
    csr: x509.CertificateSigningRequest,
    spiffe_id: SpiffeId,
    signer: Signer,
    now: datetime,
    ttl: timedelta = DEFAULT_LEAF_TTL,
    *,
    serial: int | None = None,
    csr_verified: bool = False,
    min_ttl: timedelta | None = None,
    max_ttl: timedelta | None = None,
    public_key: ec.EllipticCurvePublicKey | None = None,
    public_key_der: bytes | None = None,
) -> x509.Certificate:
    """Sign an X509-SVID for `spiffe_id` over the CSR's public key. `now` is UTC-aware.

    `min_ttl`/`max_ttl` are the CA's configured bounds (default 5 min .. 24 h; never below
    30 s nor above 24 h). `csr_verified=True` skips the CSR signature check for a CSR that
    came from `parse_csr`, which has just made it (the check costs about as much as the
    signature); `public_key` is then the key `parse_csr` read, so it is not decoded twice,
    and `public_key_der` may be its DER form, so it is not encoded again (~5 µs each).
    """
    check_ttl(ttl, min_ttl, max_ttl)
    if not csr_verified and not csr.is_signature_valid:
        raise IssuanceError("CSR signature does not verify (no proof of possession)")
    if now >= signer.not_after:
        raise IssuanceError(f"signing CA expired at {signer.not_after}")
    trusted = public_key is not None and csr_verified
    public = public_key if trusted else csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IssuanceError("CSR key is not an EC key")
    check_not_ca_key(public, signer.ca_public_keys, public_key_der if trusted else None)
    not_after = min(now + ttl, signer.not_after)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))])
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        *_LEAF_PROFILE,
        # Critical because the subject is empty (RFC 5280 4.2.1.6).
        _extension(san, critical=True),
        _extension(ski, critical=False),
        signer.authority_key_id,
    ]
    # The extensions go in whole: `add_extension` copies the builder and re-checks the
    # list for duplicates once per extension, a fifth of the leaf's cost. Names, key,
    # serial and dates still go through the builder's checking setters.
    return (
        x509.CertificateBuilder(extensions=extensions)
        .subject_name(_EMPTY_NAME)
        .issuer_name(signer.cert.subject)
        .public_key(public)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .sign(signer.key, hashes.SHA256())
    )


def chain_pem(leaf: x509.Certificate, signer: Signer) -> bytes:
    """The leaf followed by the signer and its parents, as sent in a TLS handshake."""
    return b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (leaf, signer.cert, *signer.chain)
    )
