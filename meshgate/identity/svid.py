"""The X509-SVID leaf profile, and verification of a presented SVID at a given time.

Pure: time is a parameter. The profile checks are an explicit checklist because OpenSSL
accepts leaves that are not SVIDs (CA:TRUE, two URI SANs, no KeyUsage). Path validation
is cryptography's (`x509.verification`), never hand-written; it runs against the bundle of
the SVID's own trust domain only, so one trust domain's CA cannot mint another's IDs.
Fails closed: anything unexpected is an `SvidError`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar, final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshgate.errors import IdentityError
from meshgate.identity.bundle import BundleSet
from meshgate.identity.spiffe_id import SpiffeId, SpiffeIdError

__all__ = [
    "SvidError",
    "SvidFailure",
    "VerifiedSvid",
    "check_leaf_profile",
    "spiffe_id_of",
    "verify_svid",
]


_E = TypeVar("_E", bound=x509.ExtensionType)


class SvidFailure(enum.StrEnum):
    """Why a certificate was refused; stable strings for metrics labels."""

    MALFORMED = "malformed"
    NOT_LEAF = "not_leaf"
    URI_SAN = "uri_san"
    BAD_SPIFFE_ID = "bad_spiffe_id"
    KEY_USAGE = "key_usage"
    EXTENDED_KEY_USAGE = "extended_key_usage"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    UNKNOWN_TRUST_DOMAIN = "unknown_trust_domain"
    UNTRUSTED = "untrusted"


class SvidError(IdentityError, ValueError):
    """A certificate is not an acceptable X509-SVID. `reason` is a `SvidFailure`."""

    def __init__(self, reason: SvidFailure, detail: str) -> None:
        super().__init__(f"invalid X509-SVID ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


@final
@dataclass(frozen=True, slots=True)
class VerifiedSvid:
    spiffe_id: SpiffeId
    leaf: x509.Certificate
    not_after: datetime
    # What the peer presented besides the leaf (a foreign trust domain's intermediates are
    # known only from there), so the leaf can be re-verified when the bundles change.
    intermediates: tuple[x509.Certificate, ...] = ()


def _ext(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or undecodable extensions
        raise SvidError(SvidFailure.MALFORMED, f"unreadable extensions: {exc}") from exc


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The single URI SAN of `cert` as a strictly parsed SPIFFE ID."""
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        raise SvidError(SvidFailure.URI_SAN, "no subjectAltName extension")
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SvidError(SvidFailure.URI_SAN, f"{len(uris)} URI SANs, expected exactly one")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise SvidError(SvidFailure.BAD_SPIFFE_ID, str(exc)) from exc


def check_leaf_profile(cert: x509.Certificate) -> SpiffeId:
    """Check every rule of the X509-SVID leaf profile except chain and time."""
    try:
        cert.extensions  # noqa: B018 - decoding the extensions is the check
    except ValueError as exc:
        raise SvidError(SvidFailure.MALFORMED, f"unreadable extensions: {exc}") from exc
    bc = _ext(cert, x509.BasicConstraints)
    if bc is not None and bc.value.ca:
        raise SvidError(SvidFailure.NOT_LEAF, "basicConstraints CA:TRUE on a leaf")
    spiffe_id = spiffe_id_of(cert)
    if not spiffe_id.path:
        raise SvidError(
            SvidFailure.BAD_SPIFFE_ID, f"{spiffe_id} names a trust domain, not a workload"
        )
    ku = _ext(cert, x509.KeyUsage)
    if ku is None:
        raise SvidError(SvidFailure.KEY_USAGE, "no keyUsage extension")
    if not ku.critical:
        raise SvidError(SvidFailure.KEY_USAGE, "keyUsage is not critical")
    if not ku.value.digital_signature:
        raise SvidError(SvidFailure.KEY_USAGE, "keyUsage lacks digitalSignature")
    if ku.value.key_cert_sign or ku.value.crl_sign:
        raise SvidError(SvidFailure.KEY_USAGE, "keyUsage has keyCertSign or cRLSign on a leaf")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is None:
        raise SvidError(SvidFailure.EXTENDED_KEY_USAGE, "no extendedKeyUsage extension")
    usages = set(eku.value)
    missing = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} - usages
    if missing:
        names = ", ".join(sorted(oid._name for oid in missing))
        raise SvidError(SvidFailure.EXTENDED_KEY_USAGE, f"extendedKeyUsage lacks {names}")
    return spiffe_id


def verify_svid(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    bundles: BundleSet,
    now: datetime,
) -> VerifiedSvid:
    """Verify a presented SVID: leaf profile, time, and a path to its own trust domain.

    `intermediates` is what the peer sent; the trust domain's known intermediates are
    added so a leaf alone (all that Python < 3.13 exposes after a handshake) still
    verifies by full path validation.
    """
    spiffe_id = check_leaf_profile(leaf)
    if now < leaf.not_valid_before_utc:
        raise SvidError(
            SvidFailure.NOT_YET_VALID, f"{spiffe_id} not valid before {leaf.not_valid_before_utc}"
        )
    if now > leaf.not_valid_after_utc:
        raise SvidError(SvidFailure.EXPIRED, f"{spiffe_id} expired at {leaf.not_valid_after_utc}")
    bundle = bundles.get(spiffe_id.trust_domain)
    if bundle is None:
        raise SvidError(
            SvidFailure.UNKNOWN_TRUST_DOMAIN,
            f"{spiffe_id}: no trust bundle for {spiffe_id.trust_domain} (trust domains held: "
            f"{', '.join(sorted(td.name for td in bundles)) or 'none'}): its trust domain is "
            "not federated with this one",
        )
    verifier = (
        PolicyBuilder()
        .store(Store(list(bundle.roots)))
        .time(now)
        .max_chain_depth(4)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, [*intermediates, *bundle.intermediates])
    except VerificationError as exc:
        raise SvidError(
            SvidFailure.UNTRUSTED,
            f"{spiffe_id} does not chain to the {spiffe_id.trust_domain} bundle: {exc}",
        ) from exc
    return VerifiedSvid(spiffe_id, leaf, leaf.not_valid_after_utc, tuple(intermediates))
