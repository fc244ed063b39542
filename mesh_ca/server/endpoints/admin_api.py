"""Handlers of the admin API: /v1/admin/tokens (create a join token) and /v1/admin/revoke.
Only for the IDs in server.admin_ids (`require_admin`), never any SVID. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mesh_ca.api import RevokeRequest, RevokeResponse, TokenCreateRequest, TokenCreateResponse
from mesh_ca.server.authorize import check_issuable, check_revocable, require_admin
from mesh_ca.server.messages import ApiError, ApiRequest, ApiResponse, json_response
from mesh_ca.server.request_body import parse_body, parse_id
from mesh_ca.tokens import new_token
from meshgate.identity import SpiffeId

if TYPE_CHECKING:
    from mesh_ca.server.core import CaService

__all__ = ["admin", "create_token", "revoke"]


def admin(service: CaService, request: ApiRequest, now: datetime) -> SpiffeId:
    """The admin's ID: authenticate, then authorize as an admin. Fails closed."""
    svid = service.clients.client_svid(request, now)
    return require_admin(svid, service.authority.admin_ids, service.store)


def create_token(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> ApiResponse:
    caller = admin(service, request, now)
    body = parse_body(request, TokenCreateRequest)
    spiffe_id = parse_id(body.spiffe_id, "spiffe_id")
    try:
        check_issuable(service.authority.trust_domain, spiffe_id)
    except ApiError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    ttl = timedelta(seconds=body.ttl_seconds) if body.ttl_seconds else service.authority.token_ttl
    token, token_id, secret_hash = new_token()
    service.store.add_token(token_id, secret_hash, spiffe_id, now, now + ttl)
    response = TokenCreateResponse(
        token=token, token_id=token_id, spiffe_id=str(spiffe_id), expires_at=now + ttl
    )
    return json_response(response, peer=str(caller), token_id=token_id, spiffe_id=str(spiffe_id))


def revoke(service: CaService, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
    caller = admin(service, request, now)
    body = parse_body(request, RevokeRequest)
    spiffe_id = parse_id(body.spiffe_id, "spiffe_id") if body.spiffe_id else None
    if spiffe_id is not None:
        check_revocable(service.authority.trust_domain, spiffe_id)
    serial = int(body.serial, 16) if body.serial else None
    if serial == 0:
        raise ApiError(400, "bad_request", "serial: must be positive")
    revocation = service.store.revoke(now, spiffe_id=spiffe_id, serial=serial, reason=body.reason)
    response = RevokeResponse(
        spiffe_id=str(revocation.spiffe_id) if revocation.spiffe_id else None,
        serial=format(revocation.serial, "x") if revocation.serial else None,
        revoked_at=revocation.revoked_at,
        reason=revocation.reason,
    )
    return json_response(response, peer=str(caller), revoked=body.spiffe_id or body.serial or "")
