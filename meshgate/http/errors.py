"""The one error the HTTP core raises about bytes it received."""

from __future__ import annotations

from typing import final

from meshgate.errors import ProtocolError

__all__ = ["HttpError"]


@final
class HttpError(ProtocolError):
    """The peer sent something we refuse: malformed, ambiguous, or over a limit.

    Always the peer's fault (a bug of ours raises `ValueError`). `status_hint` is the status
    to answer with: 400, 413, 414, 431, 501, 505 for a client's request; 502 for an upstream
    response. `reason` is short, names the offending part, and is safe to send back: it
    never quotes more than a few bytes of what was received.
    """

    def __init__(self, status_hint: int, reason: str) -> None:
        super().__init__(f"{status_hint}: {reason}")
        self.status_hint = status_hint
        self.reason = reason

    def __repr__(self) -> str:
        return f"HttpError({self.status_hint}, {self.reason!r})"
