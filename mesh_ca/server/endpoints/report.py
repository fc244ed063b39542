"""Handler of the control plane's report endpoint: a sidecar's per-edge deltas and status
(`mesh_ca.control.report_intake`), kept under the ID of its verified client SVID, never one
named in the body. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from mesh_ca.control.report_intake import ReportRefused
from mesh_ca.server.messages import ApiError, ApiRequest, ApiResponse
from mesh_ca.server.request_body import require_json

if TYPE_CHECKING:
    from mesh_ca.server.core import CaService

__all__ = ["report"]


def report(service: CaService, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
    svid = service.clients.client_svid(request, now)
    require_json(request)
    caller = str(svid.spiffe_id)
    try:
        validity = (svid.leaf.not_valid_before_utc, svid.not_after)
        body = service.reports.accept(
            caller, validity, request.source, request.body, now, monotonic
        )
    except ReportRefused as exc:
        peer = {"peer": caller}
        raise ApiError(exc.status, exc.code, exc.message, exc.headers, peer) from None
    return ApiResponse(200, body, log={"peer": caller})
