"""Stage parse body: a JSON request body into its pydantic model (415 for another media type,
400 naming the fields for a bad body), and SPIFFE IDs named in a body. Pure."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from mesh_ca.server.messages import JSON, ApiError, ApiRequest
from meshgate.identity import SpiffeId, SpiffeIdError

__all__ = ["parse_body", "parse_id", "require_json", "validation_summary"]

_M = TypeVar("_M", bound=BaseModel)


def require_json(request: ApiRequest) -> None:
    """415 unless the request says its body is JSON."""
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type != JSON:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content-type must be {JSON}, not {request.content_type or 'missing'}",
        )


def parse_body(request: ApiRequest, model: type[_M]) -> _M:
    """The body as `model`; refused unless it is JSON that the model validates."""
    require_json(request)
    try:
        return model.model_validate_json(request.body)
    except ValidationError as exc:
        raise ApiError(400, "bad_request", validation_summary(exc)) from None


def validation_summary(exc: ValidationError) -> str:
    """The first five errors as ``field: message``, for the client."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_id(text: str, where: str) -> SpiffeId:
    """A SPIFFE ID from body field `where`; 400 naming the field if it is not one."""
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise ApiError(400, "bad_request", f"{where}: {exc}") from None
