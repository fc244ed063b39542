"""Handlers of /healthz, /readyz and /metrics: is the CA up, can it issue, its counters. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from mesh_ca.server.messages import ApiError, ApiRequest, ApiResponse
from mesh_ca.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from mesh_ca.server.core import CaService

__all__ = ["healthz", "metrics", "readyz"]


def healthz(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> ApiResponse:
    return ApiResponse(200, b'{"status":"ok"}')


def readyz(service: CaService, request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse:
    """Ready when the store answers and the signing certificate is still valid."""
    service.store.ping()
    if now >= service.authority.signer.not_after:
        raise ApiError(503, "signer_expired", "the signing CA certificate has expired")
    return ApiResponse(200, b'{"status":"ready"}')


def metrics(
    service: CaService, request: ApiRequest, now: datetime, monotonic: float
) -> ApiResponse:
    return ApiResponse(200, service.metrics.render(), content_type=METRICS_CONTENT_TYPE)
