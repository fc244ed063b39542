"""workers = 2: the parent's /metrics shows the data-path metrics summed over both worker
processes (requests sent = requests counted), also after a worker is killed and replaced.
Real processes."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar
from tests.test_workers_share_listeners import (
    _get,
    _holds_connection_to,
    _records,
    _wait,
    _worker_pids,
)

pytestmark = pytest.mark.integration

EDGE = {"direction": "outbound", "source_service": "frontend", "destination_service": "catalog"}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return bytes(response.read()).decode()


def _sum(text: str, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and want <= set(s.labels.items())
    )


def _counted(port: int) -> float:
    return _sum(_scrape(port), "meshgate_requests_total", **EDGE, status="200")


def test_the_parent_shows_requests_summed_over_both_workers(tmp_path: Path) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1], workers=2)
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            first = _worker_pids(a)
            sent = 40
            for i in range(sent):  # one connection each: the kernel spreads them
                assert _get(pair.a_outbound, f"/items/{i}") == 200
            assert all(_holds_connection_to(pid, pair.b_inbound) for pid in first)  # both served

            # A worker counts a request just after its response is written.
            _wait(lambda: _counted(pair.a_admin) == sent)
            text = _scrape(pair.a_admin)
            assert _sum(text, "meshgate_request_duration_seconds_count", **EDGE) == sent
            assert _sum(text, "meshgate_bytes_total", **EDGE, flow="sent") > 0
            assert _sum(text, "meshgate_certificate_expiry_timestamp_seconds") > time.time()
            types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
            assert len(types) == len(set(types)), "a family is exposed twice"

            # A killed worker's counts stay; its replacement adds to them.
            os.kill(first[0], signal.SIGKILL)
            _wait(lambda: len(_records(a, "sidecar started")) == 3)
            for i in range(10):
                assert _get(pair.a_outbound, f"/again/{i}") == 200
            _wait(lambda: _counted(pair.a_admin) == sent + 10)
            assert a.stop(signal.SIGTERM) == 0
