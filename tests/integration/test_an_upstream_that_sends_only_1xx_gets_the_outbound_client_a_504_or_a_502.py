"""An upstream that answers only with 1xx responses gets the outbound sidecar's client a
504 (it never sent a final head within ``response_timeout_seconds``) or a 502 (it closed
the connection after the 1xx), like the inbound sidecar answers for its app.

Before the shared response relay (`sidecar/transport/response_pump.py`) the outbound
restarted its response wait at every read, so an upstream that sent a 103 every 0.3 s held
the request until it hung up (then a 502, never the 504); and a 1xx followed by a clean TLS
close (close_notify) made it read the closed stream again and again, forever, at full CPU.

The upstream is a raw TLS server with B's SVID on B's inbound port, standing in for B's
sidecar, so it can send what a sidecar never would.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.http_mesh import http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import Sidecar, running_sidecar

pytestmark = pytest.mark.integration

DEADLINE = 20.0  # seconds the client waits for the sidecar's answer; never reached when fixed
HINTS = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"


class _OnlyHints(socketserver.StreamRequestHandler):
    """Answers every request with 1xx only: `/forever` a 103 every 0.3 s for 15 s, then a
    plain close; `/then-close` one 103, then close_notify."""

    def setup(self) -> None:
        context: ssl.SSLContext = self.server.context  # type: ignore[attr-defined]
        self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()

    def handle(self) -> None:
        line = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        path = line.split(b" ")[1] if line else b""
        if path == b"/forever":
            for _ in range(50):
                self.wfile.write(HINTS)
                self.wfile.flush()
                time.sleep(0.3)
        else:
            self.wfile.write(HINTS)
            self.wfile.flush()
            self.request.settimeout(5)  # unwrap waits for the sidecar's own close_notify
            with contextlib.suppress(OSError):
                self.request.unwrap()

    def finish(self) -> None:
        super().finish()
        self.request.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class _Mesh:
    outbound_port: int
    a: Sidecar


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Mesh]:
    tmp: Path = tmp_path_factory.mktemp("hints")
    pair = http_sidecar_pair(Pki(), tmp, 9, timeouts={"response_timeout_seconds": 1})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(tmp / "b" / "svid.pem", tmp / "b" / "svid.key")
    upstream = _Server(("127.0.0.1", pair.b_inbound), _OnlyHints)
    upstream.context = context  # type: ignore[attr-defined]
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        with running_sidecar(pair.a_config, pair.a_admin) as a:
            yield _Mesh(pair.a_outbound, a)
    finally:
        upstream.shutdown()
        upstream.server_close()


def _get(port: int, path: str) -> bytes:
    """One GET; everything the sidecar sent until it closed the connection."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: catalog\r\n\r\n".encode())
        while data := sock.recv(65536):
            received += data
    return received


def _final(received: bytes) -> tuple[bytes, bytes]:
    """The final (non-1xx) status line and its body."""
    rest = received
    while rest.startswith(b"HTTP/1.1 1"):
        rest = rest.split(b"\r\n\r\n", 1)[1]
    head, _, body = rest.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


def _access(sidecar: Sidecar, path: str) -> list[dict[str, Any]]:
    lines = [json.loads(t) for t in sidecar.log().splitlines() if t.startswith("{")]
    return [line for line in lines if line.get("path") == path and "status" in line]


def _wait(what: str, check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_1xx_without_a_final_head_ends_in_504_at_the_response_timeout(mesh: _Mesh) -> None:
    received = _get(mesh.outbound_port, "/forever")
    assert received.startswith(HINTS)  # the hints went on to the client as they came
    status, body = _final(received)
    assert status == b"HTTP/1.1 504 Gateway Timeout", received[-300:]
    assert b"sent no response within 1 s" in body
    _wait("A's access line", lambda: bool(_access(mesh.a, "/forever")))
    [line] = _access(mesh.a, "/forever")
    assert (line["status"], line["reason"]) == (504, "response_timeout")


def test_1xx_then_a_clean_close_ends_in_502(mesh: _Mesh) -> None:
    received = _get(mesh.outbound_port, "/then-close")
    assert received.startswith(HINTS)
    status, body = _final(received)
    assert status == b"HTTP/1.1 502 Bad Gateway", received[-300:]
    assert b"closed the connection" in body
    _wait("A's access line", lambda: bool(_access(mesh.a, "/then-close")))
    [line] = _access(mesh.a, "/then-close")
    assert (line["status"], line["reason"]) == (502, "upstream_closed")
