"""JSON bodies in and out of the control-plane handlers: parsing is the CA's own stage
(`mesh_ca.server.request_body.parse_body`: 415 for another content type, 400 naming the
field); a model is answered as JSON."""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel

from mesh_ca.server.core import ApiResponse
from mesh_ca.server.request_body import parse_body

__all__ = ["JSON", "json_response", "parse_body"]

JSON: Final = "application/json"


def json_response(model: BaseModel, **log_fields: str) -> ApiResponse:
    return ApiResponse(200, model.model_dump_json().encode(), JSON, log=log_fields)
