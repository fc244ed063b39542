"""Inbound (http mode): terminate mTLS, then decide every request with Cedar before the app.

This module holds the listener's shared state and the connection's life (admit, handshake,
close); each request runs through the stages of `sidecar.inbound.session`.

Pipeline per connection: admit (cap) → mesh handshake + SVID checks → for each request on
the connection (keep-alive and pipelined requests each decided on their own): read the head
strictly (`RequestReader`; malformed or ambiguous → the reader's status, ``connection:
close``) → normalize the path once, make the Host canonical and refuse copies of headers
a policy reads (`InboundRules`) → decide (principal = verified peer, action = method,
resource = our service, context = path, query, host, headers as the app will get them,
source, TLS version, time) → 403 with the request id, or forward exactly that request,
rebuilt by the serializer, with hop-by-hop and client-supplied identity headers stripped,
our `x-forwarded-client-cert` and forwarding headers set (`inbound.forwarded_headers`)
and, with ``[tracing]``, a `traceparent` naming this hop's server span →
stream the body to the app and the response back. The app sees nothing of a request that
was refused. Fails closed: only a Cedar Allow with no evaluation errors forwards (audit
mode forwards what would be denied, once a policy set is live).

The connection never outlives its bound (`sidecar.transport.lifetime`: in ``strict`` mode the
peer's SVID or ours; revocation or an untrusted peer in every mode), cancelled by the
`ConnectionTracker`; from ``retire_margin_seconds`` before that end every response says
``connection: close``, so a well-behaved client never has a request cut by a rotation. A
request that was decided is reported exactly once, also when its connection is cut (the
reason names why; ``response_incomplete`` when the head had gone out).

Phases have their own timeouts: a head must be complete ``header_timeout_seconds`` after
its first byte, a body may pause for ``body_idle_timeout_seconds`` and must keep the pace
of ``body_timeout_seconds`` and ``body_min_rate_bytes_per_second`` (else 408), a kept-alive
connection waits ``keepalive_idle_timeout_seconds`` for its next request, and the app
must start answering within ``response_timeout_seconds``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import final

import trio

from meshgate.http import HttpLimits
from meshgate.http.body_pace import BodyPace
from meshgate.http.forwarding import new_uuid
from meshgate.http.inbound_rules import InboundRules
from meshgate.transport.socket_stream import TimedStream, lean, peer_address
from sidecar.admission import admitted, handshake_refused
from sidecar.config import InboundConfig
from sidecar.inbound.app_pool import AppConnector, AppPool
from sidecar.inbound.session import Session
from sidecar.policy import PolicyStore
from sidecar.runtime import Runtime
from sidecar.transport.client_gone import ClientGoneError
from sidecar.transport.mesh_tls import MeshConnection, MeshTlsError, accept_mesh
from sidecar.transport.relay import abort

__all__ = ["HttpInbound"]

log = logging.getLogger("sidecar.inbound.http")


@final
class HttpInbound:
    """The inbound proxy of ``protocol = "http"``; `handle` serves one accepted connection."""

    def __init__(
        self,
        config: InboundConfig,
        runtime: Runtime,
        policies: PolicyStore,
        *,
        audit: bool = False,
        connect_app: AppConnector | None = None,
        limits: HttpLimits | None = None,
        new_request_id: Callable[[], str] = new_uuid,
        pool_size: int = 16,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.policies = policies
        self.audit = audit
        self.limits = limits or HttpLimits()
        self.new_request_id = new_request_id
        self.draining = False
        self.rules = InboundRules(
            local_ports=frozenset({config.listen.port}),
            forwarding=config.forwarded_headers,
            path_match=config.path_match,
        )
        t = runtime.timeouts
        self.body_pace = BodyPace(t.body_timeout_seconds, t.body_min_rate_bytes_per_second)
        self._idle_waits: set[TimedStream] = set()  # client transports between requests
        self.pool = AppPool(
            connect_app or self._connect_tcp,
            max_idle=pool_size,
            idle_timeout_seconds=runtime.timeouts.keepalive_idle_timeout_seconds,
        )

    def drain(self) -> None:
        """SIGTERM: connections waiting for their next request close now; a request in
        progress finishes and its response says ``connection: close``."""
        self.draining = True
        for transport in self._idle_waits:
            transport.interrupt_receive()

    async def _connect_tcp(self) -> trio.abc.Stream:
        return lean(await trio.open_tcp_stream(self.config.app.host, self.config.app.port))

    async def handle(self, transport: trio.abc.Stream) -> None:
        """Serve one accepted connection; never raises for a peer's fault."""
        rt = self.runtime
        source = peer_address(transport)
        timed = lean(transport)
        async with admitted(rt, "inbound", timed, log, source=source) as slot:
            if slot is not None:
                await self._serve(timed, slot.handle, source)

    async def _serve(self, transport: TimedStream, handle: int, source: str) -> None:
        rt = self.runtime
        try:
            conn = await accept_mesh(
                transport, rt.store, rt.now, timeout_seconds=rt.timeouts.handshake_timeout_seconds
            )
        except MeshTlsError as exc:
            handshake_refused(rt, "inbound", exc, log, source=source)
            return
        rt.observer.handshake("inbound", ok=True)
        bound = rt.tracker.bind(handle, conn)
        session = Session(self, conn, source, transport, handle)
        clean = False
        try:
            with bound:
                clean = await session.run()
        except ClientGoneError:
            clean = False
        finally:
            with trio.CancelScope(shield=True):
                if clean:
                    await _close(conn)
                else:
                    await abort(conn.stream)


async def _close(conn: MeshConnection) -> None:
    """Graceful: close_notify, bounded by the stream's own grace period."""
    try:
        await conn.stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await abort(conn.stream)
