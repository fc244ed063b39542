"""The values every stage of the CA API passes on: the request, the response, a refusal
(`ApiError`) and an issuance's deferred store write (`StoreStep`). Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, final

from cryptography import x509
from pydantic import BaseModel

from mesh_ca.api import ErrorResponse
from meshgate.errors import ProtocolError

__all__ = [
    "INTERNAL_ERROR",
    "JSON",
    "PEM",
    "ApiError",
    "ApiRequest",
    "ApiResponse",
    "StoreStep",
    "error_response",
    "json_response",
]

JSON: Final = "application/json"
PEM: Final = "application/x-pem-file"


class ApiError(ProtocolError):
    """A refusal with an HTTP status, a short stable code and a message for the client."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        log: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.log = dict(log or {})  # public facts for the access log line


# A bug or an unforeseen error in a handler: answered, logged by the shell, never a crash.
INTERNAL_ERROR: Final = ApiError(500, "internal_error", "the CA failed to finish this request")


@final
@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    path: str
    content_type: str | None
    body: bytes
    source: str  # the client's IP address, the rate-limit key
    peer_cert: x509.Certificate | None = None  # the TLS client certificate, if any


@final
@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    # For the access log only: public facts (peer ID, issued ID, serial, token id).
    log: Mapping[str, str] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class StoreStep:
    """The rest of an issuance request once everything before its store write is done:
    `run` writes the store and returns the response. `durable`: the write consumes a token
    (it needs a durable commit). The shell runs it alone or grouped (`CaService.run_steps`)."""

    run: Callable[[], ApiResponse]
    durable: bool


def json_response(model: BaseModel, **log: str) -> ApiResponse:
    """200 with `model` as the JSON body."""
    return ApiResponse(200, model.model_dump_json().encode(), log=log)


def error_response(exc: ApiError, **log: str) -> ApiResponse:
    """The response for a refusal: an `ErrorResponse` body, its headers, its log facts."""
    body = ErrorResponse(error=exc.code, message=exc.message[:1024]).model_dump_json().encode()
    return ApiResponse(
        exc.status, body, headers=exc.headers, log={"error": exc.code, **exc.log, **log}
    )
