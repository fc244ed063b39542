"""The CA's wire format: pydantic models for every JSON body the CA server reads or writes."""

from mesh_ca.api.models import (
    MAX_CSR_CHARS,
    BootstrapRequest,
    ErrorResponse,
    RenewRequest,
    RevocationsResponse,
    RevokeRequest,
    RevokeResponse,
    SvidResponse,
    TokenCreateRequest,
    TokenCreateResponse,
)

__all__ = [
    "MAX_CSR_CHARS",
    "BootstrapRequest",
    "ErrorResponse",
    "RenewRequest",
    "RevocationsResponse",
    "RevokeRequest",
    "RevokeResponse",
    "SvidResponse",
    "TokenCreateRequest",
    "TokenCreateResponse",
]
