"""An inbound sidecar in audit mode forwards a request its policies deny, and logs and
counts it as audit_deny with the peer and the decision."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_sidecar_pair
from tests.integration.recording_app import recording_app, request, set_policy_options
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration


def test_audit_mode_forwards_what_policy_would_deny_and_logs_it(tmp_path: Path) -> None:
    with recording_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.port)
        set_policy_options(pair.b_config, audit=True)
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            assert request(pair.a_outbound, "DELETE", "/items/1") == (200, b"DELETE /items/1")
            assert request(pair.a_outbound, "GET", "/items/1") == (200, b"GET /items/1")
            assert app.methods() == ["DELETE", "GET"]
            url = f"http://127.0.0.1:{pair.b_admin}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                metrics = response.read().decode()
            assert 'result="audit_deny"' in metrics
            assert b.get("/policies")[1]["audit"] is True
            assert b.stop() == 0
        lines = [json.loads(t) for t in b.log().splitlines() if t.startswith("{")]
        audited = [line for line in lines if line.get("decision") == "audit_deny"]
        assert len(audited) == 1
        assert audited[0]["method"] == "DELETE"
        assert audited[0]["peer_id"] == str(pair.a_id)
        assert audited[0]["status"] == 200
