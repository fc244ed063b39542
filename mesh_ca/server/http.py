"""The CA server's trio shell: TLS (the shared `TlsStream` over the shared `LeanSocketStream`,
as the sidecar's), HTTP/1.1 keep-alive (the sidecar's `RequestReader` with the CA's extra
rules, `wire`), limits, logs.

Everything the API decides is in `mesh_ca.server.core`; this module only moves bytes:
handshake, read a request head and its body under size caps and per-phase timeouts, hand
an `ApiRequest` to the core (in a worker thread when `threaded_handlers` is set and the
endpoint touches the store or signs; inline otherwise, a bootstrap's durable store step
grouped with those of concurrent requests by `GroupCommit`), write the response in one send,
observe its duration and queue one JSON access-log line (`AccessLog`). Tokens and keys are
never logged: the log holds only the method, path, status, peer and the public facts the
core chose (`ApiResponse.log`).

A connection ends gracefully (the peer closed, keep-alive idle, shutdown, a refusal) with
close_notify, so a client can tell the end from a truncation; a TLS error or a cancelled
write ends it without one.

Why one module: the connection loop, its reads, its refusals and the dispatch to the core
or the control plane share the connection's one moving deadline scope, its reader and the
server's connection counts; the decisions themselves live in the pure stages
(`core.py`, `wire.py`), so what is left here is that one loop and its helpers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Final, NoReturn, Protocol, final

import trio
from cryptography import x509

from mesh_ca.control.report_wire import REPORT_PATH
from mesh_ca.server.access_log import AccessLog
from mesh_ca.server.core import (
    INTERNAL_ERROR,
    ApiError,
    ApiRequest,
    ApiResponse,
    CaService,
    StoreStep,
    error_response,
)
from mesh_ca.server.group_commit import GroupCommit
from mesh_ca.server.identity import ServerIdentity
from mesh_ca.server.ratelimit import source_key
from mesh_ca.server.wire import (
    CaHeads,
    RequestHead,
    WireError,
    ca_limits,
    render_response,
)
from meshgate.clock import Clock
from meshgate.errors import TransportError
from meshgate.http import CONNECTION_CLOSED, Data, EndOfMessage, HttpError, RequestReader
from meshgate.http import RequestHead as HttpRequestHead
from meshgate.transport.socket_stream import LeanSocketStream
from meshgate.transport.tls_stream import TlsError, TlsStream

__all__ = ["CONTROL_PREFIX", "CaHttpServer", "ControlHandler", "ServerLimits", "endpoint_label"]

log = logging.getLogger("mesh_ca.server")
_DEADLINE_SLACK_SECONDS: Final = 1.0
# After a refusal: how long, and how much, a client still sending its body may go on before
# the close (which is then a reset). 16 MiB is the largest body the config allows.
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 16 * 1024 * 1024
_READ_SIZE: Final = 65536

_ENDPOINTS: Final = frozenset(
    (
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/bundle",
        "/v1/bundle.pem",
        "/v1/federation/bundles",
        "/v1/revocations",
        "/v1/bootstrap",
        "/v1/renew",
        "/v1/admin/tokens",
        "/v1/admin/revoke",
        "/v1/control/register",
        "/v1/control/deregister",
        "/v1/control/endpoints",
        "/v1/control/policies",
        "/v1/control/report",
    )
)
# Requests the control plane answers (`ControlHandler`), on the event loop: a long-poll
# waits there, never in a worker thread.
CONTROL_PREFIX: Final = "/v1/control/"


class ControlHandler(Protocol):
    async def handle(self, request: ApiRequest) -> ApiResponse: ...


def endpoint_label(path: str) -> str:
    """The metrics label of a path: the endpoint, or ``other`` (bounded label values)."""
    return path if path in _ENDPOINTS else "other"


@final
@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 65536
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    max_connections: int = 1024
    # One address (a client, or every client behind one NAT) may hold at most this many:
    # a single peer opening connections cannot take every slot from the others.
    max_connections_per_source: int = 256
    handshake_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 60.0
    # Run store/signing handlers in worker threads (False runs them on the event loop).
    threaded_handlers: bool = True


class _CloseConnection(TransportError):  # noqa: N818 - control flow, not an error
    """End this connection quietly (peer gone, timeout, protocol error already answered)."""


@final
class CaHttpServer:
    def __init__(
        self,
        service: CaService,
        identity: ServerIdentity,
        clock: Clock,
        limits: ServerLimits | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.service = service
        self.access_log = access_log or AccessLog()
        self.identity = identity  # replaced whole on rotation; each handshake reads it once
        self.clock = clock
        self.limits = limits or ServerLimits()
        self.connections = 0
        # Open connections by source (`source_key`: an address, or an IPv6 /64).
        self.connections_per_source: dict[str, int] = {}
        self._idle: set[trio.CancelScope] = set()  # connections waiting for a next request
        self._closing = False
        self._limiter = trio.CapacityLimiter(64)
        self._group_commit = GroupCommit(service)
        self.control: ControlHandler | None = None  # mesh_ca.control.plane.ControlPlane

    def replace_service(self, service: CaService) -> None:
        """Serve with `service` from now on (after a trust-state change); requests in
        flight finish on the one they started with."""
        self.service = service
        self._group_commit.service = service

    def close_idle(self) -> None:
        """Shutting down: close the connections waiting for their next request now, and
        every other one after the response it is working on (no drain wait for idle
        keep-alive connections)."""
        self._closing = True
        for scope in self._idle:
            scope.cancel()

    async def handle_connection(self, stream: trio.abc.Stream, source: str) -> None:
        """Serve one TCP connection until the peer closes, times out or misbehaves."""
        key = source_key(source)  # an IPv6 client counts by its /64
        held = self.connections_per_source.get(key, 0)
        if self.connections >= self.limits.max_connections:
            reason = "max_connections"
        elif held >= self.limits.max_connections_per_source:
            reason = "max_connections_per_source"
        else:
            reason = ""
        if reason:
            log.warning(
                json.dumps({"event": "connection_refused", "reason": reason, "source": source})
            )
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        self.connections_per_source[key] = held + 1
        # A socket is read and written directly (`LeanSocketStream`: no scheduler round
        # for a call the kernel completes at once); other streams (tests) as they are. No
        # quick ACKs: clients send a request in one write and the response carries the ACK
        # (an extra ACK packet a request is CPU; ServerTls never sent one either).
        transport: trio.abc.Stream = stream
        if isinstance(stream, trio.SocketStream):
            transport = LeanSocketStream.take(stream, quickack=False)
        tls = TlsStream(transport, self.identity.context, server_side=True)
        try:
            with trio.fail_after(self.limits.handshake_timeout_seconds):
                await tls.do_handshake()
            der = tls.getpeercert(binary_form=True)
            peer = x509.load_der_x509_certificate(der) if isinstance(der, bytes) else None
            await self._serve_requests(tls, source, peer)
        except (
            TlsError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            _CloseConnection,
        ):
            pass
        except ValueError as exc:  # a certificate OpenSSL accepted but cryptography cannot read
            log.warning(
                json.dumps({"event": "bad_client_cert", "source": source, "error": str(exc)})
            )
        finally:
            self.connections -= 1
            left = self.connections_per_source.pop(key) - 1
            if left:
                self.connections_per_source[key] = left
            await tls.aclose()

    async def _serve_requests(
        self, tls: TlsStream, source: str, peer: x509.Certificate | None
    ) -> None:
        # One cancel scope for the connection whose deadline moves with each phase: a new
        # `fail_after` per read cost ~5 % of the server's CPU per request.
        with trio.CancelScope() as deadline:
            await self._request_loop(tls, source, peer, deadline)

    async def _request_loop(
        self,
        tls: TlsStream,
        source: str,
        peer: x509.Certificate | None,
        deadline: trio.CancelScope,
    ) -> None:
        limits = self.limits
        # The sidecar's strict reader, one per connection: pipelined requests stay in it.
        reader = RequestReader(
            ca_limits(max_head_bytes=limits.max_header_bytes, max_headers=limits.max_headers)
        )
        heads = CaHeads()
        timeout = limits.header_timeout_seconds
        while not self._closing:
            # Phase deadlines are kept to within a second: moving a cancel scope's deadline
            # costs a heap update, and on a busy keep-alive connection it would otherwise
            # move by microseconds on every request.
            wanted = trio.current_time() + timeout
            if abs(deadline.deadline - wanted) > _DEADLINE_SLACK_SECONDS:
                deadline.deadline = wanted
            idle = not reader.buffered_bytes  # between requests: `close_idle` may end it now
            if idle:
                self._idle.add(deadline)
            try:
                head = await self._read_head(tls, reader, heads)
            except WireError as exc:
                await self._refuse(tls, ApiError(exc.status, "bad_http", str(exc)), source)
            finally:
                if idle:
                    self._idle.discard(deadline)
            if head is None:
                return
            timeout = limits.idle_timeout_seconds
            started = time.perf_counter()
            path = head.path
            if head.content_length > limits.max_body_bytes:
                error = ApiError(
                    413,
                    "body_too_large",
                    f"body of {head.content_length} bytes exceeds {limits.max_body_bytes} bytes",
                )
                await self._refuse(
                    tls, error, source, method=head.method, path=path, started=started
                )
            body = await self._read_body(tls, reader, deadline)
            request = ApiRequest(head.method, path, head.content_type, body, source, peer)
            if limits.threaded_handlers or path.startswith(CONTROL_PREFIX):
                # The handler is ours (a worker thread, or a control-plane long-poll of up
                # to 30 s): no peer to wait for.
                deadline.deadline = math.inf
                response = await self._dispatch(request)
                deadline.deadline = trio.current_time() + limits.body_timeout_seconds
            else:
                # Inline handlers wait only in the group commit, which is shielded, so the
                # phase's deadline cannot fire while they run; it then bounds the response
                # write (it was set at most a header or idle timeout ago). Each deadline
                # change costs a heap update.
                response = await self._dispatch(request)
            await tls.send_all(
                render_response(
                    response.status,
                    response.body,
                    response.content_type,
                    response.headers,
                    close=not head.keep_alive,
                )
            )
            self._log(head.method, path, response, peer, source, started)
            if not head.keep_alive:
                return

    async def _read_head(
        self, tls: TlsStream, reader: RequestReader, heads: CaHeads
    ) -> RequestHead | None:
        """The next request head; None when the peer closed cleanly between requests."""
        while True:
            # An empty reader (between keep-alive requests, the usual case) can only say
            # NEED_DATA: receive first.
            if reader.buffered_bytes:
                try:
                    event = reader.next_event()
                except HttpError as exc:
                    raise WireError.of(exc) from None
                if isinstance(event, HttpRequestHead):
                    return heads.of(event)
                if event is CONNECTION_CLOSED:
                    return None
            data = await tls.receive_some()
            if not data:
                if reader.buffered_bytes:
                    raise _CloseConnection  # a truncated request: nothing to answer
                return None
            reader.feed(data)

    async def _read_body(
        self, tls: TlsStream, reader: RequestReader, deadline: trio.CancelScope
    ) -> bytes:
        """The body of the head just read (Content-Length framed, at most max_body_bytes).
        Usually it came with the head: then it is taken in one call and no new deadline is
        set."""
        body = reader.take_buffered_body()
        if body is not None:
            return body
        parts: list[bytes] = []
        waited = False
        while True:
            event = reader.next_event()  # a Content-Length body cannot be malformed
            if isinstance(event, Data):
                parts.append(event.data)
                continue
            if isinstance(event, EndOfMessage):
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if not waited:
                deadline.deadline = trio.current_time() + self.limits.body_timeout_seconds
                waited = True
            data = await tls.receive_some()
            if not data:
                raise _CloseConnection  # a truncated body: nothing to answer
            reader.feed(data)

    async def _dispatch(self, request: ApiRequest) -> ApiResponse:
        """The core's response. An unexpected error in a handler (a bug) is logged and
        answered 500: it never takes the server, or the other connections, down."""
        try:
            return await self._call_core(request)
        except Exception as exc:  # every request gets an answer; the server stays up
            log.exception(
                json.dumps(
                    {
                        "event": "handler_failed",
                        "path": request.path,
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                    }
                )
            )
            return self.service.settle(request, error_response(INTERNAL_ERROR))

    async def _call_core(self, request: ApiRequest) -> ApiResponse:
        if (
            self.control is not None
            and request.path.startswith(CONTROL_PREFIX)
            and request.path != REPORT_PATH  # reports: CaService, inline (no store, no wait)
        ):
            return await self.control.handle(request)
        now, monotonic = self.clock.now(), trio.current_time()
        if self.limits.threaded_handlers and self.service.is_blocking(request.method, request.path):
            return await trio.to_thread.run_sync(
                self.service.handle, request, now, monotonic, limiter=self._limiter
            )
        outcome = self.service.begin(request, now, monotonic)
        if isinstance(outcome, StoreStep):
            if outcome.durable:
                outcome = await self._group_commit.run(outcome)
            else:
                # A ledger-only write commits without an fsync: grouping renewals saved no
                # CPU (measured) and held each response back for the others' signing.
                outcome = self.service.run_steps([outcome])[0]
        return self.service.settle(request, outcome)

    async def _refuse(
        self,
        tls: TlsStream,
        error: ApiError,
        source: str,
        *,
        method: str = "-",
        path: str = "-",
        started: float | None = None,
    ) -> NoReturn:
        """Answer a request we will not read further, then close the connection once the
        client stopped sending (bounded), so that it reads the answer rather than a reset."""
        response = error_response(error)
        data = render_response(
            response.status, response.body, response.content_type, response.headers, close=True
        )
        with trio.move_on_after(_LINGER_SECONDS):
            try:
                await tls.send_all(data)
            finally:
                self._log(method, path, response, None, source, started or time.perf_counter())
            await _linger(tls, _LINGER_BYTES)
        raise _CloseConnection

    def _log(
        self,
        method: str,
        path: str,
        response: ApiResponse,
        peer: x509.Certificate | None,
        source: str,
        started: float,
    ) -> None:
        duration = time.perf_counter() - started
        self.service.metrics.observe_request(endpoint_label(path), duration)
        if self.access_log.enabled:
            self.access_log.record(
                {
                    "method": method,
                    "path": path,
                    "status": response.status,
                    "source": source,
                    "client_cert": peer is not None,
                    "duration_ms": round(duration * 1000, 3),
                    **response.log,
                }
            )


async def _linger(tls: TlsStream, max_bytes: int) -> None:
    """End our direction (close_notify, then a TCP half-close), then read and drop what the
    peer still sends, undecrypted, until it closes or `max_bytes` came; the caller bounds
    the time. Closing a socket with unread bytes makes the kernel send a reset, and a client
    still sending its body would see that instead of the error response already written."""
    await tls.send_eof()
    transport = tls.transport
    if isinstance(transport, trio.abc.HalfCloseableStream):
        await transport.send_eof()
    received = 0
    while received < max_bytes:
        data = await transport.receive_some(_READ_SIZE)
        if not data:
            return
        received += len(data)
