"""The demo's apps answer sequential requests on one kept-alive connection in about a
millisecond: each response leaves in one send with `TCP_NODELAY` set. They used to write
the head and the body in two sends with Nagle's algorithm on, so every request after the
first on a connection waited ~40 ms for a delayed ACK, also when called directly.

The bound is on the fastest quarter (25th percentile under 25 ms): a stall adds Linux's
40 ms minimum ACK delay to every request, a busy machine slows only some: not a timing race.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.keepalive_timing import sequential
from tests.procs import ROOT

pytestmark = pytest.mark.integration

SERVICES = ROOT / "scripts" / "demo" / "demo_services.py"
_LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


def test_the_orders_app_answers_kept_alive_requests_without_stalling(tmp_path: Path) -> None:
    log = tmp_path / "orders.jsonl"
    argv = [sys.executable, str(SERVICES), "--name", "orders", "--port", "0", "--log", str(log)]
    with subprocess.Popen(argv, stderr=subprocess.PIPE) as app:
        try:
            assert app.stderr is not None
            match = _LISTENING.search(app.stderr.readline())
            assert match, "the orders app did not say where it listens"
            answers = sequential(
                int(match.group(1)), b"GET /orders/7 HTTP/1.1\r\nhost: orders\r\n\r\n", 21
            )
        finally:
            app.terminate()
            app.wait(timeout=10)
    assert {a.status for a in answers} == {200}
    assert json.loads(answers[-1].body)["order"] == "7"
    quarter = statistics.quantiles([a.ms for a in answers[1:]], n=4)[0]
    assert quarter < 25.0, f"p25 {quarter:.1f} ms: {[round(a.ms) for a in answers]}"
