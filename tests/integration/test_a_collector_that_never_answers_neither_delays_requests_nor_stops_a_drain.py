"""Tracing never blocks the data path: with ``[tracing]`` pointed at a collector that accepts
connections and never answers (and an export timeout longer than the client's), requests
through both sidecars keep succeeding on one kept-alive connection while exports hang, and
SIGTERM still drains both sidecars to exit 0 (queued spans get a bounded time to leave)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_sidecar_pair
from tests.integration.recording_app import recording_app, request
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration


@contextmanager
def black_hole() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP listener on loopback that accepts and then never reads or answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_collector_that_never_answers_neither_delays_requests_nor_stops_a_drain(
    tmp_path: Path,
) -> None:
    with recording_app() as app, black_hole() as (collector, accepted):
        pair = http_sidecar_pair(Pki(), tmp_path, app.port, timeouts={"drain_timeout_seconds": 2})
        for config in (pair.a_config, pair.b_config):
            with config.open("a") as f:
                f.write(
                    "[tracing]\n"
                    f'endpoint = "http://127.0.0.1:{collector}/v1/traces"\n'
                    "export_delay_seconds = 0.05\n"
                    "export_timeout_seconds = 30\n"  # longer than the client's 10 s timeout
                )
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            conn = http.client.HTTPConnection("127.0.0.1", pair.a_outbound, timeout=10)
            try:
                assert request(pair.a_outbound, "GET", "/items/0", conn)[0] == 200
                # Both sidecars are now stuck exporting (the collector took the connection).
                deadline = time.monotonic() + 30
                while len(accepted) < 2:
                    assert time.monotonic() < deadline, f"{len(accepted)} export connections"
                    time.sleep(0.05)
                for i in range(1, 40):
                    assert request(pair.a_outbound, "GET", f"/items/{i}", conn)[0] == 200
            finally:
                conn.close()
            assert app.methods() == ["GET"] * 40
            assert a.stop(timeout=20) == 0
            assert b.stop(timeout=20) == 0
