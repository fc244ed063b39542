"""The CA state store interface: join tokens, the issued-certificate ledger, revocations.

Every backend (SQLite by default, PostgreSQL for replicas) implements `StateStore` and
passes the same conformance suite (tests/store_conformance.py). The interface is
synchronous; trio shells call it through `trio.to_thread.run_sync`.

Rules every backend keeps:
- Tokens are stored as (public id, SHA-256 of the secret); the secret never is. The
  secret hash is compared with `hmac.compare_digest`, and a token is consumed by one
  conditional UPDATE, so two concurrent uses give exactly one success.
- Every write is one transaction: it happens whole or not at all.
- A backend that cannot reach its database raises `StoreUnavailable`, never a driver error.
- Issuance takes one store step each: `redeem_token` (bootstrap: consume the token, check
  revocation, record the ledger row, all in one transaction) and `record_renewal` (one
  conditional insert). Half the commits of separate calls, and nothing half-written.
- A public key is bound to the first SPIFFE ID it is issued for (`key_bindings`, keyed by
  the SHA-256 of its SubjectPublicKeyInfo): an issuance that would put that key under a
  second ID raises `KeyBound` and writes nothing. Issuing it again for the same ID (a
  renewal that keeps its key) is allowed. The binding is a unique key in the database, so
  two concurrent issuances of one key for two IDs give one success, on any replica.
- A backend may also offer `group()` (`GroupingStore`): the steps of several concurrent
  requests in one transaction and one commit, each step still whole or not at all.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, final, runtime_checkable

from meshgate.errors import MeshgateError
from meshgate.identity import SpiffeId

__all__ = [
    "GroupingStore",
    "IdRevoked",
    "IssuedRecord",
    "KeyBound",
    "Revocation",
    "StateStore",
    "StoreError",
    "StoreUnavailable",
    "TokenError",
    "TokenFailure",
    "TokenRecord",
    "TokenWrongId",
    "check_revoke_target",
    "token_refusal",
]


class StoreError(MeshgateError):
    """A state-store operation failed."""


class StoreUnavailable(StoreError):  # noqa: N818 - the public name other code uses
    """The database cannot be reached or is not at a known schema version."""


class TokenFailure(enum.StrEnum):
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"


class TokenError(StoreError):
    """A join token cannot be used; `reason` says why (the token itself is never included)."""

    def __init__(self, reason: TokenFailure) -> None:
        super().__init__(f"join token refused: {reason}")
        self.reason = reason


class TokenWrongId(StoreError):  # noqa: N818 - reads as the fact it reports
    """The token is bound to another SPIFFE ID than the redeemer expects; it stays unused.

    Raised only after the secret matched, so only the token's holder learns its binding.
    """

    def __init__(self, bound: SpiffeId, expected: SpiffeId) -> None:
        super().__init__(f"join token is bound to {bound}, not to the expected {expected}")
        self.bound = bound
        self.expected = expected


def token_refusal(row: Sequence[Any] | None, secret_hash: bytes, now: Any) -> TokenFailure | None:
    """Why the stored token `row` (secret_hash, spiffe_id, expires_at, used_at) cannot be
    consumed at `now` (in the backend's own time type), or None if it can.

    Fails closed: a wrong secret reads as UNKNOWN, the same as an unknown id, so a caller
    without the secret learns nothing; the secret hash is compared in constant time. The
    backend's conditional UPDATE still decides a race between two consumers.
    """
    if row is None or not hmac.compare_digest(bytes(row[0]), secret_hash):
        return TokenFailure.UNKNOWN
    if row[3] is not None:
        return TokenFailure.USED
    if now >= row[2]:
        return TokenFailure.EXPIRED
    return None


def check_revoke_target(spiffe_id: SpiffeId | None, serial: int | None) -> None:
    """`revoke` takes exactly one of a SPIFFE ID or a serial."""
    if (spiffe_id is None) == (serial is None):
        raise ValueError("revoke needs exactly one of spiffe_id or serial")


class IdRevoked(StoreError):  # noqa: N818 - reads as the fact it reports
    """The SPIFFE ID (or the presented certificate) is revoked; nothing was written."""

    def __init__(self, spiffe_id: SpiffeId) -> None:
        super().__init__(f"{spiffe_id} (or its certificate) is revoked")
        self.spiffe_id = spiffe_id


class KeyBound(StoreError):  # noqa: N818 - reads as the fact it reports
    """The certificate's public key is already bound to another SPIFFE ID; nothing written.

    `bound_to` is the other ID: for the CA's log, not for the requester (who learns only
    that the key is taken)."""

    def __init__(self, spiffe_id: SpiffeId, bound_to: SpiffeId) -> None:
        super().__init__(f"public key for {spiffe_id} is already bound to {bound_to}")
        self.spiffe_id = spiffe_id
        self.bound_to = bound_to


@final
@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str  # the public half; safe to show and log
    spiffe_id: SpiffeId
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


@final
@dataclass(frozen=True, slots=True)
class IssuedRecord:
    serial: int
    spiffe_id: SpiffeId
    kind: str  # "bootstrap", "renew", "offline", "ca-server"
    issued_at: datetime
    not_after: datetime
    replica: str = ""
    # SHA-256 of the leaf's SubjectPublicKeyInfo (`meshgate.keys.public_key_sha256`); empty
    # for rows written before key binding existed. Not read back by `issued()`.
    key_sha256: bytes = b""


@final
@dataclass(frozen=True, slots=True)
class Revocation:
    spiffe_id: SpiffeId | None
    serial: int | None
    revoked_at: datetime
    reason: str = ""


class StateStore(Protocol):
    def add_token(
        self,
        token_id: str,
        secret_hash: bytes,
        spiffe_id: SpiffeId,
        created_at: datetime,
        expires_at: datetime,
    ) -> None: ...

    def consume_token(self, token_id: str, secret_hash: bytes, now: datetime) -> SpiffeId:
        """Mark the token used and return its bound ID, or raise `TokenError`. Atomic."""
        ...

    def outstanding_tokens(self, now: datetime) -> Sequence[TokenRecord]: ...

    def redeem_token(
        self,
        token_id: str,
        secret_hash: bytes,
        now: datetime,
        issue: Callable[[SpiffeId], IssuedRecord],
        *,
        expected: SpiffeId | None = None,
    ) -> IssuedRecord:
        """Bootstrap in one transaction: consume the token, refuse a bound ID other than
        `expected` (`TokenWrongId`, when given) or a revoked one (`IdRevoked`), call
        `issue(bound_id)` (it signs) and record the row it returns.

        Whole or nothing: if `issue` raises, the ID is not the expected one or is revoked,
        or the row cannot be written, the token stays unused and nothing is recorded. Of
        concurrent redeemers of one token exactly one gets past the consume step
        (`TokenError` for the others). `issue` may be called again if the backend retries
        a transaction that never reached the database. A record whose `key_sha256` is bound
        to another ID raises `KeyBound`, whole.
        """
        ...

    def record_renewal(self, record: IssuedRecord, current_serial: int) -> None:
        """Record a renewal's row unless `record.spiffe_id` or `current_serial` (the
        certificate that authenticated the renewal) is revoked: then raise `IdRevoked` and
        write nothing; `KeyBound` likewise if its key is bound to another ID. Check and
        write are one atomic step."""
        ...

    def record_issued(self, record: IssuedRecord) -> None:
        """Record a row (offline issuance, the CA's own SVID); `KeyBound` as above."""
        ...

    def issued(self, spiffe_id: SpiffeId | None = None, limit: int = 100) -> Sequence[IssuedRecord]:
        """Most recent first."""
        ...

    def issued_serial(self, serial: int) -> IssuedRecord | None:
        """The ledger row of the certificate with `serial`, or None if this CA never issued it."""
        ...

    def issued_count(self) -> int: ...

    def revoke(
        self,
        now: datetime,
        *,
        spiffe_id: SpiffeId | None = None,
        serial: int | None = None,
        reason: str = "",
    ) -> Revocation:
        """Revoke an ID (all its certificates) or one serial. Exactly one must be given."""
        ...

    def revocations(self) -> Sequence[Revocation]: ...

    def is_revoked(self, spiffe_id: SpiffeId, serial: int) -> bool: ...

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class GroupingStore(Protocol):
    """A store that can commit the steps of several requests at once (group commit)."""

    def group(self, *, durable: bool) -> AbstractContextManager[None]:
        """The store calls made inside share one transaction and one commit. A call that
        fails rolls back alone; if the commit fails, the group raises `StoreUnavailable`
        and none of them happened. `durable`: some call inside is a durable write."""
        ...
