"""A response cut after its head is logged with the status sent and ``response_incomplete``.

app → outbound sidecar A (http) → mTLS → inbound sidecar B (http, Cedar) → app. Two ways a
response is cut after its 200 head went out, each reported once by both sidecars, never as
a clean 200:
- the app announces 100,000 bytes, sends 1,000 and closes: B logs
  ``response_incomplete: app_error``, A ``response_incomplete: upstream_broke``;
- the app streams slowly and B is told to stop with a 1 s drain timeout: B cuts the
  request it had allowed and forwarded (``response_incomplete: drain_timeout``); before,
  such a request never reached B's access log at all.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.http_mesh import http_sidecar_pair, threaded_app
from tests.pki import TestPki as Pki
from tests.procs import Sidecar, running_sidecar

pytestmark = pytest.mark.integration


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.wfile.flush()
        if self.path.startswith("/slow"):
            for _ in range(300):  # 30 s, far beyond the drain timeout
                time.sleep(0.1)
                self.wfile.write(b"y" * 100)
                self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(port: int, path: str) -> bytes:
    """Send one GET and read whatever comes until the connection ends (cut or not)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: catalog\r\n\r\n".encode())
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            pass
    return received


def _access(sidecar: Sidecar, direction: str) -> list[dict[str, Any]]:
    lines = [json.loads(t) for t in sidecar.log().splitlines() if t.startswith("{")]
    return [line for line in lines if line.get("direction") == direction and "status" in line]


def _logged(sidecar: Sidecar, direction: str) -> bool:
    return bool(_access(sidecar, direction))


def _wait(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_truncated_body_is_incomplete_on_both_sides(tmp_path: Path) -> None:
    with threaded_app(_Handler) as port:
        pair = http_sidecar_pair(Pki(), tmp_path, port)
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            received = _get(pair.a_outbound, "/items/cut")
            assert received.startswith(b"HTTP/1.1 200 ")
            assert len(received) < 100_000
            _wait("both access lines", lambda: _logged(a, "outbound") and _logged(b, "inbound"))
            [inbound] = _access(b, "inbound")
            [outbound] = _access(a, "outbound")
            assert inbound["status"] == 200
            assert inbound["decision"] == "allow"
            assert inbound["reason"].startswith("response_incomplete: app_error")
            assert outbound["status"] == 200
            assert outbound["reason"] == "response_incomplete: upstream_broke"
            counted = 'meshgate_requests_incomplete_total{cause="app_error",direction="inbound"}'
            assert f"{counted} 1.0" in _metrics(b)


def _metrics(sidecar: Sidecar) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.admin_port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_a_request_cut_by_the_drain_timeout_is_logged(tmp_path: Path) -> None:
    with threaded_app(_Handler) as port:
        pair = http_sidecar_pair(Pki(), tmp_path, port, timeouts={"drain_timeout_seconds": 1})
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            with socket.create_connection(("127.0.0.1", pair.a_outbound), timeout=30) as sock:
                sock.sendall(b"GET /slow HTTP/1.1\r\nhost: catalog\r\n\r\n")
                received = sock.recv(65536)  # the head and the first 1,000 bytes: forwarded
                assert received.startswith(b"HTTP/1.1 200 ")
                b.process.send_signal(signal.SIGTERM)
                assert b.process.wait(20) == 0
                with contextlib.suppress(ConnectionResetError):
                    while data := sock.recv(65536):
                        received += data
            assert len(received) < 100_000
            [inbound] = _access(b, "inbound")
            assert inbound["status"] == 200
            assert inbound["decision"] == "allow"
            assert inbound["reason"] == "response_incomplete: drain_timeout"
            _wait("A's access line", lambda: bool(_access(a, "outbound")))
            [outbound] = _access(a, "outbound")
            assert outbound["status"] == 200
            assert outbound["reason"].startswith("response_incomplete: ")
