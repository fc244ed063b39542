"""Trust bundles: the root certificates (and known intermediates) of each trust domain.

Pure. A `BundleSet` maps trust domains to bundles and is replaced whole, never mutated,
so a reader always sees one consistent set. The SPIFFE bundle format (a JWKS document with
``use: x509-svid`` keys) is the interchange format alongside plain PEM.

SPIFFE bundles are read exactly as the SPIFFE Trust Domain and Bundle and X509-SVID
specifications say (sections 4 and 6.2), and stricter where they leave room to confuse:
- a JSON object with a duplicate member name is refused (parsers disagree on which wins);
- ``keys`` must be present; an entry whose ``use`` is not ``x509-svid`` or whose ``kty`` is
  unknown is ignored; an ``x509-svid`` entry without ``x5c`` or with an empty one is
  ignored; of several ``x5c`` values only the first counts;
- an ``x5c`` value must be strict base64 of one DER certificate, else the whole document
  is refused;
- a document with no usable ``x509-svid`` entry is a bundle with no roots: the trust
  domain does not support X509-SVIDs, so its SVIDs are refused (`TrustBundle.untrusted`),
  never "keep the previous bundle";
- ``spiffe_sequence`` and ``spiffe_refresh_hint``, when present, are non-negative integers
  (not booleans); `check_bundle_update` refuses a sequence that goes back, or the same
  sequence with other roots.

Intermediates: a meshgate CA also publishes the intermediates it signs with (and the one it
will sign with next, during a rotation) in a top-level ``meshgate_intermediates`` member: a
list of base64 DER certificates. They are not trust anchors, only path-building aids for
verifiers that see a peer's leaf without its chain (Python 3.11's ``ssl``). Each must be
signed directly by one of the document's roots, else the whole document is refused. Other
SPIFFE implementations ignore the member (unknown top-level members are allowed).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshgate.errors import IdentityError
from meshgate.identity.spiffe_id import TrustDomain

__all__ = [
    "INTERMEDIATES_MEMBER",
    "BundleError",
    "BundleSet",
    "TrustBundle",
    "bundle_sequence",
    "check_bundle_update",
    "load_pem_certificates",
    "pem_bundle",
]

INTERMEDIATES_MEMBER = "meshgate_intermediates"
# Key types RFC 7518 defines; an entry of any other type is ignored (spec section 4.2.1).
_KNOWN_KTY = frozenset({"EC", "RSA", "OKP", "oct"})


class BundleError(IdentityError, ValueError):
    """A trust bundle could not be read or is unusable; the message says what and where."""


def load_pem_certificates(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM blob; `what` names the source in errors."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise BundleError(f"{what}: not a PEM certificate list ({exc})") from exc
    if not certs:
        raise BundleError(f"{what}: holds no certificate")
    return certs


def pem_bundle(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _b64url_uint(value: int, length: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode()


@final
@dataclass(frozen=True)
class TrustBundle:
    """The X.509 authorities of one trust domain. Several roots overlap during rotation."""

    trust_domain: TrustDomain
    roots: tuple[x509.Certificate, ...]
    # Intermediates the trust domain's CA signs with. Not trust anchors: they only let a
    # verifier build a path when the peer's chain is not exposed by the TLS library.
    intermediates: tuple[x509.Certificate, ...] = ()
    # spiffe_sequence: None when unknown (a PEM bundle, or a SPIFFE bundle without one).
    sequence: int | None = None
    refresh_hint_seconds: int = 300
    # True only for a SPIFFE bundle with no X.509 authority: the trust domain is untrusted.
    allow_empty: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.roots and not self.allow_empty:
            raise BundleError(f"bundle for {self.trust_domain}: has no root certificate")

    @property
    def untrusted(self) -> bool:
        """No X.509 authority: every X509-SVID of this trust domain is refused."""
        return not self.roots

    def roots_pem(self) -> bytes:
        return pem_bundle(self.roots)

    def to_spiffe_json(self) -> dict[str, Any]:
        """The SPIFFE bundle (JWKS) document for this trust domain's X.509 roots."""
        keys: list[dict[str, Any]] = []
        for cert in self.roots:
            public = cert.public_key()
            der = cert.public_bytes(serialization.Encoding.DER)
            key: dict[str, Any] = {"use": "x509-svid", "x5c": [base64.b64encode(der).decode()]}
            if isinstance(public, ec.EllipticCurvePublicKey):
                numbers = public.public_numbers()
                size = (public.curve.key_size + 7) // 8
                key |= {
                    "kty": "EC",
                    "crv": {"secp256r1": "P-256", "secp384r1": "P-384"}.get(
                        public.curve.name, public.curve.name
                    ),
                    "x": _b64url_uint(numbers.x, size),
                    "y": _b64url_uint(numbers.y, size),
                }
            else:
                key["kty"] = "RSA"
            keys.append(key)
        document: dict[str, Any] = {"keys": keys}
        if self.intermediates:
            document[INTERMEDIATES_MEMBER] = [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                for c in self.intermediates
            ]
        if self.sequence is not None:
            document["spiffe_sequence"] = self.sequence
        document["spiffe_refresh_hint"] = self.refresh_hint_seconds
        return document

    @classmethod
    def from_spiffe_json(cls, trust_domain: TrustDomain, document: str | bytes) -> TrustBundle:
        """The X.509 authorities of a SPIFFE bundle document (see the module docstring).
        Fails closed: anything malformed raises `BundleError`; no usable authority gives
        an `untrusted` bundle."""
        what = f"SPIFFE bundle for {trust_domain}"
        try:
            data = json.loads(document, object_pairs_hook=_unique_members)
        except _DuplicateMemberError as exc:
            raise BundleError(f"{what}: duplicate JSON member {exc.name!r}") from None
        except ValueError as exc:
            raise BundleError(f"{what}: not JSON ({exc})") from exc
        except RecursionError:  # nesting deeper than the parser's stack: not a bundle
            raise BundleError(f"{what}: JSON nested too deeply") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise BundleError(f"{what}: no 'keys' list")
        roots: list[x509.Certificate] = []
        for index, key in enumerate(data["keys"]):
            root = _x509_authority(key, f"{what}: keys[{index}]")
            if root is not None:
                roots.append(root)
        sequence = data.get("spiffe_sequence")
        hint = data.get("spiffe_refresh_hint", 300)
        for name, value in (("spiffe_sequence", sequence), ("spiffe_refresh_hint", hint)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise BundleError(f"{what}: {name} must be a non-negative integer")
        intermediates = _intermediates(data.get(INTERMEDIATES_MEMBER), roots, what)
        return cls(trust_domain, tuple(roots), intermediates, sequence, hint, allow_empty=True)


class _DuplicateMemberError(IdentityError, ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a member name given twice is an error, not "the last one wins"."""
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateMemberError(name[:64])
        result[name] = value
    return result


def _x509_authority(key: object, where: str) -> x509.Certificate | None:
    """The CA certificate of one JWK entry, or None when the spec says to ignore it."""
    if not isinstance(key, dict):
        raise BundleError(f"{where} is not a JSON object")
    kty = key.get("kty")
    if key.get("use") != "x509-svid" or not isinstance(kty, str) or kty not in _KNOWN_KTY:
        return None  # JWT authorities, unknown uses and unknown key types are ignored
    x5c = key.get("x5c")
    if x5c is None or x5c == []:
        return None  # spec 6.2: an entry without a certificate is ignored
    if not isinstance(x5c, list) or not isinstance(x5c[0], str):
        raise BundleError(f"{where}.x5c must be a list of base64 strings")
    try:
        der = base64.b64decode(x5c[0], validate=True)  # only the first value counts
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion: found by fuzzing
        raise BundleError(f"{where}.x5c[0] is not a base64 DER certificate") from exc
    try:
        cert.public_key()  # a trust anchor whose key cannot be read anchors nothing
    except (ValueError, UnsupportedAlgorithm) as exc:
        # Found by fuzzing: such a root was accepted, then broke every later use of it.
        raise BundleError(f"{where}.x5c[0] has an unusable public key ({exc})") from exc
    return cert


def _intermediates(
    value: object, roots: Sequence[x509.Certificate], what: str
) -> tuple[x509.Certificate, ...]:
    """The published intermediates; each must be signed directly by one of `roots`."""
    if value is None:
        return ()
    where = f"{what}: {INTERMEDIATES_MEMBER}"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"{where} must be a list of base64 strings")
    found: list[x509.Certificate] = []
    for index, text in enumerate(value):
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
        except (ValueError, x509.InvalidVersion) as exc:
            raise BundleError(f"{where}[{index}] is not a base64 DER certificate") from exc
        if not any(_issued_by(cert, root) for root in roots):
            raise BundleError(f"{where}[{index}] is not signed by any root of the bundle")
        found.append(cert)
    return tuple(found)


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def bundle_sequence(roots: Sequence[x509.Certificate]) -> int:
    """The spiffe_sequence a CA publishes for `roots`: the newest root's notBefore plus the
    oldest one's (Unix seconds). Both steps of a root rotation raise it (a newer root
    added, then the oldest one retired), and every replica derives the same number."""
    starts = [int(root.not_valid_before_utc.timestamp()) for root in roots]
    return max(starts) + min(starts) if starts else 0


def check_bundle_update(known: TrustBundle | None, new: TrustBundle) -> bool:
    """Whether `new` brings other roots than `known`, or other published intermediates
    (then trust must be rebuilt; a document without intermediates keeps the known ones). Raises
    `BundleError` for a rollback: a spiffe_sequence lower than the known one, or the same
    sequence with other roots (spec 4.1.1: it increases whenever the contents change).
    A higher sequence with the same roots is no change of trust (the caller records it)."""
    if known is None:
        return True
    same_roots = _fingerprints(known) == _fingerprints(new)
    if known.sequence is not None and new.sequence is not None:
        what = f"SPIFFE bundle for {new.trust_domain}"
        if new.sequence < known.sequence:
            raise BundleError(
                f"{what}: spiffe_sequence went back from {known.sequence} to {new.sequence}"
            )
        if new.sequence == known.sequence and not same_roots:
            raise BundleError(f"{what}: roots changed but spiffe_sequence stayed at {new.sequence}")
    if new.intermediates and _fingerprints(known, intermediates=True) != _fingerprints(
        new, intermediates=True
    ):
        return True
    return not same_roots


def _fingerprints(bundle: TrustBundle, *, intermediates: bool = False) -> frozenset[bytes]:
    certs = bundle.intermediates if intermediates else bundle.roots
    return frozenset(cert.fingerprint(hashes.SHA256()) for cert in certs)


@final
@dataclass(frozen=True)
class BundleSet(Mapping[TrustDomain, TrustBundle]):
    """Bundles by trust domain. Immutable: build a new set to change trust."""

    bundles: Mapping[TrustDomain, TrustBundle] = field(default_factory=dict)

    @classmethod
    def of(cls, *bundles: TrustBundle) -> BundleSet:
        return cls({b.trust_domain: b for b in bundles})

    def __getitem__(self, key: TrustDomain) -> TrustBundle:
        return self.bundles[key]

    def __iter__(self) -> Iterator[TrustDomain]:
        return iter(self.bundles)

    def __len__(self) -> int:
        return len(self.bundles)

    def __hash__(self) -> int:
        return id(self)

    def all_roots(self) -> Sequence[x509.Certificate]:
        return [root for bundle in self.bundles.values() for root in bundle.roots]

    def all_roots_pem(self) -> bytes:
        return pem_bundle(self.all_roots())

    def with_bundle(self, bundle: TrustBundle) -> BundleSet:
        return BundleSet({**self.bundles, bundle.trust_domain: bundle})
