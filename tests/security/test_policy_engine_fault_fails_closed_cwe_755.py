"""A fault inside the policy engine (CWE-755, improper handling of exceptional conditions;
an exception path must neither fail open nor become a denial of service): the request is
denied with 403, the access log's `decision_reason` names the engine error, the fault is
counted in `meshgate_policy_engine_errors_total`, and the connection stays usable for the
next request. The engine fault is injected into a real sidecar process
(`tests/security/faulty_engine_sidecar.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.security.harness import metric_value, security_mesh

pytestmark = pytest.mark.integration


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: catalog.svc\r\n\r\n".encode()


def test_an_engine_fault_denies_one_request_and_keeps_the_connection(tmp_path: Path) -> None:
    module = "tests.security.faulty_engine_sidecar"
    with security_mesh(tmp_path, b_module=module) as mesh:
        client = mesh.mesh_client()
        denied = client.ask(_get("/engine-fault"))
        assert denied.status == 403
        assert b"request id: " in denied.body
        assert client.ask(_get("/items")).status == 200  # the same connection
        assert [s.path for s in mesh.app.requests()] == ["/items"]
        assert metric_value(mesh.pair.b_admin, "meshgate_policy_engine_errors_total") == 1.0
        lines = [
            json.loads(line)
            for line in mesh.b.log().splitlines()
            if line.startswith("{") and '"/engine-fault"' in line
        ]
        (line,) = lines
        assert line["decision"] == "deny"
        assert line["decision_reason"] == "engine-error: RuntimeError: injected engine fault"
