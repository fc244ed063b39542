"""One verified client connection of the inbound http proxy: the request loop, which runs
each request through the named stages read → normalize → decide → forward → relay → report.

- read: `sidecar.inbound.client.ClientSide` (strict `RequestReader`, phase deadlines);
- normalize and decide: `sidecar.inbound.decide` (no I/O; per-connection facts computed once);
- forward and relay: `sidecar.inbound.forward.Forwarder` (app pool, shared body pump,
  shared response-head relay rule);
- report: `sidecar.inbound.report` (one record per request, also when it is cut).

Keep-alive and pipelined requests are each decided on their own. A head we refuse gets the
reader's status and ``connection: close``; the app sees nothing of it and no policy is
asked. From ``retire_margin_seconds`` before the connection's bound (or on drain) every
response says ``connection: close``.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, final

from meshgate.http import EndOfMessage, HttpError, RequestHead, RequestReader
from meshgate.http.replies import reply
from meshgate.transport.socket_stream import TimedStream
from sidecar.inbound.client import ClientSide, ClientTimeoutError
from sidecar.inbound.decide import Decided, Normalized, PeerFacts, decide, normalize
from sidecar.inbound.forward import Forwarder
from sidecar.inbound.outcome import Live, Outcome, body_free
from sidecar.inbound.report import finish_span, report
from sidecar.transport.client_gone import ClientGoneError
from sidecar.transport.mesh_tls import MeshConnection

if TYPE_CHECKING:
    from sidecar.inbound.http import HttpInbound

__all__ = ["Session"]


@final
class Session:
    """One client connection: its client side, its verified peer and the request loop."""

    __slots__ = ("client", "facts", "forwarder", "handle", "inbound", "retire_at", "rt", "service")

    def __init__(
        self,
        inbound: HttpInbound,
        conn: MeshConnection,
        source: str,
        transport: TimedStream,
        handle: int | None = None,
    ) -> None:
        self.inbound = inbound
        self.rt = inbound.runtime
        self.service = inbound.config.service
        self.facts = PeerFacts(conn, source)
        self.client = ClientSide(
            conn.stream,
            transport,
            RequestReader(inbound.limits),
            inbound.runtime.timeouts,
            idle_waits=inbound._idle_waits,
            draining=lambda: inbound.draining,
        )
        self.forwarder = Forwarder(inbound, self.client, self._retiring)
        self.handle = handle  # the tracker's: why the connection was cut, when it is
        tracker = inbound.runtime.tracker
        hard_end = tracker.hard_end(handle) if handle is not None else None
        # Both SVIDs valid, whatever the mode: a pool only sends where both are (see pool).
        end = min(hard_end, conn.expires_at) if hard_end is not None else conn.expires_at
        self.retire_at = tracker.lifetime.retire_at(end)

    def _retiring(self) -> bool:
        """Near the connection's end: answer ``connection: close`` from now on."""
        return self.inbound.draining or self.rt.now() >= self.retire_at

    def _started(self) -> tuple[float, datetime]:
        """The current request's start, monotonic and wall: its head's first byte."""
        started = self.client.head_started
        return started, self.rt.now() - timedelta(seconds=time.monotonic() - started)

    def _cut_cause(self) -> str:
        tracker = self.rt.tracker
        return (tracker.ended_by(self.handle) if self.handle is not None else None) or "cancelled"

    async def run(self) -> bool:
        """Serve requests until the client or a refusal ends the connection; True when it
        may be closed gracefully, False when it must be aborted."""
        client = self.client
        while True:
            try:
                head = await client.next_head()
            except HttpError as exc:
                await self._refuse_unparsed(exc, *self._started())
                return True
            except ClientTimeoutError as exc:
                if exc.phase == "head":
                    await self._refuse_unparsed(
                        HttpError(408, "request head not complete in time"), *self._started()
                    )
                return True
            if head is None:
                return True
            started, wall = self._started()
            if body_free(head.framing):  # its EndOfMessage is due at once; take it now
                end = client.reader.next_event()
                assert isinstance(end, EndOfMessage), end
            outcome = await self._serve_request(head, started, wall)
            if outcome.abort_client:
                return False
            if not outcome.keep_client:
                return True

    async def _refuse_unparsed(
        self, exc: HttpError, started: float, wall: datetime, head: RequestHead | None = None
    ) -> None:
        """A head we could not accept: answer with its status and close; the app sees
        nothing and no policy is asked."""
        request_id = self.inbound.new_request_id()
        with contextlib.suppress(ClientGoneError):
            await self.client.send(reply(exc.status_hint, exc.reason, request_id, close=True))
        report(
            self.rt.observer,
            self.service,
            self.facts,
            started,
            wall,
            head,
            None,
            Outcome(status=exc.status_hint, reason=f"bad_request: {exc.reason}"),
            request_id=request_id,
        )

    async def _serve_request(self, head: RequestHead, started: float, wall: datetime) -> Outcome:
        snapshot = self.inbound.policies.current
        try:
            request = normalize(
                head, self.facts, self.inbound, snapshot.header_names if snapshot else ()
            )
        except HttpError as exc:
            await self._refuse_unparsed(exc, started, wall, head)
            return Outcome(keep_client=False)
        decided = decide(head, request, self.facts, self.inbound)
        live = Live()
        try:
            decision = decided.decision
            outcome = await self._answer(
                head, request, decision.forward, str(decision.reason), live
            )
        except BaseException:
            # Cut after the decision (revoked, expired, drain timeout): still one record.
            outcome = live.cut(self._cut_cause())
            self._report_decided(started, wall, head, request, outcome, decided)
            raise
        self._report_decided(started, wall, head, request, outcome, decided)
        return outcome

    def _report_decided(
        self,
        started: float,
        wall: datetime,
        head: RequestHead,
        request: Normalized,
        outcome: Outcome,
        decided: Decided,
    ) -> None:
        forwarded = request.forwarded
        result, policies = decided.decision.result, decided.decision.determining_policy_ids
        report(
            self.rt.observer,
            self.service,
            self.facts,
            started,
            wall,
            head,
            request.target,
            outcome,
            request_id=forwarded.request_id,
            decision=result,
            policies=policies,
            extra=decided.extra,
            traceparent=forwarded.traceparent,
        )
        finish_span(request.span, self.facts, request.target, outcome, result, policies)

    async def _answer(
        self, head: RequestHead, request: Normalized, allowed: bool, reason: str, live: Live
    ) -> Outcome:
        """403, or the app's response; `live` tracks how far it got."""
        if allowed:
            return await self.forwarder.forward(head, request.target, request.forwarded, live)
        keep = head.keep_alive and body_free(head.framing) and not self._retiring()
        data = reply(
            403,
            "denied by policy",
            request.forwarded.request_id,
            close=not keep,
            head_only=head.method == "HEAD",
            version=head.version,
        )
        outcome = Outcome(status=403, reason=reason, keep_client=keep)
        try:
            await self.client.send(data)
        except ClientGoneError:
            outcome.abort_client = True
        return outcome
