"""A `mesh-ca serve` without `[control] policy_dir`: default deny. Every registration is
refused (saying why), nothing is stored, and policies are answered 503 `no_policy_set`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ca_server_process import running_ca_server
from tests.control_helpers import Caller, shop

pytestmark = pytest.mark.integration


async def test_registrations_are_refused_and_there_is_no_policy_set(tmp_path: Path) -> None:
    with running_ca_server(tmp_path) as server:
        orders = Caller.of(server, shop("orders"))
        refused = await orders.register("orders", "127.0.0.1:9001")
        assert refused.status == 403
        error = json.loads(refused.body)
        assert error["error"] == "registration_denied"
        assert "control.policy_dir" in error["message"]
        watch = await orders.watch("orders", after=0, wait_ms=0)
        assert watch == {"service": "orders", "version": 0, "endpoints": []}
        policies = await orders.post("/v1/control/policies", {"service": "orders"})
        assert policies.status == 503
        assert json.loads(policies.body)["error"] == "no_policy_set"
        assert policies.headers.get("retry-after") == "5"
    assert server.process.returncode == 0, server.log()
