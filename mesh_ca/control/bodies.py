"""JSON bodies in and out of the control-plane handlers: parse a request into its wire
model (415 for another content type, 400 naming the field), answer a model as JSON."""

from __future__ import annotations

from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

from mesh_ca.server.core import ApiError, ApiRequest, ApiResponse

__all__ = ["JSON", "json_response", "parse_body"]

JSON: Final = "application/json"
_M = TypeVar("_M", bound=BaseModel)


def json_response(model: BaseModel, **log_fields: str) -> ApiResponse:
    return ApiResponse(200, model.model_dump_json().encode(), JSON, log=log_fields)


def parse_body(request: ApiRequest, model: type[_M]) -> _M:
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type != JSON:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content-type must be {JSON}, not {request.content_type or 'missing'}",
        )
    try:
        return model.model_validate_json(request.body)
    except ValidationError as exc:
        parts = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error["loc"]) or "body"
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            parts.append(f"{where}: {message}")
        raise ApiError(400, "bad_request", "; ".join(parts)) from None
