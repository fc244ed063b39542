"""Attack class: HTTP request smuggling through ambiguous framing or routing headers.

Advisory: CWE-444 (Inconsistent Interpretation of HTTP Requests). Two readers that
resolve a duplicated Content-Length or Host differently (one merges or takes the last,
the other refuses) disagree on where a request ends or whom it is for. The CA's reader
took two identical Content-Lengths and two Hosts (the last one winning) where the
sidecar's refused them; both now apply meshgate/http/rules.py.

Against real processes: the same ambiguous heads sent to a `mesh_ca.server` (over TLS)
and to a sidecar's http outbound listener are refused by both with the same status (400:
since issue 13 the CA reads requests with the sidecar's reader, so even Content-Length with
Transfer-Encoding is refused by the same rule; only an unambiguous chunked body is the
CA's own 501), and the app behind the sidecar pair sees none of them (a well-formed
request does reach it).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshgate.transport.mtls import client_context
from tests.ca_server_process import CaServer, running_ca_server
from tests.integration.http_mesh import http_sidecar_pair
from tests.integration.recording_app import recording_app
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration

AMBIGUOUS = {
    "duplicate identical Content-Length": (
        b"POST /v1/renew HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}"
    ),
    "duplicate Host": b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "Content-Length with Transfer-Encoding": (
        b"POST /v1/renew HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "malformed Host": b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
    "bare LF": b"GET /healthz HTTP/1.1\nHost: h\r\n\r\n",
    # A proxy in front that reads `_` as `-` sees two lengths. The CA took this as an
    # unknown header until it read requests with the sidecar's reader (issue 13).
    "underscore look-alike of Content-Length": (
        b"POST /v1/renew HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b"Content_Length: 0\r\nContent-Length: 2\r\n\r\n{}"
    ),
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaServer]:
    with running_ca_server(tmp_path_factory.mktemp("ca")) as running:
        yield running


def _status(reply: bytes) -> int:
    line = reply.split(b"\r\n", 1)[0]
    return int(line.split(b" ")[1]) if line.startswith(b"HTTP/1.1 ") else 0


async def _ca_status(ca: CaServer, data: bytes) -> int:
    stream = trio.SSLStream(
        await trio.open_tcp_stream(ca.host, ca.port), client_context(ca.bundles)
    )
    try:
        with trio.fail_after(10):
            await stream.send_all(data)
            return _status(bytes(await stream.receive_some(65536)))
    finally:
        await trio.aclose_forcefully(stream)


def _sidecar_status(port: int, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        return _status(conn.recv(65536))


async def test_the_ca_and_the_sidecar_refuse_the_same_ambiguous_heads(
    ca: CaServer, tmp_path: Path
) -> None:
    for name, data in AMBIGUOUS.items():
        assert await _ca_status(ca, data) == 400, name
    chunked = b"POST /v1/renew HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert await _ca_status(ca, chunked) == 501  # the CA has no chunked bodies
    assert await _ca_status(ca, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n") == 200

    with recording_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.port)
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            for name, data in AMBIGUOUS.items():
                retargeted = data.replace(b"/v1/renew", b"/items/1").replace(b"/healthz", b"/i")
                status = await trio.to_thread.run_sync(_sidecar_status, pair.a_outbound, retargeted)
                assert status == 400, name
            ok = b"GET /items/1 HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n"
            assert await trio.to_thread.run_sync(_sidecar_status, pair.a_outbound, ok) == 200
        assert app.methods() == ["GET"]  # only the well-formed request reached the app
