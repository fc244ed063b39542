"""The CA server's previous trio shell on h11, kept as the benchmark's in-run reference.

``mesh-ca serve --http-shell h11`` selects it; `mesh_ca.server.http` is the default (a
strict reader of its own, ~20x cheaper per request than h11). Both answer the same API.

TLS (trio.SSLStream), HTTP/1.1 keep-alive (h11), limits, logs.

Everything the API decides is in `mesh_ca.server.core`; this module only moves bytes:
handshake, parse, enforce size caps and timeouts per phase, hand an `ApiRequest` to the
core (in a worker thread when it touches the store or signs), write the response and one
JSON access-log line. Tokens and keys are never logged: the log holds only the method,
path, status, peer and the public facts the core chose (`ApiResponse.log`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import final

import h11
import trio
from cryptography import x509

from mesh_ca.clock import Clock
from mesh_ca.server.core import ApiError, ApiRequest, ApiResponse, CaService, error_response
from mesh_ca.server.http import ServerLimits, endpoint_label
from mesh_ca.server.identity import ServerIdentity

__all__ = ["H11CaHttpServer"]

access_log = logging.getLogger("mesh_ca.server.access")
log = logging.getLogger("mesh_ca.server")

_SERVER_HEADER = b"meshgate-ca"
_READ_SIZE = 65536


class _CloseConnection(Exception):  # noqa: N818 - control flow, not an error
    """End this connection quietly (peer gone, timeout, protocol error already answered)."""


@final
class H11CaHttpServer:
    def __init__(
        self,
        service: CaService,
        identity: ServerIdentity,
        clock: Clock,
        limits: ServerLimits | None = None,
    ) -> None:
        self.service = service
        self.identity = identity  # replaced whole on rotation; each handshake reads it once
        self.clock = clock
        self.limits = limits or ServerLimits()
        self.connections = 0
        self._limiter = trio.CapacityLimiter(64)

    async def handle_connection(self, stream: trio.abc.Stream, source: str) -> None:
        """Serve one TCP connection until the peer closes, times out or misbehaves."""
        if self.connections >= self.limits.max_connections:
            log.warning(json.dumps({"event": "connection_refused", "reason": "max_connections"}))
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        tls = trio.SSLStream(stream, self.identity.context, server_side=True)
        try:
            with trio.fail_after(self.limits.handshake_timeout_seconds):
                await tls.do_handshake()
            der = tls.getpeercert(binary_form=True)
            peer = x509.load_der_x509_certificate(der) if der else None
            await self._serve_requests(tls, source, peer)
        except (
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
            await trio.aclose_forcefully(tls)

    async def _serve_requests(
        self, tls: trio.SSLStream[trio.abc.Stream], source: str, peer: x509.Certificate | None
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        first = True
        while True:
            timeout = (
                self.limits.header_timeout_seconds if first else self.limits.idle_timeout_seconds
            )
            first = False
            try:
                with trio.fail_after(timeout):
                    event = await self._next_event(tls, conn)
            except h11.RemoteProtocolError as exc:
                await self._refuse(tls, conn, ApiError(exc.error_status_hint, "bad_http", str(exc)))
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            started = time.perf_counter()
            method = event.method.decode("ascii", "replace")
            path = event.target.decode("ascii", "replace").split("?", 1)[0]
            try:
                body = await self._read_body(tls, conn, event)
            except ApiError as exc:
                await self._refuse(tls, conn, exc, method=method, path=path, started=started)
                return
            except h11.RemoteProtocolError as exc:
                error = ApiError(exc.error_status_hint, "bad_http", str(exc))
                await self._refuse(tls, conn, error, method=method, path=path, started=started)
                return
            request = ApiRequest(method, path, _header(event, b"content-type"), body, source, peer)
            response = await self._dispatch(request)
            await self._respond(tls, conn, response)
            self._log(method, path, response, peer, source, started)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _dispatch(self, request: ApiRequest) -> ApiResponse:
        blocking = self.service.is_blocking(request.method, request.path)
        now, monotonic = self.clock.now(), trio.current_time()
        if blocking and self.limits.threaded_handlers:
            return await trio.to_thread.run_sync(
                self.service.handle, request, now, monotonic, limiter=self._limiter
            )
        return self.service.handle(request, now, monotonic)

    async def _next_event(
        self, tls: trio.SSLStream[trio.abc.Stream], conn: h11.Connection
    ) -> h11.Event:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await tls.receive_some(_READ_SIZE)
                conn.receive_data(bytes(data))
                continue
            if event is h11.PAUSED:  # pipelined bytes after a complete request
                raise _CloseConnection
            return event  # type: ignore[return-value]

    async def _read_body(
        self, tls: trio.SSLStream[trio.abc.Stream], conn: h11.Connection, request: h11.Request
    ) -> bytes:
        """The whole body, refusing (413) before reading one declared too large."""
        cap = self.limits.max_body_bytes
        length = _header(request, b"content-length")
        if length is not None and int(length) > cap:
            raise ApiError(413, "body_too_large", f"body of {length} bytes exceeds {cap} bytes")
        chunks: list[bytes] = []
        size = 0
        with trio.fail_after(self.limits.body_timeout_seconds):
            while True:
                event = await self._next_event(tls, conn)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > cap:
                        raise ApiError(413, "body_too_large", f"body exceeds {cap} bytes")
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:
                    raise _CloseConnection

    async def _respond(
        self, tls: trio.SSLStream[trio.abc.Stream], conn: h11.Connection, response: ApiResponse
    ) -> None:
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            (b"server", _SERVER_HEADER),
            (b"cache-control", b"no-store"),
            *((k.encode(), v.encode()) for k, v in response.headers),
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        await tls.send_all(data)

    async def _refuse(
        self,
        tls: trio.SSLStream[trio.abc.Stream],
        conn: h11.Connection,
        error: ApiError,
        *,
        method: str = "-",
        path: str = "-",
        started: float | None = None,
    ) -> None:
        """Answer a request we will not read further, then close the connection."""
        response = error_response(error)
        response = ApiResponse(
            response.status,
            response.body,
            response.content_type,
            (*response.headers, ("connection", "close")),
            response.log,
        )
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            if conn.our_state is h11.IDLE and conn.their_state is h11.ERROR:
                # h11 cannot frame a response without a request; write it by hand.
                await tls.send_all(_raw_response(response))
            else:
                with trio.move_on_after(2):
                    await self._respond(tls, conn, response)
        self._log(method, path, response, None, "-", started or time.perf_counter())
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
        self._observe(path, started)
        if not access_log.isEnabledFor(logging.INFO):
            return
        line = {
            "method": method,
            "path": path,
            "status": response.status,
            "source": source,
            "client_cert": peer is not None,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            **response.log,
        }
        access_log.info(json.dumps(line, separators=(",", ":")))

    def _observe(self, path: str, started: float) -> None:
        self.service.metrics.request_duration.labels(endpoint_label(path)).observe(
            time.perf_counter() - started
        )


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _raw_response(response: ApiResponse) -> bytes:
    reason = {400: "Bad Request", 413: "Content Too Large", 431: "Header Fields Too Large"}
    head = (
        f"HTTP/1.1 {response.status} {reason.get(response.status, 'Error')}\r\n"
        f"content-type: {response.content_type}\r\n"
        f"content-length: {len(response.body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + response.body
