"""Private keys: generation (ECDSA P-256 by default), PEM encoding, and 0600 key files.

Key files are created with mode 0600 from the first byte (never chmod after writing), and
written atomically so a crash never leaves half a key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from meshgate.errors import IdentityError
from meshgate.files import write_atomic

__all__ = [
    "KeyFileError",
    "PrivateKey",
    "generate_key",
    "load_private_key",
    "private_key_pem",
    "public_key_der",
    "public_key_sha256",
    "write_private_file",
]

PrivateKey = ec.EllipticCurvePrivateKey


class KeyFileError(IdentityError, ValueError):
    """A key file is missing, unreadable, encrypted without a passphrase, or not EC."""


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_der(public: PublicKeyTypes) -> bytes:
    """The key as DER SubjectPublicKeyInfo: one canonical form to compare keys by."""
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_sha256(public: PublicKeyTypes) -> bytes:
    """SHA-256 of `public_key_der`: what the CA store binds to one SPIFFE ID."""
    return hashlib.sha256(public_key_der(public)).digest()


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 (never readable by others)."""
    write_atomic(path, data, 0o600)


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        hint = "it is encrypted: give the passphrase" if passphrase is None else str(exc)
        raise KeyFileError(f"{path}: {hint}") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a usable PEM private key (or wrong passphrase)") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: expected an EC private key, got {type(key).__name__}")
    return key
