"""What every listener does around one connection: admit it under the cap, keep the
open/closed metrics, report its access record, and report a refused mesh handshake.

Shared by the tcp and http shells so each refusal and each cancellation is reported the
same way whichever mode served it. Runs once per connection, never per request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, final

import trio

from sidecar.logs import event
from sidecar.observe import ConnectionReport, Direction
from sidecar.relay import abort
from sidecar.runtime import Runtime
from sidecar.tls import MeshTlsError

__all__ = ["Admission", "admitted", "handshake_refused"]


@final
@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted connection: its tracker handle and the scope revocation cancels."""

    handle: int
    scope: trio.CancelScope


@asynccontextmanager
async def admitted(
    rt: Runtime,
    direction: Direction,
    transport: trio.abc.Stream,
    log: logging.Logger,
    report: ConnectionReport | None = None,
    **fields: Any,
) -> AsyncIterator[Admission | None]:
    """Admit one connection, or refuse it: None (the transport already aborted) when the
    cap is reached, so the caller just returns.

    The body runs inside a cancel scope the tracker cancels on revocation, expiry or drain;
    such a cancellation ends the body quietly and is logged as "connection closed". When
    given, `report` gets reason ``cancelled`` then and is recorded whatever the outcome.
    `fields` (``source=`` or ``service=``) name the connection in the log events.
    """
    with trio.CancelScope() as scope:
        handle = rt.tracker.admit(scope, direction)
        if handle is None:
            event(
                log,
                "connection refused",
                direction=direction,
                **fields,
                reason="max_connections",
            )
            rt.observer.connection_refused(direction, "max_connections")
            await abort(transport)
            yield None
            return
        rt.observer.connection_opened(direction)
        try:
            yield Admission(handle, scope)
        finally:
            ended_by = rt.tracker.ended_by(handle)
            rt.tracker.release(handle)
            rt.observer.connection_closed(direction)
            if report is not None:
                if scope.cancel_called and report.reason is None:
                    report.reason = ended_by or "cancelled"  # revoked, untrusted or drained
                rt.observer.request(report.record(trio.current_time()))
    if scope.cancelled_caught:
        event(
            log,
            "connection closed",
            direction=direction,
            **fields,
            outcome="cancelled (revoked, expired or drained)",
        )


def handshake_refused(
    rt: Runtime,
    direction: Direction,
    exc: MeshTlsError,
    log: logging.Logger,
    report: ConnectionReport | None = None,
    **fields: Any,
) -> None:
    """Count, record and log a mesh handshake that failed (`fields` name the connection)."""
    reason = str(exc.reason)
    service = report.destination if report is not None else None
    rt.observer.handshake(direction, ok=False, reason=reason, service=service)
    if report is not None:
        report.reason = reason
        report.peer_id = str(exc.peer) if exc.peer else None
    event(
        log,
        "handshake refused",
        level=logging.WARNING,
        direction=direction,
        **fields,
        reason=reason,
        peer=exc.peer,
        detail=exc.detail,
    )
