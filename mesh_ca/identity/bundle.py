"""Trust bundles: the root certificates (and known intermediates) of each trust domain.

Pure. A `BundleSet` maps trust domains to bundles and is replaced whole, never mutated,
so a reader always sees one consistent set. The SPIFFE bundle format (a JWKS document with
``use: x509-svid`` keys) is the interchange format alongside plain PEM.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh_ca.identity.spiffe_id import TrustDomain

__all__ = ["BundleError", "BundleSet", "TrustBundle", "load_pem_certificates", "pem_bundle"]


class BundleError(ValueError):
    """A trust bundle could not be read or is unusable; the message says what and where."""


def load_pem_certificates(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM blob; `what` names the source in errors."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
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
    sequence: int = 0
    refresh_hint_seconds: int = 300

    def __post_init__(self) -> None:
        if not self.roots:
            raise BundleError(f"bundle for {self.trust_domain}: has no root certificate")

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
        return {
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint_seconds,
        }

    @classmethod
    def from_spiffe_json(cls, trust_domain: TrustDomain, document: str | bytes) -> TrustBundle:
        what = f"SPIFFE bundle for {trust_domain}"
        try:
            data = json.loads(document)
        except ValueError as exc:
            raise BundleError(f"{what}: not JSON ({exc})") from exc
        except RecursionError:  # nesting deeper than the parser's stack: not a bundle
            raise BundleError(f"{what}: JSON nested too deeply") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise BundleError(f"{what}: no 'keys' list")
        roots: list[x509.Certificate] = []
        for index, key in enumerate(data["keys"]):
            if not isinstance(key, dict) or key.get("use") != "x509-svid":
                continue  # JWT authorities and unknown uses are not X.509 trust anchors
            x5c = key.get("x5c")
            if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
                raise BundleError(f"{what}: keys[{index}].x5c must hold exactly one certificate")
            try:
                roots.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0])))
            except ValueError as exc:
                raise BundleError(f"{what}: keys[{index}].x5c is not a certificate") from exc
        sequence = data.get("spiffe_sequence", 0)
        hint = data.get("spiffe_refresh_hint", 300)
        if not isinstance(sequence, int) or not isinstance(hint, int):
            raise BundleError(f"{what}: spiffe_sequence and spiffe_refresh_hint must be integers")
        return cls(trust_domain, tuple(roots), (), sequence, hint)


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
