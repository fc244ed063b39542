"""Inbound (tcp mode): terminate mTLS, verify, authorize ``connect``, then reach the app.

Pipeline per connection: admit (cap) → mesh handshake + SVID checks → authorize → connect
to the local app → relay until done, idle, or the first SVID's notAfter. Nothing reaches
the app — not even a TCP connection — before the peer is verified and authorized.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, final

import trio

from meshgate.transport.socket_stream import peer_address
from sidecar.admission import admitted, handshake_refused
from sidecar.authz.allow_list import Authorizer, authorize_safely
from sidecar.config import InboundConfig
from sidecar.observe.access import ConnectionReport
from sidecar.observe.logs import event
from sidecar.policy import Decision
from sidecar.runtime import Runtime
from sidecar.transport.mesh_tls import MeshTlsError, accept_mesh
from sidecar.transport.relay import abort, relay

__all__ = ["Inbound"]

log = logging.getLogger("sidecar.inbound.tcp")


AppConnector = Callable[[], Awaitable[trio.abc.HalfCloseableStream]]


@final
@dataclass(frozen=True, slots=True)
class Inbound:
    config: InboundConfig
    runtime: Runtime
    authorizer: Authorizer
    connect_app: AppConnector | None = None  # tests inject in-memory apps; default TCP

    async def handle(self, transport: trio.abc.Stream) -> None:
        """Serve one accepted connection; never raises for a peer's fault.

        Reports one access record per connection, whatever the outcome.
        """
        rt = self.runtime
        report = ConnectionReport(
            "inbound", peer_address(transport), self.config.service, rt.now(), trio.current_time()
        )
        async with admitted(rt, "inbound", transport, log, report, source=report.source) as slot:
            if slot is not None:
                await self._serve(transport, slot.handle, report)

    async def _serve(
        self, transport: trio.abc.Stream, handle: int, report: ConnectionReport
    ) -> None:
        rt = self.runtime
        source = report.source
        try:
            conn = await accept_mesh(
                transport,
                rt.store,
                rt.now,
                timeout_seconds=rt.timeouts.handshake_timeout_seconds,
            )
        except MeshTlsError as exc:
            handshake_refused(rt, "inbound", exc, log, report, source=source)
            return
        rt.observer.handshake("inbound", ok=True)
        report.peer_id = str(conn.peer_id)
        bound = rt.tracker.bind(handle, conn)
        decision = authorize_safely(
            self.authorizer,
            conn.peer_id,
            "connect",
            self.config.service,
            {"source": source, "tls_version": conn.stream.version() or ""},
        )
        report.decision = decision.result
        report.policies = decision.determining_policy_ids
        rt.observer.decision(report.decision, report.policies)
        if decision.reason.startswith(("engine-error", "authorizer error")):
            rt.observer.policy_engine_error()
        fields: dict[str, Any] = {
            "direction": "inbound",
            "source": source,
            "peer": str(conn.peer_id),
            "service": self.config.service,
            "decision": report.decision,
            "reason": _log_reason(decision),
            "policy_ids": list(report.policies),
        }
        if not decision.forward:
            report.reason = "denied"
            event(log, "connection denied", level=logging.WARNING, **fields)
            await conn.stream.aclose()
            return
        with bound:
            app = await self._connect_app()
            if app is None:
                report.reason = "app_unreachable"
                event(
                    log, "app unreachable", level=logging.ERROR, app=str(self.config.app), **fields
                )
                await abort(conn.stream)
                return
            result = await relay(
                conn.stream, app, idle_timeout_seconds=rt.timeouts.idle_timeout_seconds
            )
            report.bytes_in, report.bytes_out = result.bytes_a_to_b, result.bytes_b_to_a
            report.reason = None if result.outcome == "closed" else result.outcome
            return
        report.reason = rt.tracker.ended_by(handle) or "cancelled"
        await abort(conn.stream)  # reached only when the lifetime scope ran out
        event(log, "connection closed", **fields, outcome=report.reason)

    async def _connect_app(self) -> trio.abc.HalfCloseableStream | None:
        app = self.config.app
        with trio.move_on_after(self.runtime.timeouts.connect_timeout_seconds):
            try:
                if self.connect_app is not None:
                    return await self.connect_app()
                return await trio.open_tcp_stream(app.host, app.port)
            except OSError:
                return None
        return None


def _log_reason(decision: Decision) -> str:
    """Why, for the connection's log line; audit mode says what it would have done."""
    if decision.would_deny:
        return f"audit: would deny ({decision.detail})"
    return decision.detail
