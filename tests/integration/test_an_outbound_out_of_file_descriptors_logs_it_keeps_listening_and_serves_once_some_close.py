"""An outbound that runs out of file descriptors logs ``accept failed``, keeps listening,
and serves the connection that waited in its backlog once some close.

The accept loop (`sidecar.acceptor`) calls accept() on the listening socket itself; an
error other than a peer gone before the accept (EMFILE here) is logged, the loop waits
0.1 s and tries again. The test lowers the running sidecar's descriptor limit to what it
uses plus three (`prlimit`), holds three idle client connections (the third or an earlier
one fills the table), then connects a client that sends a request: it cannot be accepted
until the idle ones close. Once they do, its request is answered, and so is a new one.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration

REQUEST = b"GET /items/1 HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(REQUEST)
        return _answer(sock)


def test_an_outbound_out_of_file_descriptors_serves_again_once_some_close(
    tmp_path: Path,
) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            assert _get(pair.a_outbound).startswith(b"HTTP/1.1 200 ")  # the mTLS pool is up
            pid = a.process.pid
            limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            in_use = len(os.listdir(f"/proc/{pid}/fd"))
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 3, limit[1]))
            idle = [
                socket.create_connection(("127.0.0.1", pair.a_outbound), timeout=30)
                for _ in range(3)
            ]
            waiting = socket.create_connection(("127.0.0.1", pair.a_outbound), timeout=30)
            try:
                waiting.sendall(REQUEST)
                deadline = time.monotonic() + 20
                while "accept failed" not in a.log() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert "accept failed" in a.log()
                assert "Too many open files" in a.log()
                assert a.process.poll() is None
                for sock in idle:
                    sock.close()
                assert _answer(waiting).startswith(b"HTTP/1.1 200 ")
            finally:
                waiting.close()
                for sock in idle:
                    sock.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
            assert _get(pair.a_outbound).startswith(b"HTTP/1.1 200 ")
