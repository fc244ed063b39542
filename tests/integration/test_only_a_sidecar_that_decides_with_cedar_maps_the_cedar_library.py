"""Only the sidecar that decides with Cedar maps the Cedar library.

The outbound sidecar of an http pair never decides, so it must not import `cedarpy`
(~3 MB of idle RSS: its Rust library's pages and its Python modules); the inbound one,
which loads a Cedar policy set and decides every request with it, does. Read from each
process's own `/proc/PID/maps` after a request has gone through both.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration


def _maps_cedar(pid: int) -> bool:
    return "cedarpy" in Path(f"/proc/{pid}/maps").read_text()


def test_only_a_sidecar_that_decides_with_cedar_maps_the_cedar_library(tmp_path: Path) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with (
            running_sidecar(pair.b_config, pair.b_admin) as inbound,
            running_sidecar(pair.a_config, pair.a_admin) as outbound,
        ):
            with socket.create_connection(("127.0.0.1", pair.a_outbound), timeout=10) as client:
                client.sendall(
                    b"GET /items/1 HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n"
                )
                reply = b""
                while chunk := client.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
            assert _maps_cedar(inbound.process.pid)
            assert not _maps_cedar(outbound.process.pid)
