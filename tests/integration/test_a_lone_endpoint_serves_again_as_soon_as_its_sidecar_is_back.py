"""A service with one endpoint is used again the moment its sidecar is back.

The http pool used to skip an endpoint for ``endpoint_backoff_seconds`` (5 s) after one
failed connect, so with a single endpoint every request got 503 for up to 5 s after the
peer had returned. Now, with no healthy endpoint left, the pool dials anyway: the request
during the outage is a 502 (refused), the first request after the restart is a 200.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.integration.recording_app import request
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration


def test_the_first_request_after_the_restart_succeeds(tmp_path: Path) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with running_sidecar(pair.a_config, pair.a_admin):
            with running_sidecar(pair.b_config, pair.b_admin) as b:
                assert request(pair.a_outbound, "GET", "/items/1")[0] == 200
                assert b.stop() == 0
            status, body = request(pair.a_outbound, "GET", "/items/2")
            assert status == 502, body
            assert b"refused the connection" in body
            with running_sidecar(pair.b_config, pair.b_admin):
                status, body = request(pair.a_outbound, "GET", "/items/3")
                assert status == 200, body
