"""The latency benchmark's open-loop load generator (scripts/benchlib/open_loop.py) against a
real threaded HTTP app on loopback: every scheduled request is sent and answered; a stall
shows in every request that was due during it (latency counts from the due time, not from
when a busy connection got round to it), where a closed-loop client would show one slow
request; a non-2xx answer counts as failed; and the percentile is nearest-rank."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from scripts.benchlib.open_loop import percentile, run_open_loop, summary

pytestmark = pytest.mark.integration

STALL_SECONDS = 0.3
STALL_ON = 10  # the 10th request of the run


class _Handler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True

    def handle(self) -> None:
        app: _App = self.server  # type: ignore[assignment]
        while line := self.rfile.readline():
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            with app.lock:
                app.requests += 1
                stall = app.stall and app.requests == STALL_ON
            if stall:
                time.sleep(STALL_SECONDS)  # the app's stall the generator has to reveal
            status = b"503 Unavailable" if line.startswith(b"GET /fail ") else b"200 OK"
            self.wfile.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nok")


class _App(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, *, stall: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests = 0
        self.stall = stall


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Iterator[_App]:
    server = _App(stall=getattr(request, "param", False))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_every_scheduled_request_is_sent_and_answered(app: _App) -> None:
    result = run_open_loop(app.server_address[1], 200, 0.5, connections=4)
    assert result.scheduled == 100
    assert len(result.latencies_ms) == 100
    assert result.failed == result.unfinished == 0
    assert app.requests == 100
    assert len(result.send_lags_ms) == 100
    assert all(ms > 0 for ms in result.latencies_ms)


@pytest.mark.parametrize("app", [True], indirect=True)
def test_a_stall_counts_for_every_request_due_during_it(app: _App) -> None:
    result = run_open_loop(app.server_address[1], 100, 1.0, connections=1)
    assert len(result.latencies_ms) == 100
    # Requests are due every 10 ms; those due in the stall's first 200 ms waited at least
    # 100 ms for the one connection. Timed from their own send, only one would be slow.
    assert sum(ms >= 100 for ms in result.latencies_ms) >= 20


def test_a_non_2xx_answer_counts_as_failed(app: _App) -> None:
    result = run_open_loop(
        app.server_address[1], 100, 0.2, request=b"GET /fail HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    assert result.failed == 20
    assert result.latencies_ms == []


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert percentile(values, 0.5) == 500.0
    assert percentile(values, 0.99) == 990.0
    assert percentile(values, 0.999) == 999.0
    assert percentile([7.0], 0.999) == 7.0
    assert summary(values)["max"] == 1000.0
