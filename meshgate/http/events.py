"""What the readers hand out: heads, body data, end of message, and two signals."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final, TypeAlias, final

from meshgate.records import record

__all__ = [
    "CONNECTION_CLOSED",
    "NEED_DATA",
    "BodyKind",
    "Data",
    "EndOfMessage",
    "Event",
    "Framing",
    "Headers",
    "HttpLimits",
    "InterimResponse",
    "RequestHead",
    "ResponseHead",
    "Signal",
]

# Lowercase names, values with surrounding whitespace removed, in wire order. Values are
# latin-1 decoded so that obs-text bytes survive a round trip unchanged.
Headers: TypeAlias = tuple[tuple[str, str], ...]


class BodyKind(enum.Enum):
    NONE = "none"  # no body at all (and no framing header to send)
    LENGTH = "length"  # Content-Length: n (n may be 0)
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    UNTIL_CLOSE = "until-close"  # responses only: the body ends when the peer closes


@final
@dataclass(frozen=True, slots=True)
class Framing:
    """How a message body is delimited. `length` is meaningful for LENGTH only."""

    kind: BodyKind
    length: int = 0


NO_BODY: Final = Framing(BodyKind.NONE)


@final
@record(frozen=True, slots=True)
class RequestHead:
    """A request head that passed every check. `target` is the raw origin-form target:
    normalize it with `normalize_target` before authorizing and forwarding."""

    method: str
    target: str
    version: str  # "1.0" or "1.1"
    headers: Headers
    framing: Framing
    keep_alive: bool


@final
@record(frozen=True, slots=True)
class ResponseHead:
    """A final (non-1xx) response head from upstream."""

    status: int
    reason: str
    version: str
    headers: Headers
    framing: Framing
    keep_alive: bool


@final
@record(frozen=True, slots=True)
class InterimResponse:
    """A 1xx response (other than 101) that precedes the final response; it has no body."""

    status: int
    reason: str
    headers: Headers


@final
@record(frozen=True, slots=True)
class Data:
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The body is complete. Trailers were validated and dropped (we never forward them)."""


class Signal(enum.Enum):
    NEED_DATA = "need-data"  # feed more bytes (or EOF) to make progress
    CONNECTION_CLOSED = "connection-closed"  # no further message will come on this connection


NEED_DATA: Final = Signal.NEED_DATA
CONNECTION_CLOSED: Final = Signal.CONNECTION_CLOSED

Event: TypeAlias = RequestHead | ResponseHead | InterimResponse | Data | EndOfMessage | Signal

DEFAULT_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


@final
@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Our own caps, independent of how many bytes a socket read returns.

    `allowed_methods`: others get 501. CONNECT (tunnels) and TRACE (echoes credentials
    back, "cross-site tracing") are left out on purpose. `max_body_bytes=None` means no cap
    (for upstream responses, which are streamed).
    """

    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    max_request_line_bytes: int = 8 * 1024
    max_body_bytes: int | None = 16 * 1024 * 1024
    max_chunk_line_bytes: int = 4 * 1024
    allowed_methods: frozenset[str] = field(default=DEFAULT_METHODS)

    def __post_init__(self) -> None:
        if self.max_request_line_bytes > self.max_head_bytes:
            raise ValueError("max_request_line_bytes must not exceed max_head_bytes")
        for name in ("max_head_bytes", "max_headers", "max_chunk_line_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
