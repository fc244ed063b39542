"""A request on a kept-alive connection is timed from its own first byte.

app ← inbound sidecar B (http, Cedar) ← mTLS ← outbound sidecar A (http) ← one kept-alive
client connection. The client sends a request, stays idle for 2 s on the same connection,
then sends a second one; A reuses its pooled mesh connection to B, so B's session waits
those 2 s for the second head too. Both access lines of the second request must time the
request (milliseconds), not the idle wait before it: before the fix B's inbound line said
~2 s, because its clock started when the session began waiting for the next head.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import Sidecar, running_sidecar

pytestmark = pytest.mark.integration

IDLE_SECONDS = 2.0


def _request(sock: socket.socket, path: str) -> bytes:
    """One GET on the open connection; the whole response (the app sends content-length)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: catalog\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _lines(sidecar: Sidecar, direction: str) -> list[dict[str, Any]]:
    lines = [json.loads(t) for t in sidecar.log().splitlines() if t.startswith("{")]
    return [line for line in lines if line.get("direction") == direction and "status" in line]


def _wait_for_lines(sidecar: Sidecar, direction: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while len(lines := _lines(sidecar, direction)) < count:
        assert time.monotonic() < deadline, f"{direction} access lines: {lines}"
        time.sleep(0.05)
    return lines


def test_the_idle_gap_before_a_request_is_not_part_of_its_duration(tmp_path: Path) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin) as a,
            socket.create_connection(("127.0.0.1", pair.a_outbound), timeout=20) as sock,
        ):
            assert _request(sock, "/items/1").startswith(b"HTTP/1.1 200 ")
            time.sleep(IDLE_SECONDS)  # the scenario itself: an idle kept-alive connection
            assert _request(sock, "/items/2").startswith(b"HTTP/1.1 200 ")
            inbound = _wait_for_lines(b, "inbound", 2)
            outbound = _wait_for_lines(a, "outbound", 2)
            assert app.connections == 1  # B's app connection was reused: one session, idle
            for lines in (inbound, outbound):
                first, second = lines
                assert (first["path"], second["path"]) == ("/items/1", "/items/2")
                # A request through loopback takes milliseconds; the gap is 2 s.
                assert second["duration_seconds"] < IDLE_SECONDS / 2, second
                # The line's time is the request's own start, after the gap.
                gap = datetime.fromisoformat(second["time"]) - datetime.fromisoformat(first["time"])
                assert gap.total_seconds() >= IDLE_SECONDS * 0.9, (first, second)
