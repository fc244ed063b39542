"""The CA server's trio shell over in-memory streams with real TLS: phase timeouts, pipelining."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from mesh_ca.ca_dir import init_ca_dir
from mesh_ca.config import CaConfig
from mesh_ca.server.core import ApiRequest, ApiResponse, CaService, StoreStep
from mesh_ca.server.http import CaHttpServer, ServerLimits
from mesh_ca.server.identity import issue_server_identity
from mesh_ca.server.main import authority_of
from mesh_ca.server.ratelimit import RateLimiter
from meshgate.clock import SystemClock
from meshgate.identity import BundleSet
from meshgate.transport.mtls import client_context

TD = "shell.example"
LIMITS = ServerLimits(
    header_timeout_seconds=5,
    body_timeout_seconds=3,
    idle_timeout_seconds=7,
    threaded_handlers=False,
)


def make_server(tmp_path: Path, limits: ServerLimits = LIMITS) -> tuple[CaHttpServer, BundleSet]:
    ca = init_ca_dir(tmp_path / "ca", TD, datetime.now(UTC), config=CaConfig(trust_domain=TD))
    authority = authority_of(ca)
    store = ca.open_store()
    identity = issue_server_identity(authority, store, datetime.now(UTC))
    service = CaService(authority, store, RateLimiter(100, 100))
    return CaHttpServer(service, identity, SystemClock(), limits), BundleSet.of(ca.bundle)


async def closed_after(
    tmp_path: Path, send: bytes, autojump_clock: trio.testing.MockClock
) -> tuple[float, bytes]:
    """Seconds until the server closes a connection that sent `send` and then stalled."""
    server, bundles = make_server(tmp_path)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, client_context(bundles), server_hostname="ca")
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_connection, server_raw, "127.0.0.1")
        await client.do_handshake()
        started = trio.current_time()
        if send:
            await client.send_all(send)
        try:
            while data := await client.receive_some(65536):
                received += data
        except trio.BrokenResourceError:
            pass
        return trio.current_time() - started, received


async def test_a_silent_connection_is_closed_after_the_header_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    waited, received = await closed_after(tmp_path, b"", autojump_clock)
    assert 5 <= waited < 6
    assert received == b""


async def test_a_stalled_body_is_closed_after_the_body_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    head = b"POST /v1/renew HTTP/1.1\r\nHost: ca\r\nContent-Length: 100\r\n\r\n{"
    waited, received = await closed_after(tmp_path, head, autojump_clock)
    assert 3 <= waited < 4
    assert received == b""


async def test_pipelined_requests_are_answered_in_order_then_the_idle_timeout_closes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    two = b"GET /healthz HTTP/1.1\r\nHost: ca\r\n\r\nGET /v1/bundle HTTP/1.1\r\nHost: ca\r\n\r\n"
    waited, received = await closed_after(tmp_path, two, autojump_clock)
    assert 7 <= waited < 8
    first, rest = received.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest.startswith(b'{"status":"ok"}HTTP/1.1 200 OK')
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["keys"]


async def test_a_failing_handler_is_answered_500_and_the_connection_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server, bundles = make_server(tmp_path)
    real_begin = server.service.begin

    def begin(request: ApiRequest, now: datetime, monotonic: float) -> ApiResponse | StoreStep:
        if request.path == "/v1/bundle":
            raise RuntimeError("a bug in a handler")
        return real_begin(request, now, monotonic)

    monkeypatch.setattr(server.service, "begin", begin)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, client_context(bundles), server_hostname="ca")
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_connection, server_raw, "127.0.0.1")
        await client.send_all(
            b"GET /v1/bundle HTTP/1.1\r\nHost: ca\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n"
        )
        with trio.fail_after(10):
            try:
                while data := await client.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:
                pass  # the server closes after "Connection: close" without close_notify
    first, rest = received.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 500 ")
    assert json.loads(rest.split(b"HTTP/1.1", 1)[0])["error"] == "internal_error"
    assert b"HTTP/1.1 200 OK" in rest  # the next request on the same connection
    assert any("handler_failed" in r.getMessage() for r in caplog.records)
