"""Handler of /v1/bootstrap: a one-time join token and a CSR for the first SVID. Pure.

Stages: throttle -> parse body (token, CSR, expected ID; bad input changes nothing) -> a
`StoreStep` that redeems the token, signs inside the store's transaction and records the
leaf -> the SVID response. Of concurrent uses of one token exactly one gets past the
consume step; if anything after it fails the transaction rolls back and the token stays
unused. A token bound to another ID than the expected one is refused before signing.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509

from mesh_ca.api import BootstrapRequest
from mesh_ca.server.messages import ApiError, ApiRequest, ApiResponse, StoreStep
from mesh_ca.server.request_body import parse_body, parse_id
from mesh_ca.server.svid_response import key_bound_error
from mesh_ca.store import IdRevoked, IssuedRecord, KeyBound, TokenError, TokenFailure, TokenWrongId
from mesh_ca.tokens import TokenFormatError, parse_token
from meshgate.identity import SpiffeId

if TYPE_CHECKING:
    from mesh_ca.server.core import CaService

__all__ = ["bootstrap"]

_TOKEN_REFUSALS = {
    TokenFailure.UNKNOWN: (401, "token_unknown"),
    TokenFailure.USED: (403, "token_used"),
    TokenFailure.EXPIRED: (403, "token_expired"),
}


def bootstrap(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> StoreStep:
    service.throttle.admit(request, monotonic)
    body = parse_body(request, BootstrapRequest)
    try:
        token_id, secret_hash = parse_token(body.token)
    except TokenFormatError as exc:
        service.metrics.token_failures.labels("malformed").inc()
        raise ApiError(401, "token_invalid", str(exc)) from None
    csr = service.signing.csr(body.csr)  # before the store is touched: bad input changes nothing
    expected = parse_id(body.spiffe_id, "spiffe_id") if body.spiffe_id else None

    def redeem() -> ApiResponse:
        signed: list[x509.Certificate] = []

        def issue(spiffe_id: SpiffeId) -> IssuedRecord:
            # Runs inside the store's transaction; raising here rolls the token back.
            leaf, record = service.signing.sign(csr, spiffe_id, "bootstrap", now)
            signed.append(leaf)  # a retried transaction signs again: the last one counts
            return record

        try:
            record = service.store.redeem_token(
                token_id, secret_hash, now, issue, expected=expected
            )
        except TokenError as exc:
            service.metrics.token_failures.labels(exc.reason.value).inc()
            status, code = _TOKEN_REFUSALS[exc.reason]
            raise ApiError(status, code, f"join token {token_id} refused: {exc.reason}") from None
        except TokenWrongId as exc:
            # Refused before anything is signed; the token stays usable by its own ID.
            service.metrics.token_failures.labels("wrong_id").inc()
            raise ApiError(
                403,
                "token_wrong_id",
                f"join token {token_id} is bound to {exc.bound}, but the request expects "
                f"{exc.expected}; the token was not used",
                log={
                    "token_id": token_id,
                    "spiffe_id": str(exc.bound),
                    "expected_id": str(exc.expected),
                },
            ) from None
        except IdRevoked as exc:
            raise ApiError(403, "revoked", f"{exc.spiffe_id} is revoked") from None
        except KeyBound as exc:
            raise key_bound_error(exc) from None
        return service.responder.svid(signed[-1], record, token_id=token_id)

    return StoreStep(redeem, durable=True)
