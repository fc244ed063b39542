"""What every listener does around one connection: admit it under the caps, keep the
open/closed metrics, report its access record, and report a refused mesh handshake.

Inbound connections are admitted per source and as *pending* until their handshake is
done (`ConnectionTracker`); before the handler starts, a pending connection must send its
first byte within ``client_hello_timeout_seconds``, so a socket that never speaks holds a
pending slot for seconds, not for the whole handshake timeout.

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

from mesh_ca.server.ratelimit import source_key
from meshgate.transport.socket_stream import LeanSocketStream, peer_address
from sidecar.connections import Refused
from sidecar.observe.access import ConnectionReport, Direction
from sidecar.observe.logs import event
from sidecar.runtime import Runtime
from sidecar.transport.mesh_tls import MeshTlsError
from sidecar.transport.relay import abort

__all__ = ["Admission", "admitted", "handshake_refused", "source_of"]


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
    """Admit one connection, or refuse it: None (the transport already aborted) when a
    cap is reached or an inbound peer sent nothing in time, so the caller just returns.

    The body runs inside a cancel scope the tracker cancels on revocation, expiry or drain;
    such a cancellation ends the body quietly and is logged as "connection closed". When
    given, `report` gets reason ``cancelled`` then and is recorded whatever the outcome.
    `fields` (``source=`` or ``service=``) name the connection in the log events.
    """
    yielded = evicted = False
    with trio.CancelScope() as scope:
        source = _source_key(transport) if direction == "inbound" else None
        handle = rt.tracker.admit(scope, direction, source)
        if isinstance(handle, Refused):
            _refused(rt, direction, handle.reason, log, fields)
            await abort(transport)
            yielded = True
            yield None
            return
        opened = False
        try:
            if source is not None and not await _first_byte(transport, rt):
                _refused(rt, direction, "client_hello_timeout", log, fields)
                await abort(transport)
                yielded = True
                yield None
                return
            rt.observer.connection_opened(direction)
            opened = True
            yielded = True
            yield Admission(handle, scope)
        finally:
            slot = rt.tracker.slot(handle)
            evicted = slot is not None and slot.evicted
            ended_by = rt.tracker.ended_by(handle)
            rt.tracker.release(handle)
            if evicted:
                rt.observer.connection_refused(direction, "handshake_evicted")
            if opened:
                rt.observer.connection_closed(direction)
                if report is not None:
                    if scope.cancel_called and report.reason is None:
                        # revoked, untrusted, drained or evicted (handshake_evicted)
                        report.reason = ended_by or "cancelled"
                    rt.observer.request(report.record(trio.current_time()))
    if not yielded:  # evicted while it had not sent a byte yet
        event(log, "connection refused", direction=direction, **fields, reason="handshake_evicted")
        with trio.CancelScope(shield=True):
            await abort(transport)
        yield None
        return
    if scope.cancelled_caught:
        outcome = (
            "handshake_evicted (pending handshake budget full)"
            if evicted
            else f"cancelled ({ended_by})"
            if ended_by  # revoked, untrusted (e.g. its trust domain no longer federated), ...
            else "cancelled (revoked, expired or drained)"
        )
        event(log, "connection closed", direction=direction, **fields, outcome=outcome)


def _refused(
    rt: Runtime, direction: Direction, reason: str, log: logging.Logger, fields: dict[str, Any]
) -> None:
    event(log, "connection refused", direction=direction, **fields, reason=reason)
    rt.observer.connection_refused(direction, reason)


def _source_key(transport: trio.abc.Stream) -> str:
    return source_of(peer_address(transport))


def source_of(address: str) -> str:
    """The per-source key of a ``host:port`` / ``[v6]:port`` peer address: its IPv4
    address or IPv6 /64 (`mesh_ca.server.ratelimit.source_key`, as the CA counts)."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return source_key(host.strip("[]"))


async def _first_byte(transport: trio.abc.Stream, rt: Runtime) -> bool:
    """Wait until the peer has sent something (its ClientHello), without reading it;
    False if it stayed silent for ``client_hello_timeout_seconds``."""
    sock = getattr(transport, "socket", None)
    if not isinstance(transport, trio.SocketStream | LeanSocketStream) or sock is None:
        return True  # in-memory streams (tests): nothing to wait on
    with trio.move_on_after(rt.timeouts.client_hello_timeout_seconds):
        await trio.lowlevel.wait_readable(sock.fileno())
        return True
    return False


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
