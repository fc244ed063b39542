"""Inbound (http mode): terminate mTLS, then decide every request with Cedar before the app.

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

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, final

import trio
from cryptography.hazmat.primitives.serialization import Encoding

from meshgate.errors import StaleConnectionError, TransportError
from meshgate.http import (
    CONNECTION_CLOSED,
    LAST_CHUNK,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    Framing,
    HttpError,
    HttpLimits,
    InterimResponse,
    NormalizedTarget,
    PeerCertificate,
    RequestHead,
    RequestReader,
    ResponseHead,
    encode_chunk,
    forward_request_headers,
    normalize_target,
    serialize_request_head,
)
from meshgate.http.body_pace import BodyPace
from meshgate.http.forwarding import ForwardedRequest, new_uuid, xfcc_value
from meshgate.http.inbound_rules import InboundRules
from meshgate.http.relay import relay_interim, relay_response_head
from meshgate.http.replies import reply
from meshgate.transport.socket_stream import TimedStream, lean, peer_address
from sidecar.admission import admitted, handshake_refused
from sidecar.authz.cedar import source_ip
from sidecar.config import InboundConfig
from sidecar.inbound.app_pool import AppConnection, AppConnector, AppPool
from sidecar.observe.access import AccessRecord
from sidecar.observe.logs import event
from sidecar.observe.tracing import Span
from sidecar.policy import AccessRequest, Decision, DecisionReason, PolicyStore
from sidecar.runtime import Runtime
from sidecar.transport.mesh_tls import MeshConnection, MeshTlsError, accept_mesh
from sidecar.transport.relay import abort

__all__ = ["HttpInbound"]

log = logging.getLogger("sidecar.inbound.http")
_READ: Final = 64 * 1024


class _ClientGoneError(TransportError):
    """The client reset or truncated the connection: nothing more can be sent to it."""


class _ClientTimeoutError(TransportError):
    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase  # "idle" (between requests), "head", "body" or "slow_body"


def _body_free(framing: Framing) -> bool:
    return framing.kind is BodyKind.NONE or (
        framing.kind is BodyKind.LENGTH and framing.length == 0
    )


@final
@dataclass(slots=True)
class _Outcome:
    """What happened to one request, for the access record and the connection loop."""

    status: int | None = None
    reason: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    keep_client: bool = False
    abort_client: bool = False


@final
@dataclass(slots=True)
class _Pump:
    """The request body's way to the app (a child task); never raises, records instead."""

    done: bool = False
    bytes_in: int = 0
    client_error: HttpError | None = None
    client_gone: bool = False
    app_send_failed: bool = False


@final
@dataclass(slots=True)
class _Response:
    """The response's way back to the client; never raises, records instead."""

    started: bool = False  # the head went to the client: no status of ours can follow
    complete: bool = False
    received: bool = False  # the app sent at least one byte
    app_keep_alive: bool = False
    keep_client: bool = False
    status: int | None = None
    error_status: int | None = None
    error: str | None = None
    client_gone: bool = False
    bytes_out: int = 0

    def fail(self, status: int, error: str) -> None:
        self.error_status, self.error = status, error


@final
@dataclass(slots=True)
class _Live:
    """How far a decided request got, for its record if its connection is cut."""

    pump: _Pump | None = None
    response: _Response | None = None

    def cut(self, cause: str) -> _Outcome:
        """The outcome of a request cut by `cause` (revoked, svid_expired, drain_timeout…):
        the status that went out, if any, and ``response_incomplete`` after a head."""
        response, pump = self.response, self.pump
        outcome = _Outcome(abort_client=True, reason=cause)
        if pump is not None:
            outcome.bytes_in = pump.bytes_in
        if response is not None:
            outcome.bytes_out = response.bytes_out
            if response.started:
                outcome.status = response.status
                outcome.reason = f"response_incomplete: {cause}"
        return outcome


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
        session = _Session(self, conn, source, transport, handle)
        clean = False
        try:
            with bound:
                clean = await session.run()
        except _ClientGoneError:
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


@final
class _Session:
    """One client connection: its reader, its verified peer and the request loop."""

    def __init__(
        self,
        inbound: HttpInbound,
        conn: MeshConnection,
        source: str,
        transport: TimedStream,
        handle: int | None = None,
    ) -> None:
        self.inbound = inbound
        self.transport = transport  # under the TLS stream: its deadlines bound our reads
        self.rt = inbound.runtime
        self.timeouts = inbound.runtime.timeouts
        self.conn = conn
        self.stream = conn.stream
        self.source = source
        self.source_ip = source_ip(source)
        self.tls_version = conn.stream.version() or ""
        self.reader = RequestReader(inbound.limits)
        self.peer = PeerCertificate(conn.peer_id, conn.peer.leaf.public_bytes(Encoding.DER))
        self.our_id = conn.credentials.spiffe_id
        self.xfcc = xfcc_value(self.our_id, self.peer)  # the same for every request
        self.peer_id_text = str(conn.peer_id)
        self.handle = handle  # the tracker's: why the connection was cut, when it is
        tracker = inbound.runtime.tracker
        hard_end = tracker.hard_end(handle) if handle is not None else None
        # Both SVIDs valid, whatever the mode: a pool only sends where both are (see pool).
        end = min(hard_end, conn.expires_at) if hard_end is not None else conn.expires_at
        self.retire_at = tracker.lifetime.retire_at(end)

    def _retiring(self) -> bool:
        """Near the connection's end: answer ``connection: close`` from now on."""
        return self.inbound.draining or self.rt.now() >= self.retire_at

    def _cut_cause(self) -> str:
        tracker = self.rt.tracker
        return (tracker.ended_by(self.handle) if self.handle is not None else None) or "cancelled"

    # -- the request loop ------------------------------------------------------------

    async def run(self) -> bool:
        """Serve requests until the client or a refusal ends the connection; True when it
        may be closed gracefully, False when it must be aborted."""
        while True:
            started, wall = time.monotonic(), self.rt.now()
            try:
                head = await self._next_head()
            except HttpError as exc:
                await self._refuse_unparsed(exc, started, wall)
                return True
            except _ClientTimeoutError as exc:
                if exc.phase == "head":
                    await self._refuse_unparsed(
                        HttpError(408, "request head not complete in time"), started, wall
                    )
                return True
            if head is None:
                return True
            if _body_free(head.framing):  # its EndOfMessage is due at once; take it now
                end = self.reader.next_event()
                assert isinstance(end, EndOfMessage), end
            outcome = await self._serve_request(head, started, wall)
            if outcome.abort_client:
                return False
            if not outcome.keep_client:
                return True

    async def _next_head(self) -> RequestHead | None:
        idle_deadline = trio.current_time() + self.timeouts.keepalive_idle_timeout_seconds
        head_deadline: float | None = None
        while True:
            ev = self.reader.next_event()
            if isinstance(ev, RequestHead):
                return ev
            if ev is CONNECTION_CLOSED:
                return None
            if ev is not NEED_DATA:  # bodies are always consumed before the next head
                raise AssertionError(f"unexpected {ev!r} between requests")
            if head_deadline is None and self.reader.buffered_bytes:
                head_deadline = trio.current_time() + self.timeouts.header_timeout_seconds
            if head_deadline is None:
                if self.inbound.draining:
                    return None
                # `drain` interrupts this wait: it ends like an idle timeout, quietly.
                waits = self.inbound._idle_waits
                waits.add(self.transport)
                try:
                    await self._read_client(idle_deadline, "idle")
                finally:
                    waits.discard(self.transport)
            else:
                await self._read_client(head_deadline, "head")

    async def _read_client(self, deadline: float, phase: str) -> None:
        self.transport.receive_deadline = deadline
        try:
            data = await self.stream.receive_some(_READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGoneError from exc
        except trio.TooSlowError:
            raise _ClientTimeoutError(phase) from None
        if data:
            self.reader.feed(data)
        else:
            self.reader.feed_eof()

    async def _send_client(self, data: bytes) -> None:
        self.transport.send_deadline = trio.current_time() + self.timeouts.body_idle_timeout_seconds
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGoneError from exc
        except trio.TooSlowError:
            raise _ClientGoneError("client did not read the response in time") from None

    async def _refuse_unparsed(
        self, exc: HttpError, started: float, wall: datetime, head: RequestHead | None = None
    ) -> None:
        """A head we could not accept: answer with its status and close; the app sees
        nothing and no policy is asked."""
        request_id = self.inbound.new_request_id()
        with contextlib.suppress(_ClientGoneError):
            await self._send_client(reply(exc.status_hint, exc.reason, request_id, close=True))
        self._report(
            started,
            wall,
            head,
            None,
            _Outcome(status=exc.status_hint, reason=f"bad_request: {exc.reason}"),
            request_id=request_id,
        )

    # -- one request -----------------------------------------------------------------

    async def _serve_request(self, head: RequestHead, started: float, wall: datetime) -> _Outcome:
        inbound = self.inbound
        snapshot = inbound.policies.current
        try:
            target = normalize_target(head.target)
            host = inbound.rules.checked_host(head, snapshot.header_names if snapshot else ())
        except HttpError as exc:
            await self._refuse_unparsed(exc, started, wall, head)
            return _Outcome(keep_client=False)
        forwarded = forward_request_headers(
            head.headers,
            our_id=self.our_id,
            peer=self.peer,
            new_request_id=inbound.new_request_id,
            xfcc=self.xfcc,
        )
        span = self._start_span(head.method, forwarded)
        forwarded = forwarded if span is None else span.forwarded  # our span: the app's parent
        app_headers = inbound.rules.app_headers(
            forwarded.headers, host=host, source_ip=self.source_ip
        )
        forwarded = ForwardedRequest(app_headers, forwarded.request_id, forwarded.traceparent)
        request_id = forwarded.request_id
        verdict = inbound.policies.decide(
            AccessRequest(
                principal=self.conn.peer_id,
                action=head.method,
                service=inbound.config.service,
                source_address=self.source_ip,
                now=self.rt.now(),
                path=inbound.rules.policy_path(target.path),
                query=target.query or "",
                host=host,
                headers=app_headers,  # what the app will see: our XFCC and X-Forwarded-*
                tls_version=self.tls_version,
            ),
            audit=inbound.audit,
        )
        result = verdict.result
        policies = verdict.determining_policy_ids
        self.rt.observer.decision(result, policies)
        extra = {"policy_version": verdict.version, "decision_reason": verdict.detail}
        if verdict.reason is DecisionReason.ENGINE_ERROR:
            self.rt.observer.policy_engine_error()
        if verdict.errored_policy_ids:
            extra["errored_policies"] = ",".join(verdict.errored_policy_ids)
        live = _Live()
        try:
            outcome = await self._answer(head, target, forwarded, verdict, live)
        except BaseException:
            # Cut after the decision (revoked, expired, drain timeout): still one record.
            cut = live.cut(self._cut_cause())
            self._report(
                started,
                wall,
                head,
                target,
                cut,
                request_id=request_id,
                decision=result,
                policies=policies,
                extra=extra,
                traceparent=forwarded.traceparent,
            )
            self._finish_span(span, target, cut, result, policies)
            raise
        self._report(
            started,
            wall,
            head,
            target,
            outcome,
            request_id=request_id,
            decision=result,
            policies=policies,
            extra=extra,
            traceparent=forwarded.traceparent,
        )
        self._finish_span(span, target, outcome, result, policies)
        return outcome

    async def _answer(
        self,
        head: RequestHead,
        target: NormalizedTarget,
        forwarded: ForwardedRequest,
        verdict: Decision,
        live: _Live,
    ) -> _Outcome:
        """403, or the app's response; `live` tracks how far it got."""
        request_id = forwarded.request_id
        if not verdict.forward:
            keep = head.keep_alive and _body_free(head.framing) and not self._retiring()
            data = reply(
                403,
                "denied by policy",
                request_id,
                close=not keep,
                head_only=head.method == "HEAD",
                version=head.version,
            )
            outcome = _Outcome(status=403, reason=str(verdict.reason), keep_client=keep)
            try:
                await self._send_client(data)
            except _ClientGoneError:
                outcome.abort_client = True
            return outcome
        return await self._forward(head, target, forwarded, live)

    def _start_span(self, method: str, forwarded: ForwardedRequest) -> Span | None:
        """The server span of one request when ``[tracing]`` is on (no work when off)."""
        tracer = self.rt.tracer
        service = self.inbound.config.service
        return None if tracer is None else tracer.start("inbound", method, service, forwarded)

    def _finish_span(
        self,
        span: Span | None,
        target: NormalizedTarget,
        outcome: _Outcome,
        decision: str,
        policies: tuple[str, ...],
    ) -> None:
        if span is not None:
            span.finish(
                path=target.path,
                status=outcome.status,
                peer_id=self.peer_id_text,
                decision=decision,
                policies=policies,
                reason=outcome.reason,
            )

    def _report(
        self,
        started: float,
        wall: datetime,
        head: RequestHead | None,
        target: NormalizedTarget | None,
        outcome: _Outcome,
        *,
        request_id: str,
        decision: str = "none",
        policies: tuple[str, ...] = (),
        extra: dict[str, str] | None = None,
        traceparent: str | None = None,
    ) -> None:
        observer = self.rt.observer
        duration = time.monotonic() - started
        method = head.method if head else None
        if not observer.access_logged():  # metrics only: no record to build
            observer.count_request(
                "inbound",
                self.peer_id_text,
                self.inbound.config.service,
                method,
                outcome.status,
                decision,
                duration,
                outcome.bytes_in,
                outcome.bytes_out,
                policies,
            )
            observer.incomplete("inbound", outcome.reason)
            return
        observer.request(
            AccessRecord(
                time=wall,
                direction="inbound",
                protocol="http",
                peer_id=self.peer_id_text,
                source=self.source,
                destination=self.inbound.config.service,
                method=method,
                path=target.path if target else None,
                status=outcome.status,
                decision=decision,
                policies=policies,
                reason=outcome.reason,
                bytes_in=outcome.bytes_in,
                bytes_out=outcome.bytes_out,
                duration_seconds=duration,
                request_id=request_id,
                traceparent=traceparent,
                extra=extra or {},
            )
        )

    # -- forwarding ------------------------------------------------------------------

    async def _forward(
        self,
        head: RequestHead,
        target: NormalizedTarget,
        forwarded: ForwardedRequest,
        live: _Live,
    ) -> _Outcome:
        data = serialize_request_head(
            head.method, target.target, forwarded.headers, head.framing, head.version
        )
        for attempt in range(2):
            app = await self._acquire(fresh=attempt > 0)
            if isinstance(app, _Outcome):
                return await self._app_refusal(app, head, forwarded.request_id)
            try:
                return await self._exchange(app, head, data, forwarded.request_id, live)
            except StaleConnectionError:
                continue
        return await self._app_refusal(
            _Outcome(status=502, reason="app_error: app closed the connection"),
            head,
            forwarded.request_id,
        )

    async def _acquire(self, *, fresh: bool) -> AppConnection | _Outcome:
        if not fresh and (idle := self.inbound.pool.take_idle()) is not None:
            return idle  # no connect: no timeout scope either
        timeout = self.timeouts.connect_timeout_seconds
        with trio.move_on_after(timeout):
            try:
                return await self.inbound.pool.acquire(fresh=fresh)
            except OSError as exc:
                event(
                    log,
                    "app unreachable",
                    level=logging.ERROR,
                    app=str(self.inbound.config.app),
                    error=str(exc),
                )
                return _Outcome(status=502, reason="app_unreachable")
        return _Outcome(status=504, reason="app_connect_timeout")

    async def _app_refusal(self, outcome: _Outcome, head: RequestHead, request_id: str) -> _Outcome:
        """Answer for an app we could not reach; the request body was never read, so the
        connection closes unless the request had none."""
        assert outcome.status is not None
        keep = head.keep_alive and _body_free(head.framing)
        message = {
            "app_unreachable": "the local app refused the connection",
            "app_connect_timeout": "the local app did not accept a connection in time",
        }.get(outcome.reason or "", "the local app closed the connection")
        return await self._answer_error(outcome, outcome.status, message, head, request_id, keep)

    async def _answer_error(
        self,
        outcome: _Outcome,
        status: int,
        message: str,
        head: RequestHead,
        request_id: str,
        keep: bool,
    ) -> _Outcome:
        """Send the client our own error reply for `head`; `outcome` records whether the
        connection stays open (`keep`) or the client is gone."""
        try:
            await self._send_client(
                reply(
                    status,
                    message,
                    request_id,
                    close=not keep,
                    head_only=head.method == "HEAD",
                    version=head.version,
                )
            )
            outcome.keep_client = keep
        except _ClientGoneError:
            outcome.abort_client = True
        return outcome

    async def _exchange(
        self, app: AppConnection, head: RequestHead, data: bytes, request_id: str, live: _Live
    ) -> _Outcome:
        """Send one request on `app`, stream the body and the response; release or discard
        `app` afterwards. Raises `StaleConnectionError` only before anything was read from the
        client's body and before any response byte."""
        pool = self.inbound.pool
        body_free = _body_free(head.framing)
        pump, response = _Pump(done=body_free), _Response()
        live.pump, live.response = pump, response
        reuse = False
        try:
            app.reader.expect(head.method)
            try:
                await app.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if app.reused and body_free:
                    raise StaleConnectionError from exc
                response.fail(502, "the local app closed the connection")
            else:
                app.stream.receive_deadline = (
                    trio.current_time() + self.timeouts.response_timeout_seconds
                )
                if body_free:  # the common case: no upload task, no nursery
                    await self._relay_response(app, head, pump, response)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(
                            self._pump_body, app, head.framing, pump, response, nursery
                        )
                        await self._relay_response(app, head, pump, response)
                        nursery.cancel_scope.cancel()  # an early answer ends the upload
            outcome = _Outcome(
                status=response.status,
                bytes_in=pump.bytes_in,
                bytes_out=response.bytes_out,
            )
            if pump.client_gone or response.client_gone:
                outcome.abort_client = True
                outcome.reason = "client_gone"
                return outcome
            if pump.client_error is not None:
                return await self._client_body_error(pump.client_error, response, outcome, head)
            if response.error is not None:
                assert response.error_status is not None
                if not response.received and app.reused and body_free:
                    raise StaleConnectionError
                outcome.reason = (
                    "app_timeout" if response.error_status == 504 else "app_error"
                ) + f": {response.error}"
                if response.started:
                    outcome.abort_client = True  # the response is cut short: say so by RST
                    outcome.reason = f"response_incomplete: {outcome.reason}"
                    return outcome
                outcome.status = response.error_status
                keep = head.keep_alive and pump.done
                return await self._answer_error(
                    outcome, response.error_status, response.error, head, request_id, keep
                )
            outcome.keep_client = response.keep_client and pump.done
            reuse = (
                response.complete
                and response.app_keep_alive
                and pump.done
                and not pump.app_send_failed
            )
            return outcome
        finally:
            if not (reuse and pool.keep(app)):
                with trio.CancelScope(shield=True):
                    await pool.discard(app)

    async def _client_body_error(
        self, error: HttpError, response: _Response, outcome: _Outcome, head: RequestHead
    ) -> _Outcome:
        outcome.reason = f"bad_request: {error.reason}"
        if response.started:
            outcome.abort_client = True
            return outcome
        outcome.status = error.status_hint
        try:
            await self._send_client(
                reply(error.status_hint, error.reason, self.inbound.new_request_id(), close=True)
            )
        except _ClientGoneError:
            outcome.abort_client = True
        return outcome

    async def _pump_body(
        self,
        app: AppConnection,
        framing: Framing,
        pump: _Pump,
        response: _Response,
        nursery: trio.Nursery,
    ) -> None:
        """Client body → app, re-framed by us. A client fault ends the whole exchange.
        Until the response starts, every byte sent restarts the app's response timeout."""
        chunked = framing.kind is BodyKind.CHUNKED
        idle = self.timeouts.body_idle_timeout_seconds
        answer = self.timeouts.response_timeout_seconds
        pace, began = self.inbound.body_pace, trio.current_time()
        try:
            while True:
                ev = self.reader.next_event()
                if ev is NEED_DATA:
                    # The nearer of the idle and the pace deadline; the phase says which.
                    pause_ends = trio.current_time() + idle
                    too_slow = pace.deadline(began, pump.bytes_in)
                    if pause_ends <= too_slow:
                        await self._read_client(pause_ends, "body")
                    else:
                        await self._read_client(too_slow, "slow_body")
                elif isinstance(ev, Data):
                    pump.bytes_in += len(ev.data)
                    await app.stream.send_all(encode_chunk(ev.data) if chunked else ev.data)
                    if not response.started:
                        app.stream.extend_receive_deadline(trio.current_time() + answer)
                elif isinstance(ev, EndOfMessage):
                    if chunked:
                        await app.stream.send_all(LAST_CHUNK)
                    pump.done = True
                    if not response.started:
                        app.stream.extend_receive_deadline(trio.current_time() + answer)
                    return
                else:
                    raise AssertionError(f"unexpected {ev!r} inside a request body")
        except HttpError as exc:
            pump.client_error = exc
            nursery.cancel_scope.cancel()
        except _ClientTimeoutError as exc:
            slow = exc.phase == "slow_body"
            self.rt.observer.body_timeout("inbound", "slow" if slow else "idle")
            pump.client_error = HttpError(
                408, "request body too slow" if slow else "request body idle for too long"
            )
            nursery.cancel_scope.cancel()
        except _ClientGoneError:
            pump.client_gone = True
            nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pump.app_send_failed = True  # the app may still answer (e.g. 413): keep reading

    async def _read_app(self, app: AppConnection, response: _Response) -> bool:
        try:
            data = await app.stream.receive_some(_READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            response.fail(502, "the local app reset the connection")
            return False
        if data:
            response.received = True
            app.reader.feed(bytes(data))
        else:
            app.reader.feed_eof()
        return True

    async def _relay_response(
        self,
        app: AppConnection,
        head: RequestHead,
        pump: _Pump,
        response: _Response,
    ) -> None:
        """App response → client, re-framed by us; records failures in `response`."""
        try:
            resp = await self._response_head(app, head, response)
            if resp is None:
                return
            await self._stream_response(app, head, resp, pump, response)
        except _ClientGoneError:
            response.client_gone = True

    async def _response_head(
        self, app: AppConnection, head: RequestHead, response: _Response
    ) -> ResponseHead | None:
        """The app's final response head by `app.stream.receive_deadline`, else 504."""
        try:
            while True:
                try:
                    ev = app.reader.next_event()
                except HttpError as exc:
                    response.fail(502, f"the local app sent an invalid response ({exc.reason})")
                    return None
                if ev is NEED_DATA:
                    if not await self._read_app(app, response):
                        return None
                elif ev is CONNECTION_CLOSED:
                    response.fail(502, "the local app closed the connection without a response")
                    return None
                elif isinstance(ev, InterimResponse):
                    interim = relay_interim(ev, head.version)
                    if interim is not None:
                        await self._send_client(interim)
                elif isinstance(ev, ResponseHead):
                    return ev
                else:
                    raise AssertionError(f"unexpected {ev!r} before a response head")
        except trio.TooSlowError:
            response.fail(
                504,
                f"the local app did not answer within {self.timeouts.response_timeout_seconds:g} s",
            )
            return None

    async def _stream_response(
        self,
        app: AppConnection,
        head: RequestHead,
        resp: ResponseHead,
        pump: _Pump,
        response: _Response,
    ) -> None:
        response.status = resp.status
        # Decided now, since it goes into the head: an app that answers before the upload
        # ended leaves the rest of the body unread, so the connection cannot continue.
        relayed = relay_response_head(
            resp,
            method=head.method,
            client_version=head.version,
            keep_client=head.keep_alive and pump.done and not self._retiring(),
        )
        response.keep_client = relayed.keep_client
        # The head goes out with whatever of the body is already here: one write, one TLS
        # record. Pending pieces are flushed before any wait and before a failure is recorded.
        pieces = [relayed.wire]
        response.started = True
        chunked = relayed.framing.kind is BodyKind.CHUNKED
        idle = self.timeouts.body_idle_timeout_seconds
        while True:
            try:
                ev = app.reader.next_event()
            except HttpError as exc:
                await self._send_pieces(pieces)
                response.fail(502, f"the local app sent an invalid response body ({exc.reason})")
                return
            if ev is NEED_DATA:
                if pieces:
                    await self._send_pieces(pieces)
                    pieces = []
                app.stream.receive_deadline = trio.current_time() + idle
                try:
                    if not await self._read_app(app, response):
                        return
                except trio.TooSlowError:
                    response.fail(504, f"the local app's response body stalled for {idle:g} s")
                    return
            elif isinstance(ev, Data):
                response.bytes_out += len(ev.data)
                pieces.append(encode_chunk(ev.data) if chunked else ev.data)
            elif isinstance(ev, EndOfMessage):
                if chunked:
                    pieces.append(LAST_CHUNK)
                await self._send_pieces(pieces)
                response.complete = True
                response.app_keep_alive = resp.keep_alive
                return
            else:
                raise AssertionError(f"unexpected {ev!r} inside a response body")

    async def _send_pieces(self, pieces: list[bytes]) -> None:
        if pieces:
            await self._send_client(pieces[0] if len(pieces) == 1 else b"".join(pieces))
