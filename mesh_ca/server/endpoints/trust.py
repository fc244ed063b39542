"""Handlers of what sidecars poll to decide whom to trust: the bundle (SPIFFE JSON and PEM),
the federated trust domains' bundles and the revocation list. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from mesh_ca.api import BundleHeldRequest, BundleHeldResponse, RevocationsResponse
from mesh_ca.server.messages import PEM, ApiRequest, ApiResponse, json_response
from mesh_ca.server.request_body import parse_body

if TYPE_CHECKING:
    from mesh_ca.server.core import CaService

__all__ = ["bundle", "bundle_held", "bundle_pem", "federated_bundles", "revocations"]


def bundle(service: CaService, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
    return ApiResponse(200, service.bundle_json)


def bundle_pem(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> ApiResponse:
    return ApiResponse(200, service.bundle_pem, content_type=PEM)


def bundle_held(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> ApiResponse:
    """A sidecar says which bundle sequence it holds (rotation waits on it)."""
    svid = service.clients.client_svid(request, now)
    body = parse_body(request, BundleHeldRequest)
    reporter = service.bundle_reporter
    if reporter is not None:
        reporter(svid.spiffe_id, body.sequence, now)
    current = service.authority.bundle.sequence or 0
    response = BundleHeldResponse(recorded=reporter is not None, sequence=current)
    return json_response(response, peer=str(svid.spiffe_id), held=str(body.sequence))


def federated_bundles(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> ApiResponse:
    """The bundles of the trust domains this mesh federates with, each under its name:
    what sidecars add to their own bundle. Public, like the bundle itself."""
    return ApiResponse(200, service.federated_json)


def revocations(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> ApiResponse:
    revoked = service.store.revocations()
    body = RevocationsResponse(
        spiffe_ids=tuple(str(r.spiffe_id) for r in revoked if r.spiffe_id is not None),
        serials=tuple(format(r.serial, "x") for r in revoked if r.serial is not None),
        sequence=len(revoked),
        updated_at=max((r.revoked_at for r in revoked), default=None),
    )
    return json_response(body)
