"""Outbound (http mode): HTTP/1.1 from the local app → pooled mTLS to the service's sidecars.

Pipeline per client connection: admit (cap) → for each request: strict `RequestReader`
(same rejection rules as inbound) → normalize the target once → rebuild the head with the
forwarding header policy (hop-by-hop and identity headers dropped, `x-request-id` added
when absent, a valid `traceparent` kept, or with ``[tracing]`` replaced by one naming our
client span) → a pooled mTLS connection (`sidecar.outbound.mesh_pool`,
secure naming checked at its handshake) → stream the body up and the response back, by
the same two pumps as the inbound sidecar (`sidecar.transport.body_pump`,
`sidecar.transport.response_pump`: the response head within ``response_timeout_seconds``,
then body pauses and writes to the client within ``body_idle_timeout_seconds`` each).

Every request read gets exactly one access record and one count; a response cut after
its head went out keeps the status sent and the reason ``response_incomplete: <cause>``.

Errors the client sees, with a short text body and the request id:
- 502: the destination refused or closed the connection, answered something malformed,
  or presented an identity other than the configured SPIFFE IDs (nothing was sent then);
- 503: no healthy endpoint, or this sidecar has no usable SVID (fails closed);
- 504: connect, handshake or the final response head timed out (1xx do not restart it);
- 408: the request body paused longer than ``body_idle_timeout_seconds`` or fell behind the
  pace of ``body_timeout_seconds`` + ``body_min_rate_bytes_per_second`` (`BodyPace`).
A request that fails before any response byte is retried once when it is idempotent (GET,
HEAD, OPTIONS, PUT, DELETE) and was complete in memory, so nothing of its body was lost:
on a fresh connection after a reused one (a stale keep-alive), else on another endpoint
(the peer died; the failure counts towards its passive-health ejection).

Why one module: `HttpOutbound` is one request pipeline whose stages share one
client connection, one pooled upstream and one access record per request (read, forward,
stream the body, relay, record); the pure parts are already in `meshgate/http/`, the pool
in `mesh_pool.py`, and the body and response pumps in `sidecar/transport/`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final, final

import trio

from meshgate.errors import TransportError
from meshgate.http import (
    CONNECTION_CLOSED,
    LAST_CHUNK,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    Event,
    HttpError,
    HttpLimits,
    RequestHead,
    RequestReader,
    encode_chunk,
    forward_request_headers,
    normalize_target,
    serialize_request_head,
)
from meshgate.http.body_pace import BodyPace
from meshgate.http.forwarding import ForwardedRequest, new_uuid
from meshgate.http.replies import reply
from meshgate.transport.socket_stream import LeanSocketStream, TimedStream, lean, peer_address
from sidecar.admission import admitted
from sidecar.config import OutboundConfig
from sidecar.observe.access import AccessRecord
from sidecar.observe.logs import event
from sidecar.observe.tracing import Span
from sidecar.outbound.mesh_pool import MeshPool, PooledConnection, PoolError
from sidecar.runtime import Runtime
from sidecar.transport.body_pump import BodyTimeoutError, pump_body
from sidecar.transport.client_gone import ClientGoneError
from sidecar.transport.relay import abort
from sidecar.transport.response_pump import Failure, relay_response

__all__ = ["IDEMPOTENT_METHODS", "HttpOutbound", "error_response"]

log = logging.getLogger("sidecar.outbound.http")

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_READ: Final = 64 * 1024
_REPLAYABLE_BYTES: Final = 64 * 1024  # a complete request up to this size may be resent


def error_response(status: int, message: str, request_id: str, *, head_only: bool) -> bytes:
    """A complete error response that closes the connection: ``<status> <phrase>: ...``."""
    return reply(status, message, request_id, close=True, head_only=head_only)


class _UpstreamError(TransportError):
    """The exchange failed on the upstream side; `before_response` tells if a retry is safe."""

    def __init__(self, status: int, reason: str, detail: str, *, before_response: bool) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.before_response = before_response


class _CutError(TransportError):
    """The response was cut after its head went out (the upstream broke or stalled, or the
    pool cut the connection): nothing more can be told to the client. Its text is the cause
    for the access record's ``response_incomplete: <cause>``."""


class _SlowBodyError(TransportError):
    """The request body paused too long (`idle`) or came in under the minimum rate (`slow`):
    the client gets 408 and the upstream connection is dropped."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@final
class _Upload:
    """A request body streamed up beside the response (`Expect: 100-continue`)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


def _expects_continue(head: RequestHead) -> bool:
    return any(n == "expect" and v.lower() == "100-continue" for n, v in head.headers)


@final
class _Exchange:
    """What one request did, for its access record."""

    __slots__ = ("bytes_in", "bytes_out", "peer_id", "reason", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.reason: str | None = None
        self.peer_id: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0


async def _next_event(stream: TimedStream, reader: RequestReader, timeout_seconds: float) -> Event:
    """The next request event, reading from the client as needed (HttpError propagates)."""
    while True:
        ev = reader.next_event()
        if ev is not NEED_DATA:
            return ev
        stream.receive_deadline = trio.current_time() + timeout_seconds
        try:
            data = await stream.receive_some(_READ)
        except trio.TooSlowError:
            raise ClientGoneError("client_idle") from None
        if data:
            reader.feed(bytes(data))
        else:
            reader.feed_eof()


@final
class HttpOutbound:
    """One ``[[outbound]]`` listener in http mode. `pool.run` must run alongside."""

    def __init__(
        self,
        config: OutboundConfig,
        runtime: Runtime,
        pool: MeshPool | None = None,
        *,
        limits: HttpLimits | None = None,
        new_request_id: Callable[[], str] = new_uuid,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.pool = pool or MeshPool(config, runtime)
        self.limits = limits or HttpLimits()
        self.new_request_id = new_request_id
        self.retries = 0
        t = runtime.timeouts
        self.body_pace = BodyPace(t.body_timeout_seconds, t.body_min_rate_bytes_per_second)

    async def handle(self, local: trio.abc.Stream) -> None:
        """Serve one local client connection; never raises for a peer's fault."""
        source = peer_address(local)
        timed = lean(local)
        clean = False  # a cancelled connection (revoked, expired, drained) is aborted
        service = self.config.service
        async with admitted(self.runtime, "outbound", timed, log, service=service) as slot:
            if slot is None:
                return
            clean = await self._serve(timed, source)
        clean = clean and not slot.scope.cancelled_caught
        if clean and isinstance(timed, LeanSocketStream):
            timed.close()  # the task ends here: no checkpoint, no scope (a FIN, as aclose)
            return
        with trio.CancelScope(shield=True):
            if clean:
                await trio.aclose_forcefully(timed)
            else:
                await abort(timed)

    async def _serve(self, local: TimedStream, source: str) -> bool:
        """Requests one after another until the client closes; True for a clean end."""
        timeouts = self.runtime.timeouts
        reader = RequestReader(self.limits)
        try:
            while True:
                first = await _next_event(local, reader, timeouts.keepalive_idle_timeout_seconds)
                if first is CONNECTION_CLOSED:
                    return True
                assert isinstance(first, RequestHead)
                if not await self._request(local, reader, first, source):
                    return True
        except HttpError as exc:
            request_id = self.new_request_id()
            self._record(source, None, None, exc.status_hint, "bad_request", request_id, None)
            await self._send_quietly(
                local, error_response(exc.status_hint, exc.reason, request_id, head_only=False)
            )
            return True
        except (ClientGoneError, _CutError, trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    async def _request(
        self, local: TimedStream, reader: RequestReader, head: RequestHead, source: str
    ) -> bool:
        """One request/response; True when the client connection may carry another."""
        started = time.monotonic()
        wall = self.runtime.now()
        target = normalize_target(head.target)  # HttpError → 400, before anything is sent
        forwarded = forward_request_headers(
            head.headers, our_id=None, peer=None, new_request_id=self.new_request_id
        )
        span = self._start_span(head.method, forwarded)
        forwarded = span.forwarded if span is not None else forwarded  # our span: the parent
        request_id = forwarded.request_id
        traceparent = forwarded.traceparent
        out = _Exchange()
        wire_head = serialize_request_head(
            head.method, target.target, forwarded.headers, head.framing
        )
        keep = head.keep_alive
        try:
            keep = await self._forward(local, reader, head, wire_head, out) and keep
        except _SlowBodyError as exc:
            self.runtime.observer.body_timeout("outbound", exc.kind)
            slow = exc.kind == "slow"
            out.status = 408
            out.reason = "slow_body" if slow else "body_idle"
            message = "request body too slow" if slow else "request body idle for too long"
            await self._send_quietly(
                local, error_response(408, message, request_id, head_only=head.method == "HEAD")
            )
            keep = False
        except (PoolError, _UpstreamError) as exc:
            out.status, out.reason = exc.status, exc.reason
            event(
                log,
                "upstream failed",
                level=logging.WARNING,
                service=self.config.service,
                status=exc.status,
                reason=exc.reason,
                detail=exc.detail,
                request_id=request_id,
            )
            response = error_response(
                exc.status, exc.detail, request_id, head_only=head.method == "HEAD"
            )
            await self._send_quietly(local, response)
            keep = False
        except BaseException as exc:
            # Cut (upstream broke or stalled, client gone, cancelled): never a clean status.
            cause = str(exc) if isinstance(exc, ClientGoneError | _CutError) else "cancelled"
            if out.reason is None:
                out.reason = cause if out.status is None else f"response_incomplete: {cause}"
            raise
        finally:
            self._record(
                source,
                head.method,
                target.path,
                out.status,
                out.reason,
                request_id,
                traceparent,
                out,
                wall,
                time.monotonic() - started,
            )
            if span is not None:
                span.finish(
                    path=target.path, status=out.status, peer_id=out.peer_id, reason=out.reason
                )
        return keep

    def _start_span(self, method: str, forwarded: ForwardedRequest) -> Span | None:
        """The client span of one request when ``[tracing]`` is on (no work when off)."""
        tracer = self.runtime.tracer
        return (
            None
            if tracer is None
            else tracer.start("outbound", method, self.config.service, forwarded)
        )

    async def _forward(
        self,
        local: TimedStream,
        reader: RequestReader,
        head: RequestHead,
        wire_head: bytes,
        out: _Exchange,
    ) -> bool:
        """Send the request upstream and the response back; True if the client may go on."""
        # Whatever of the body is already buffered goes out with the head, in one write.
        pieces = [wire_head]
        chunked = head.framing.kind is BodyKind.CHUNKED
        complete = False
        while True:
            ev = reader.next_event()
            if isinstance(ev, Data):
                out.bytes_in += len(ev.data)
                pieces.append(encode_chunk(ev.data) if chunked else ev.data)
            elif isinstance(ev, EndOfMessage):
                if chunked:
                    pieces.append(LAST_CHUNK)
                complete = True
                break
            else:
                break
        first = b"".join(pieces)
        replayable = (
            complete and head.method in IDEMPOTENT_METHODS and len(first) <= _REPLAYABLE_BYTES
        )
        conn = await self.pool.acquire()
        try:
            return await self._cuttable(local, reader, head, conn, first, complete, out)
        except _UpstreamError as exc:
            if exc.before_response and not conn.reused:  # a stale keep-alive is no verdict
                self.pool.report(conn.endpoint, ok=False, error=exc.reason)
            if not (exc.before_response and replayable):
                raise
            self.retries += 1
            # A stale keep-alive: a fresh connection anywhere; a fresh one that failed (the
            # peer died): another endpoint first.
            avoid = frozenset() if conn.reused else frozenset({conn.endpoint})
            event(
                log,
                "retrying on a fresh connection" if conn.reused else "retrying on another endpoint",
                service=self.config.service,
                endpoint=str(conn.endpoint),
                reason=exc.reason,
            )
        conn = await self.pool.acquire(fresh=True, avoid=avoid)
        return await self._cuttable(local, reader, head, conn, first, complete, out)

    async def _cuttable(
        self,
        local: TimedStream,
        reader: RequestReader,
        head: RequestHead,
        conn: PooledConnection,
        first: bytes,
        complete: bool,
        out: _Exchange,
    ) -> bool:
        """`_exchange` inside the scope the pool cancels when the upstream is revoked."""
        with conn.cut:
            return await self._exchange(local, reader, head, conn, first, complete, out)
        reason = conn.cut_reason or "cut"
        if out.status is None:  # nothing of a response went out: the client gets our 502
            raise _UpstreamError(
                502, reason, f"{conn.endpoint}: {reason} during the request", before_response=False
            )
        raise _CutError(reason)

    async def _exchange(
        self,
        local: TimedStream,
        reader: RequestReader,
        head: RequestHead,
        conn: PooledConnection,
        first: bytes,
        complete: bool,
        out: _Exchange,
    ) -> bool:
        """One request on `conn`; always gives `conn` back to the pool (reusable or not)."""
        reusable = False
        try:
            out.peer_id = conn.peer_id_text
            conn.reader.expect(head.method)
            # A client that sent `Expect: 100-continue` holds its body back until the 100
            # (or its own wait) comes: the body goes up while the response is relayed.
            beside = not complete and _expects_continue(head)
            try:
                await conn.stream.send_all(first)
                if not complete and not beside:
                    await self._stream_body(local, reader, head, conn, out)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _UpstreamError(
                    502,
                    "upstream_closed",
                    f"{conn.endpoint} closed the connection",
                    before_response=True,
                ) from exc
            if beside:
                keep_client, reusable = await self._respond_during_upload(
                    local, reader, head, conn, out
                )
            else:
                keep_client, reusable = await self._respond(local, head, conn, out)
            return keep_client
        finally:
            await self.pool.release(conn, reusable=reusable)

    async def _respond_during_upload(
        self,
        local: TimedStream,
        reader: RequestReader,
        head: RequestHead,
        conn: PooledConnection,
        out: _Exchange,
    ) -> tuple[bool, bool]:
        """`_respond` with the body streamed up beside it. A final answer before the body
        ended leaves the rest unread: neither connection goes on then."""
        upload = _Upload()
        failure: BaseException | None = None
        result = (False, False)

        async def send_body() -> None:
            nonlocal failure
            try:
                await self._stream_body(local, reader, head, conn, out, upload)
                upload.done = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the upstream stopped reading (it answered early): its response tells
            except (_SlowBodyError, ClientGoneError) as exc:
                failure = exc
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_body)
            try:
                result = await self._respond(local, head, conn, out, upload)
            except (_UpstreamError, ClientGoneError, _CutError) as exc:
                failure = exc
            nursery.cancel_scope.cancel()  # an early answer ends the upload
        if failure is not None:
            if isinstance(failure, _SlowBodyError) and out.status is not None:
                raise ClientGoneError(f"body_{failure.kind}")  # too late for a 408
            raise failure
        keep_client, reusable = result
        return keep_client and upload.done, reusable and upload.done

    async def _stream_body(
        self,
        local: TimedStream,
        reader: RequestReader,
        head: RequestHead,
        conn: PooledConnection,
        out: _Exchange,
        upload: _Upload | None = None,
    ) -> None:
        """The rest of the body up, by the shared pump; with `upload` (beside the response),
        each piece restarts the upstream's response wait until its head came."""
        timeouts = self.runtime.timeouts
        try:
            await pump_body(
                reader,
                local,
                local,
                conn.stream,
                out,
                chunked=head.framing.kind is BodyKind.CHUNKED,
                idle_seconds=timeouts.body_idle_timeout_seconds,
                pace=self.body_pace,
                answer_clock=conn.transport if upload is not None else None,
                answer_seconds=timeouts.response_timeout_seconds,
                answered=lambda: out.status is not None,
            )
        except BodyTimeoutError as exc:
            raise _SlowBodyError(exc.kind) from None

    async def _respond(
        self,
        local: TimedStream,
        head: RequestHead,
        conn: PooledConnection,
        out: _Exchange,
        upload: _Upload | None = None,
    ) -> tuple[bool, bool]:
        """Relay the response by the shared relay; returns (client may continue, upstream
        reusable). `upload`: the body still going up beside it (the head says close unless
        it is done). A failure before the head is an `_UpstreamError` (our 502/504, retried
        when nothing came back), after it a `_CutError`; a gone client `ClientGoneError`."""
        timeouts = self.runtime.timeouts
        relayed = await relay_response(
            conn.reader,
            conn.stream,
            conn.transport,
            local,
            local,
            out,
            method=head.method,
            client_version=head.version,
            keep_client=(
                (lambda: head.keep_alive)
                if upload is None
                else (lambda: head.keep_alive and upload.done)
            ),
            response_seconds=timeouts.response_timeout_seconds,
            idle_seconds=timeouts.body_idle_timeout_seconds,
        )
        failure = relayed.failure
        if failure is None:
            return relayed.keep_client, relayed.keep_upstream
        if failure is Failure.CLIENT_GONE:
            raise ClientGoneError("client_gone")
        if relayed.started:
            raise _CutError("upstream_stalled" if failure is Failure.STALLED else "upstream_broke")
        endpoint = conn.endpoint
        if failure is Failure.STALLED:
            wait = timeouts.response_timeout_seconds
            raise _UpstreamError(
                504,
                "response_timeout",
                f"{endpoint} sent no response within {wait:g} s",
                before_response=False,
            )
        if failure is Failure.INVALID:
            raise _UpstreamError(
                502, "bad_response", f"{endpoint}: {relayed.detail}", before_response=False
            )
        what = "reset" if failure is Failure.RESET else "closed"
        raise _UpstreamError(
            502,
            "upstream_closed",
            f"{endpoint} {what} the connection",
            before_response=not relayed.received,
        )

    async def _send_quietly(self, local: trio.abc.Stream, data: bytes) -> None:
        with trio.move_on_after(1.0):
            # TooSlowError: a send deadline the response relay left on the stream
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError
            ):
                await local.send_all(data)

    def _record(
        self,
        source: str,
        method: str | None,
        path: str | None,
        status: int | None,
        reason: str | None,
        request_id: str,
        traceparent: str | None,
        out: _Exchange | None = None,
        wall: datetime | None = None,
        duration: float = 0.0,
    ) -> None:
        observer = self.runtime.observer
        if not observer.access_logged():  # metrics only: no record to build
            observer.count_request(
                "outbound",
                out.peer_id if out else None,
                self.config.service,
                method,
                status,
                "none",
                duration,
                out.bytes_in if out else 0,
                out.bytes_out if out else 0,
            )
            observer.incomplete("outbound", reason)
            return
        observer.request(
            AccessRecord(
                time=wall or self.runtime.now(),
                direction="outbound",
                protocol="http",
                peer_id=out.peer_id if out else None,
                source=source,
                destination=self.config.service,
                method=method,
                path=path,
                status=status,
                reason=reason,
                bytes_in=out.bytes_in if out else 0,
                bytes_out=out.bytes_out if out else 0,
                duration_seconds=duration,
                request_id=request_id,
                traceparent=traceparent,
            )
        )
