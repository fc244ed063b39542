"""Outbound (tcp mode): plaintext from the local app → mTLS to the destination's sidecar.

Pipeline per connection: admit (cap) → connect to an endpoint (round robin over the
`EndpointTable`, ejected ones last, skipping endpoints that fail within the connect
timeout) → mesh handshake with secure naming (the upstream must present one of the IDs the
table expects of that endpoint) → relay until done, idle, or the
first SVID's notAfter. Fails closed: no endpoint or no acceptable upstream means the local
connection is reset; nothing is ever sent in plaintext.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, final

import trio

from meshgate.transport.socket_stream import peer_address
from sidecar.admission import admitted, handshake_refused
from sidecar.config import Address, OutboundConfig
from sidecar.observe.access import ConnectionReport
from sidecar.observe.logs import event
from sidecar.outbound.endpoints import EndpointTable, static_table
from sidecar.runtime import Runtime
from sidecar.transport.mesh_tls import MeshTlsError, connect_mesh
from sidecar.transport.relay import abort, relay

__all__ = ["Outbound", "RoundRobin"]

log = logging.getLogger("sidecar.outbound.tcp")


@final
@dataclass
class RoundRobin:
    """Each call starts one endpoint further, then tries the rest in order. Pure."""

    endpoints: tuple[Address, ...]
    _next: int = 0

    def order(self) -> list[Address]:
        start = self._next % len(self.endpoints)
        self._next = start + 1
        return [*self.endpoints[start:], *self.endpoints[:start]]


@final
@dataclass
class Outbound:
    config: OutboundConfig
    runtime: Runtime
    # Static endpoints, or the set discovery keeps up to date; passive health lives there.
    table: EndpointTable | None = None

    def __post_init__(self) -> None:
        if self.table is None:
            self.table = static_table(self.config)

    async def handle(self, local: trio.abc.HalfCloseableStream) -> None:
        """Serve one local connection; never raises for a peer's fault.

        Reports one access record per connection, whatever the outcome.
        """
        rt = self.runtime
        report = ConnectionReport(
            "outbound", peer_address(local), self.config.service, rt.now(), trio.current_time()
        )
        service = self.config.service
        async with admitted(rt, "outbound", local, log, report, service=service) as slot:
            if slot is None:
                return
            await self._serve(local, slot.handle, report)
        if slot.scope.cancelled_caught:
            await abort(local)

    async def _connect(self) -> tuple[trio.SocketStream, Address] | None:
        assert self.table is not None
        for endpoint in self.table.order(trio.current_time()):
            with trio.move_on_after(self.runtime.timeouts.connect_timeout_seconds):
                try:
                    return await trio.open_tcp_stream(endpoint.host, endpoint.port), endpoint
                except OSError as exc:
                    self.table.failed(endpoint, trio.current_time(), str(exc))
                    event(
                        log,
                        "endpoint failed",
                        level=logging.WARNING,
                        service=self.config.service,
                        endpoint=str(endpoint),
                        error=str(exc),
                    )
                    continue
            self.table.failed(endpoint, trio.current_time(), "connect timeout")
            event(
                log,
                "endpoint timed out",
                level=logging.WARNING,
                service=self.config.service,
                endpoint=str(endpoint),
            )
        return None

    async def _serve(
        self, local: trio.abc.HalfCloseableStream, handle: int, report: ConnectionReport
    ) -> None:
        rt = self.runtime
        fields: dict[str, Any] = {"direction": "outbound", "service": self.config.service}
        connected = await self._connect()
        if connected is None:
            report.reason = "no_endpoint"
            event(log, "no endpoint reachable", level=logging.ERROR, **fields)
            await abort(local)
            return
        upstream, endpoint = connected
        fields["endpoint"] = report.extra["endpoint"] = str(endpoint)
        assert self.table is not None
        try:
            conn = await connect_mesh(
                upstream,
                rt.store,
                rt.now,
                expected=self.table.expected(endpoint),
                timeout_seconds=rt.timeouts.handshake_timeout_seconds,
            )
        except MeshTlsError as exc:
            self.table.failed(endpoint, trio.current_time(), str(exc.reason))
            handshake_refused(
                rt, "outbound", exc, log, report, service=fields["service"], endpoint=str(endpoint)
            )
            await abort(local)
            return
        rt.observer.handshake("outbound", ok=True)
        self.table.succeeded(endpoint)
        report.peer_id = fields["peer"] = str(conn.peer_id)
        with rt.tracker.bind(handle, conn):
            result = await relay(
                local, conn.stream, idle_timeout_seconds=rt.timeouts.idle_timeout_seconds
            )
            report.bytes_in, report.bytes_out = result.bytes_a_to_b, result.bytes_b_to_a
            report.reason = None if result.outcome == "closed" else result.outcome
            return
        report.reason = rt.tracker.ended_by(handle) or "cancelled"
        await abort(local)
        await abort(conn.stream)
        event(log, "connection closed", **fields, outcome=report.reason)
