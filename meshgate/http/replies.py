"""Responses the sidecar writes itself (403, 400, 502, 504 ...): short text bodies. Pure.

Bodies say what happened and carry the request id, so a caller can quote it and an
operator can find the access-log line; they never echo request bytes or name policies.
"""

from __future__ import annotations

from typing import Final

from meshgate.http import Framing, serialize_response_head
from meshgate.http.events import BodyKind

__all__ = ["REASONS", "reply"]

REASONS: Final = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def reply(
    status: int,
    message: str,
    request_id: str,
    *,
    close: bool,
    head_only: bool = False,
    version: str = "1.1",
) -> bytes:
    """A complete response: status line, headers, and ``<status> <reason>: <message>``.

    `close` adds ``connection: close`` (the caller then closes). `head_only` (a HEAD
    request) sends the headers without the body.
    """
    phrase = REASONS.get(status, "Error")
    body = f"{status} {phrase}: {message}\nrequest id: {request_id}\n".encode()
    headers: list[tuple[str, str]] = [
        ("content-type", "text/plain; charset=utf-8"),
        ("x-request-id", request_id),
    ]
    if close:
        headers.append(("connection", "close"))
    elif version == "1.0":
        headers.append(("connection", "keep-alive"))
    head = serialize_response_head(
        status, phrase, tuple(headers), Framing(BodyKind.LENGTH, len(body)), version
    )
    return head if head_only else head + body
