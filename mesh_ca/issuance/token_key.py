"""A CA signing key that lives elsewhere (a PKCS#11 token), as a cryptography private key.

cryptography's builders (`CertificateBuilder.sign`, CSR and CRL builders) accept any
subclass of `ec.EllipticCurvePrivateKey`: they read the curve and ask `sign(data,
ECDSA(hash))` for the signature over the to-be-signed bytes they encoded. So the
certificate is still built and DER-encoded by cryptography, and only the ECDSA operation
goes to the token (checked with cryptography 45.0.1 and 50: `tests/test_token_key.py`).

The token signs a digest (CKM_ECDSA) and returns the raw ``r || s``; this class hashes
with cryptography's hash and wraps ``r, s`` in the DER `Ecdsa-Sig-Value` X.509 wants
(`encode_dss_signature`). No private key material is ever here: `private_bytes`,
`private_numbers` and `exchange` refuse.

Pure: no PKCS#11 import. The caller passes `sign_digest`, which talks to the token (and
must be safe to call from several threads: `mesh-ca serve --threaded-handlers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from meshgate.errors import IdentityError

__all__ = ["TokenKeyError", "TokenSigningKey"]

# The hashes an ECDSA signature of ours may use (SHA-1 never: X509-SVIDs use SHA-256).
_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


class TokenKeyError(IdentityError, ValueError):
    """The operation cannot be done with a key kept in a token; the message says which key."""


@final
class TokenSigningKey(ec.EllipticCurvePrivateKey):
    """An ECDSA private key whose `sign` is done by `sign_digest` (digest -> raw r||s).

    `where` names the key for messages (e.g. ``PKCS#11 token 'ca' key 'meshgate-root'``).
    """

    def __init__(
        self,
        public: ec.EllipticCurvePublicKey,
        sign_digest: Callable[[bytes], bytes],
        where: str,
    ) -> None:
        self._public = public
        self._sign_digest = sign_digest
        self._where = where
        self._half = (public.curve.key_size + 7) // 8  # bytes of r (and of s)

    @property
    def where(self) -> str:
        return self._where

    def __repr__(self) -> str:
        return f"<TokenSigningKey {self._where} {self._public.curve.name}>"

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        """A DER ECDSA signature over `data` (or over a digest given as `Prehashed`)."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TokenKeyError(f"{self._where}: only ECDSA signatures, not {signature_algorithm}")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
            if len(digest) != algorithm.digest_size:
                raise TokenKeyError(
                    f"{self._where}: prehashed digest is {len(digest)} bytes, "
                    f"not {algorithm.digest_size}"
                )
        elif isinstance(algorithm, _HASHES):
            hasher = hashes.Hash(algorithm)
            hasher.update(bytes(data))
            digest = hasher.finalize()
        else:
            raise TokenKeyError(f"{self._where}: hash {algorithm.name} is not accepted")
        raw = self._sign_digest(digest)
        if len(raw) != 2 * self._half:
            raise TokenKeyError(
                f"{self._where}: the token returned a {len(raw)}-byte signature, "
                f"not {2 * self._half} (r || s)"
            )
        r = int.from_bytes(raw[: self._half], "big")
        s = int.from_bytes(raw[self._half :], "big")
        return utils.encode_dss_signature(r, s)

    def _refuse(self, what: str) -> NoReturn:
        raise TokenKeyError(f"{self._where}: {what} is not possible: the key never leaves it")

    def exchange(
        self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey
    ) -> bytes:  # pragma: no cover - never called by the CA
        self._refuse("ECDH with a CA signing key")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._refuse("reading the private numbers")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,  # cryptography's parameter name
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._refuse("exporting the private key")

    def __copy__(self) -> TokenSigningKey:
        return self  # one handle to one token object; nothing to copy

    def __deepcopy__(self, memo: dict[int, object]) -> TokenSigningKey:
        return self
