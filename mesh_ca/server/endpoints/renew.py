"""Handler of /v1/renew: a new SVID for the same ID, authenticated by the current one. Pure.

Stages: throttle -> authenticate (the client SVID) -> authorize (an issuable ID) -> parse
body (the CSR) -> sign -> a `StoreStep` that records the row unless the ID or the presented
certificate is revoked (one atomic store step) -> the SVID response. Signing comes before
the revocation check: a revoked peer costs one wasted signature, every other renewal one
round trip less.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from mesh_ca.api import RenewRequest
from mesh_ca.server.authorize import check_issuable
from mesh_ca.server.messages import ApiError, ApiRequest, ApiResponse, StoreStep
from mesh_ca.server.request_body import parse_body
from mesh_ca.server.svid_response import key_bound_error
from mesh_ca.store import IdRevoked, KeyBound

if TYPE_CHECKING:
    from mesh_ca.server.core import CaService

__all__ = ["renew"]


def renew(service: CaService, request: ApiRequest, now: datetime, monotonic: float) -> StoreStep:
    service.throttle.admit(request, monotonic)
    svid = service.clients.client_svid(request, now)
    check_issuable(service.authority.trust_domain, svid.spiffe_id)
    body = parse_body(request, RenewRequest)
    csr = service.signing.csr(body.csr)
    leaf, record = service.signing.sign(csr, svid.spiffe_id, "renew", now)

    def record_renewal() -> ApiResponse:
        try:
            service.store.record_renewal(record, svid.leaf.serial_number)
        except IdRevoked:
            raise ApiError(
                403, "revoked", f"{svid.spiffe_id} (or its certificate) is revoked"
            ) from None
        except KeyBound as exc:
            raise key_bound_error(exc) from None
        return service.responder.svid(
            leaf,
            record,
            peer=str(svid.spiffe_id),
            peer_serial=format(svid.leaf.serial_number, "x"),
        )

    return StoreStep(record_renewal, durable=False)
