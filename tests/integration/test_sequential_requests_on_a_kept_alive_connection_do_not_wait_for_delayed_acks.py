"""Sequential requests on one kept-alive connection through an http sidecar pair answer in
about a millisecond, not ~44 ms each.

The app here writes each response head and body in two sends with Nagle's algorithm on, as
Python's `http.server` and many apps do. Nagle holds the body back until the head is
acknowledged, and on a kept-alive connection Linux delays that ACK by ~40 ms. A client with
a connection per request never meets it, but the inbound sidecar pools its connections to
the app, so every request after the first stalled ~44 ms through the mesh. The inbound now
ACKs what it read before it waits for more (quick-ACK), and every sidecar socket has
`TCP_NODELAY` set, so no leg waits.

The check is on the fastest quarter of the requests: a stall adds at least Linux's 40 ms
minimum ACK delay to every request, while a busy machine (2 cores shared with other test
runs) slows some requests, not all of them. So the 25th percentile under 25 ms (~44 ms when
stalling, ~1 ms when not; a median bound of 15 ms once failed at 15.1 ms under load) does not
make this a timing race.
"""

from __future__ import annotations

import socket
import socketserver
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_sidecar_pair
from tests.keepalive_timing import sequential
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration

REQUESTS = 21  # the first opens both connections (and the mTLS handshake): not counted
BOUND_MS = 25.0  # for the 25th percentile; a stall makes every request >= 40 ms
REQUEST = b"GET /items/1 HTTP/1.1\r\nhost: catalog\r\n\r\n"


class _TwoSendsHandler(socketserver.StreamRequestHandler):
    """HTTP/1.1 keep-alive: the head in one send, the body in another, Nagle left on."""

    def handle(self) -> None:
        while self.rfile.readline():
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            body = b"x" * 64
            self.connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n")
            self.connection.sendall(body)


class _App(socketserver.ThreadingTCPServer):
    daemon_threads = True
    connections = 0

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self.connections += 1
        super().process_request(request, client_address)


@contextmanager
def _two_sends_app() -> Iterator[_App]:
    app = _App(("127.0.0.1", 0), _TwoSendsHandler)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()


def test_sequential_requests_on_a_kept_alive_connection_do_not_wait_for_delayed_acks(
    tmp_path: Path,
) -> None:
    with _two_sends_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            answers = sequential(pair.a_outbound, REQUEST, REQUESTS)
        assert app.connections == 1  # the inbound reused its app connection throughout
    assert {(a.status, a.body) for a in answers} == {(200, b"x" * 64)}
    quarter = statistics.quantiles([a.ms for a in answers[1:]], n=4)[0]
    assert quarter < BOUND_MS, f"p25 {quarter:.1f} ms: {[round(a.ms) for a in answers]}"
