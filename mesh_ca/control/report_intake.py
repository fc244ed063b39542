"""``POST /v1/control/report``: check a sidecar's report and put it in the window. Pure.

The CA's API core (`mesh_ca.server.core`) verifies the caller's client SVID and hands the
verified SPIFFE ID, the SVID's validity, the body and the times here. Refusals are
`ReportRefused` with a status and a stable code:

- 413 ``report_too_large``: the body is over `MAX_REPORT_BYTES`;
- 400 ``bad_request``: not a `Report` (the message names the first fields at fault), or
  more than `MAX_EDGES` edges;
- 429 ``report_rate_limited``: one SPIFFE ID reports faster than `rate_per_second`
  (burst `burst`), counted over all its instances; ``retry-after`` says when;
- 429 ``too_many_instances``: a new instance over the window's caps.

A refused report changes nothing; the sidecar keeps its deltas and sends them again.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, final

from pydantic import ValidationError

from mesh_ca.control.mesh_view import mesh_view
from mesh_ca.control.mesh_window import MeshWindow, TooManyInstances, parse_window
from mesh_ca.control.report_wire import MAX_REPORT_BYTES, Report, ReportAccepted
from mesh_ca.server.ratelimit import RateLimiter
from mesh_ca.server.request_body import validation_summary
from meshgate.errors import ProtocolError

__all__ = ["DEFAULT_INTERVAL_SECONDS", "ReportIntake", "ReportRefused"]

DEFAULT_INTERVAL_SECONDS: Final = 5.0


class ReportRefused(ProtocolError):  # noqa: N818 - a refusal, answered with `status`
    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


@final
@dataclass
class ReportIntake:
    """The window and the limits that guard it; one per CA process."""

    window: MeshWindow
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    rate_per_second: float = 10.0
    burst: int = 30

    def __post_init__(self) -> None:
        self._limiter = RateLimiter(self.rate_per_second, self.burst)
        self._lock = threading.Lock()

    def accept(
        self,
        spiffe_id: str,
        svid_validity: tuple[datetime, datetime],
        address: str,
        body: bytes,
        now: datetime,
        monotonic: float,
    ) -> bytes:
        """The 200 body for an accepted report; `ReportRefused` otherwise."""
        if len(body) > MAX_REPORT_BYTES:
            raise ReportRefused(
                413,
                "report_too_large",
                f"report of {len(body)} bytes exceeds {MAX_REPORT_BYTES} bytes; send fewer edges",
            )
        with self._lock:
            allowed = self._limiter.allow(spiffe_id, monotonic)
            wait = 0.0 if allowed else self._limiter.retry_after(spiffe_id)
        if not allowed:
            seconds = max(1, math.ceil(wait))
            raise ReportRefused(
                429,
                "report_rate_limited",
                f"{spiffe_id} reports more than {self.rate_per_second:g} times a second; "
                f"retry in {seconds} s",
                (("retry-after", str(seconds)),),
            )
        try:
            report = Report.model_validate_json(body)
        except ValidationError as exc:
            raise ReportRefused(400, "bad_request", validation_summary(exc)) from None
        try:
            self.window.add(spiffe_id, address, svid_validity, report, now)
        except TooManyInstances as exc:
            raise ReportRefused(
                429, "too_many_instances", str(exc), (("retry-after", "60"),)
            ) from None
        return (
            ReportAccepted(accepted=True, received_at=now, interval_seconds=self.interval_seconds)
            .model_dump_json()
            .encode()
        )

    def view(self, window_name: str, now: datetime, ca: dict[str, Any]) -> dict[str, Any]:
        """The mesh JSON for ``1m``, ``5m`` or ``15m`` (ValueError for another name)."""
        length: timedelta = parse_window(window_name)
        return mesh_view(self.window, window_name, length, now, ca)
