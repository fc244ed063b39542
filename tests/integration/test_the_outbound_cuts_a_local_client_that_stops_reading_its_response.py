"""A local client that stops reading a large response is cut by the outbound sidecar after
``body_idle_timeout_seconds`` and logged ``response_incomplete: client_gone``, as the
inbound sidecar does with a mesh client that stops reading.

Before the shared response relay (`sidecar/transport/response_pump.py`) the outbound wrote
to its client with no deadline: a client that never read held the request, its upstream
connection and its slot forever, and the request never reached the access log.
"""

from __future__ import annotations

import http.server
import json
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

BODY_BYTES = 256 * 1024 * 1024  # far more than every socket buffer on the way can hold
PIECE = b"x" * (1024 * 1024)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", str(BODY_BYTES))
        self.end_headers()
        try:
            for _ in range(BODY_BYTES // len(PIECE)):
                self.wfile.write(PIECE)
        except OSError:  # the inbound sidecar gave up on its stalled client
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _access(sidecar: Sidecar, direction: str) -> list[dict[str, Any]]:
    lines = [json.loads(t) for t in sidecar.log().splitlines() if t.startswith("{")]
    return [line for line in lines if line.get("direction") == direction and "status" in line]


def _wait(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_client_that_stops_reading_is_cut_and_logged(tmp_path: Path) -> None:
    with threaded_app(_Handler) as port:
        pair = http_sidecar_pair(Pki(), tmp_path, port, timeouts={"body_idle_timeout_seconds": 1})
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin) as a,
            socket.create_connection(("127.0.0.1", pair.a_outbound), timeout=10) as sock,
        ):
            sock.sendall(b"GET /big HTTP/1.1\r\nhost: catalog\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")  # then it reads no more
            _wait("A's access line", lambda: bool(_access(a, "outbound")))
            [line] = _access(a, "outbound")
            assert line["status"] == 200
            assert line["reason"] == "response_incomplete: client_gone"
            assert 0 < line["bytes_out"] < BODY_BYTES
