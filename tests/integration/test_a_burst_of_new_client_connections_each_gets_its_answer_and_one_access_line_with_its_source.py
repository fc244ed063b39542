"""A burst of new client connections, all waiting in the outbound's backlog at once, each
gets its own answer, a clean close, and one access line that names its own source port.

The outbound accepts every connection waiting in its backlog in one go (`sidecar.acceptor`,
a checkpoint every 16) and knows each peer's address from the accept, not from a
`getpeername` later. 60 clients connect first and only then send a request each
(``Connection: close``), so the accept loop meets a full backlog; each must get the answer
to its own path, then EOF (a FIN, not a reset); the access log has one line per request
whose ``source`` is that client's own address, and the connection metrics count 60 opened
and none left open.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import Sidecar, running_sidecar

pytestmark = pytest.mark.integration

CLIENTS = 60


def _access(sidecar: Sidecar) -> list[dict[str, object]]:
    lines = [json.loads(t) for t in sidecar.log().splitlines() if t.startswith("{")]
    return [line for line in lines if line.get("direction") == "outbound" and "status" in line]


def _read_to_eof(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):  # a reset raises: the close must be clean
        received += data
    return received


def _metric(sidecar: Sidecar, line_start: str) -> str:
    url = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = str(response.read().decode())
    return next(line for line in text.splitlines() if line.startswith(line_start))


def test_a_burst_of_new_client_connections_each_gets_its_answer_and_one_access_line(
    tmp_path: Path,
) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            clients = [
                socket.create_connection(("127.0.0.1", pair.a_outbound), timeout=30)
                for _ in range(CLIENTS)
            ]
            try:
                sources = {f"127.0.0.1:{c.getsockname()[1]}": i for i, c in enumerate(clients)}
                for index, client in enumerate(clients):
                    client.sendall(
                        f"GET /items/{index} HTTP/1.1\r\nhost: catalog\r\n"
                        "connection: close\r\n\r\n".encode()
                    )
                answers = [_read_to_eof(client) for client in clients]
            finally:
                for client in clients:
                    client.close()
            for index, answer in enumerate(answers):
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
                assert f"/items/{index} xfcc=".encode() in answer
            deadline = time.monotonic() + 20
            while len(_access(a)) < CLIENTS and time.monotonic() < deadline:
                time.sleep(0.05)
            lines = _access(a)
            assert len(lines) == CLIENTS
            assert {str(line["source"]) for line in lines} == set(sources)
            for line in lines:
                assert line["path"] == f"/items/{sources[str(line['source'])]}"
                assert line["status"] == 200
            opened = 'meshgate_connections_total{direction="outbound"}'
            assert _metric(a, opened) == f"{opened} {float(CLIENTS)}"
            still_open = 'meshgate_connections_open{direction="outbound"}'
            deadline = time.monotonic() + 20
            while _metric(a, still_open) != f"{still_open} 0.0" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _metric(a, still_open) == f"{still_open} 0.0"
