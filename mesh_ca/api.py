"""JSON bodies of the CA API. Frozen, unknown fields forbidden, every string length-capped.

Requests are parsed with `model_validate_json` (strict JSON types: a number is not a
string). Certificates travel as PEM text, serials as lowercase hex, times as RFC 3339 UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshgate.identity import MAX_SPIFFE_ID_BYTES, SpiffeId

__all__ = [
    "MAX_CSR_CHARS",
    "REASON_PATTERN",
    "BootstrapRequest",
    "BundleHeldRequest",
    "BundleHeldResponse",
    "ErrorResponse",
    "RenewRequest",
    "RevocationsResponse",
    "RevokeRequest",
    "RevokeResponse",
    "SvidResponse",
    "TokenCreateRequest",
    "TokenCreateResponse",
    "reserved_revocation",
]

MAX_CSR_CHARS: Final = 16 * 1024
MAX_TOKEN_CHARS: Final = 256
MAX_SERIAL_HEX: Final = 40  # 159-bit serials are at most 40 hex digits
_HEX: Final = r"^[0-9a-f]{1,40}\z"  # rust-regex: \z is the very end
# A revocation reason: printable text, no C0/C1 control characters or DEL.
REASON_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]*\z"

SpiffeIdText = Annotated[str, Field(min_length=10, max_length=MAX_SPIFFE_ID_BYTES)]
SerialHex = Annotated[str, Field(min_length=1, max_length=MAX_SERIAL_HEX, pattern=_HEX)]
CsrPem = Annotated[str, Field(min_length=1, max_length=MAX_CSR_CHARS)]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class BootstrapRequest(_Wire):
    """A one-time join token and a CSR. The token's binding alone decides the SPIFFE ID;
    `spiffe_id`, when sent, is the ID the client expects: if the token is bound to another,
    the CA refuses (403 ``token_wrong_id``) and the token stays unused."""

    token: Annotated[str, Field(min_length=1, max_length=MAX_TOKEN_CHARS)]
    csr: CsrPem
    spiffe_id: SpiffeIdText | None = None

    def __repr__(self) -> str:  # the token is a secret: never in a repr, log or traceback
        return (
            f"BootstrapRequest(token=<redacted>, csr=<{len(self.csr)} chars>, "
            f"spiffe_id={self.spiffe_id!r})"
        )

    __str__ = __repr__


class RenewRequest(_Wire):
    """A CSR for a new key; the SPIFFE ID comes from the client certificate (mTLS)."""

    csr: CsrPem


class BundleHeldRequest(_Wire):
    """What a sidecar reports holding: the ``spiffe_sequence`` of its trust bundle. The
    SPIFFE ID comes from the client certificate (mTLS); `mesh-ca root activate` waits for
    every active workload to report the sequence of the prepared root."""

    sequence: Annotated[int, Field(ge=0, le=2**62)]


class BundleHeldResponse(_Wire):
    recorded: bool
    sequence: int  # the sequence this CA publishes now


class SvidResponse(_Wire):
    spiffe_id: SpiffeIdText
    chain_pem: str  # leaf first, then the intermediate(s)
    bundle_pem: str  # the trust domain's roots
    serial: SerialHex
    not_after: datetime


class RevocationsResponse(_Wire):
    spiffe_ids: tuple[SpiffeIdText, ...]
    serials: tuple[SerialHex, ...]
    # Count of revocations; it only grows, so a client can tell a newer list from an older.
    sequence: int
    updated_at: datetime | None


class ErrorResponse(_Wire):
    error: Annotated[str, Field(max_length=64)]  # a short stable code, e.g. "token_used"
    message: Annotated[str, Field(max_length=1024)]


class TokenCreateRequest(_Wire):
    spiffe_id: SpiffeIdText
    ttl_seconds: Annotated[int, Field(ge=10, le=7 * 86400)] | None = None


class TokenCreateResponse(_Wire):
    token: str
    token_id: str
    spiffe_id: SpiffeIdText
    expires_at: datetime

    def __repr__(self) -> str:
        return f"TokenCreateResponse(token=<redacted>, token_id={self.token_id!r})"

    __str__ = __repr__


class RevokeRequest(_Wire):
    """Revoke a SPIFFE ID (every certificate it holds) or one certificate serial."""

    spiffe_id: SpiffeIdText | None = None
    serial: SerialHex | None = None
    # Printed by `mesh-ca status` and kept in the store: no control characters (terminal
    # escapes, NUL, which PostgreSQL text refuses).
    reason: Annotated[str, Field(max_length=256, pattern=REASON_PATTERN)] = ""

    @model_validator(mode="after")
    def _exactly_one(self) -> RevokeRequest:
        if (self.spiffe_id is None) == (self.serial is None):
            raise ValueError("give exactly one of spiffe_id or serial")
        return self


class RevokeResponse(_Wire):
    spiffe_id: SpiffeIdText | None
    serial: SerialHex | None
    revoked_at: datetime
    reason: str


def reserved_revocation(spiffe_id: SpiffeId) -> str:
    """Why a reserved ID (the CA server's own) is not revoked by name: it would change
    nothing, and an operator must not believe otherwise."""
    return (
        f"{spiffe_id} is the mesh's own (the CA server's SVID is re-issued with a new key "
        "at every start); revoking it by name would change nothing: restart the CA to "
        "replace its SVID, and rotate the CA keys if they leaked (docs/operations.md)"
    )
