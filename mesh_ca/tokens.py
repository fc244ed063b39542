"""One-time join tokens: ``mgt_<token_id>.<secret>``. Pure, no I/O.

The token id (16 url-safe characters) is public and safe to log; it is how the store
finds the token. The secret (32 random bytes, url-safe base64) is shown once to the
operator and stored only as its SHA-256, which the store compares in constant time.
Errors never contain the secret.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from datetime import timedelta
from typing import Final

from meshgate.errors import IdentityError

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "TOKEN_PREFIX",
    "TokenFormatError",
    "hash_secret",
    "new_token",
    "parse_token",
]

TOKEN_PREFIX: Final = "mgt_"  # noqa: S105 - a public prefix
DEFAULT_TOKEN_TTL: Final = timedelta(minutes=10)
TOKEN_ID_LENGTH: Final = 16
SECRET_BYTES: Final = 32
_ID_ALPHABET: Final = string.ascii_letters + string.digits + "-_"
# 32 bytes in unpadded url-safe base64 are exactly 43 characters.
_TOKEN_RE: Final = re.compile(r"mgt_([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})")


class TokenFormatError(IdentityError, ValueError):
    """A string is not a join token. The message never includes the secret part."""


def hash_secret(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def new_token() -> tuple[str, str, bytes]:
    """A fresh token: (token text to hand out, public token id, SHA-256 of the secret)."""
    token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(TOKEN_ID_LENGTH))
    secret_text = secrets.token_urlsafe(SECRET_BYTES)
    return (
        f"{TOKEN_PREFIX}{token_id}.{secret_text}",
        token_id,
        hash_secret(secret_text.encode("ascii")),
    )


def parse_token(text: str) -> tuple[str, bytes]:
    """(token id, SHA-256 of the secret) of a token string; raises `TokenFormatError`."""
    if not isinstance(text, str):
        raise TokenFormatError(f"join token must be a string, not {type(text).__name__}")
    match = _TOKEN_RE.fullmatch(text)
    if match is None:
        # Only the shape is described: the text may hold a real secret with a typo.
        if not text.startswith(TOKEN_PREFIX):
            raise TokenFormatError(f"join token does not start with {TOKEN_PREFIX!r}")
        raise TokenFormatError(
            f"join token is not {TOKEN_PREFIX}<16-char id>.<43-char secret> "
            f"({len(text)} characters given)"
        )
    token_id, secret_text = match.group(1), match.group(2)
    return token_id, hash_secret(secret_text.encode("ascii"))
