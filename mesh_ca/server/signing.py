"""Stage sign: a CSR checked (never over one of the CA's own keys) and a leaf signed for the
ID the CA decided, with the ledger row describing it. Pure; `now` is a parameter."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import TypeAlias, final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh_ca.issuance import (
    CaKeyReuse,
    IssuanceError,
    check_not_ca_key,
    issue_leaf,
    parse_csr_key,
)
from mesh_ca.server.authorize import check_issuable
from mesh_ca.server.loaded_ca import CaAuthority
from mesh_ca.server.messages import ApiError
from mesh_ca.store import IssuedRecord
from meshgate.identity import SpiffeId
from meshgate.keys import public_key_der

__all__ = ["Csr", "LeafSigning"]

# The CSR, its public key and that key's DER SubjectPublicKeyInfo (encoded once a request:
# for the CA-key checks and the ledger's key hash).
Csr: TypeAlias = tuple[x509.CertificateSigningRequest, ec.EllipticCurvePublicKey, bytes]


@final
class LeafSigning:
    def __init__(self, authority: CaAuthority) -> None:
        self._authority = authority
        # Keys no workload may present: the signer, its chain and every root of the bundle.
        self._ca_keys = authority.signer.ca_public_keys | {
            public_key_der(cert.public_key())
            for cert in (*authority.bundle.roots, *authority.bundle.intermediates)
        }

    def csr(self, text: str) -> Csr:
        """The parsed CSR; refused (400) if bad or over one of the CA's own keys."""
        try:
            request, public = parse_csr_key(text)
            der = public_key_der(public)
            check_not_ca_key(public, self._ca_keys, der)
        except CaKeyReuse as exc:
            raise ApiError(400, "ca_key", str(exc)) from None
        except IssuanceError as exc:
            raise ApiError(400, "bad_csr", str(exc)) from None
        return request, public, der

    def sign(
        self, csr: Csr, spiffe_id: SpiffeId, kind: str, now: datetime
    ) -> tuple[x509.Certificate, IssuedRecord]:
        """Sign a leaf for a CSR that `csr` checked, and the ledger row describing it."""
        authority = self._authority
        check_issuable(authority.trust_domain, spiffe_id)
        serial = secrets.randbits(127) | (1 << 126)  # 127-bit positive, never 0
        try:
            leaf = issue_leaf(
                csr[0],
                spiffe_id,
                authority.signer,
                now,
                authority.leaf_ttl,
                serial=serial,
                csr_verified=True,
                min_ttl=authority.min_leaf_ttl,
                max_ttl=authority.max_leaf_ttl,
                public_key=csr[1],
                public_key_der=csr[2],
            )
        except IssuanceError as exc:
            raise ApiError(503, "signing_failed", f"the CA cannot sign: {exc}") from None
        record = IssuedRecord(
            serial,
            spiffe_id,
            kind,
            now,
            leaf.not_valid_after_utc,
            authority.replica,
            hashlib.sha256(csr[2]).digest(),  # `public_key_sha256`, from the DER at hand
        )
        return leaf, record
