"""app → outbound sidecar (http) → mTLS → inbound sidecar (http, Cedar) → app: a permitted
GET succeeds; a DELETE that no policy permits gets 403 and the app never sees it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_sidecar_pair
from tests.integration.recording_app import recording_app, request
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration


def _access_lines(log: str) -> list[dict[str, object]]:
    return [
        json.loads(text)
        for text in log.splitlines()
        if text.startswith("{") and '"direction":"inbound"' in text.replace(" ", "")
    ]


def test_a_forbidden_delete_gets_403_and_the_app_sees_nothing(tmp_path: Path) -> None:
    with recording_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.port)
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            assert request(pair.a_outbound, "GET", "/items/1") == (200, b"GET /items/1")
            status, body = request(pair.a_outbound, "DELETE", "/items/1")
            assert status == 403
            assert b"request id: " in body
            assert app.methods() == ["GET"]
            assert b.stop() == 0
        decisions = [(line.get("method"), line.get("decision")) for line in _access_lines(b.log())]
        assert ("GET", "allow") in decisions
        assert ("DELETE", "deny") in decisions
        denied = next(line for line in _access_lines(b.log()) if line.get("method") == "DELETE")
        assert denied["peer_id"] == str(pair.a_id)
        assert denied["status"] == 403
