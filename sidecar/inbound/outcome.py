"""What one inbound http request did: the records the stages fill in and the session reads.

`Outcome` is the request's result for its access record and for the connection loop;
`Upload` and `Response` are how far the body and the response got (they never raise,
they record; how the response relay ended is its `Relayed`); `Live` keeps both so that a
request cut from outside (revocation, expiry, drain timeout) still gets its one record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from meshgate.http import BodyKind, Framing, HttpError

__all__ = ["Live", "Outcome", "Response", "Upload", "body_free"]


def body_free(framing: Framing) -> bool:
    """No body follows the head (its EndOfMessage is due at once)."""
    return framing.kind is BodyKind.NONE or (
        framing.kind is BodyKind.LENGTH and framing.length == 0
    )


@final
@dataclass(slots=True)
class Outcome:
    """What happened to one request, for the access record and the connection loop."""

    status: int | None = None
    reason: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    keep_client: bool = False
    abort_client: bool = False


@final
@dataclass(slots=True)
class Upload:
    """The request body's way to the app (a child task); never raises, records instead."""

    done: bool = False
    bytes_in: int = 0
    client_error: HttpError | None = None  # a client fault in the body: 400, 413, 408
    client_gone: bool = False
    app_send_failed: bool = False


@final
@dataclass(slots=True)
class Response:
    """What of the response went to the client so far: the shared response relay
    (`sidecar.transport.response_pump`) fills it in as it sends."""

    status: int | None = None  # set when the head went to the client: no status of ours follows
    bytes_out: int = 0


@final
@dataclass(slots=True)
class Live:
    """How far a decided request got, for its record if its connection is cut."""

    upload: Upload | None = None
    response: Response | None = None

    def cut(self, cause: str) -> Outcome:
        """The outcome of a request cut by `cause` (revoked, svid_expired, drain_timeout…):
        the status that went out, if any, and ``response_incomplete`` after a head."""
        response, upload = self.response, self.upload
        outcome = Outcome(abort_client=True, reason=cause)
        if upload is not None:
            outcome.bytes_in = upload.bytes_in
        if response is not None:
            outcome.bytes_out = response.bytes_out
            if response.status is not None:
                outcome.status = response.status
                outcome.reason = f"response_incomplete: {cause}"
        return outcome
