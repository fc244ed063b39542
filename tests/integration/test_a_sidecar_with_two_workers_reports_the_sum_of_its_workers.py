"""A sidecar with ``workers = 2`` reports from its parent the sum over its workers: the
CA's edge counts equal what the parent's /metrics shows (itself the workers' sum), and
the denials the workers saw reach the CA as samples.

Real processes: the demo mesh with the orders sidecar running two workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.report_mesh import (
    edge_counts_from_metrics,
    mesh_view,
    running_mesh,
    send,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_two_workers_are_reported_as_one_instance_with_their_sum(tmp_path: Path) -> None:
    with running_mesh(tmp_path, workers={"orders": 2}) as mesh:
        web = mesh.services["web"].app_port
        statuses = [send(web, "GET", f"/orders/{n}") for n in range(30)]
        statuses += [send(web, "DELETE", f"/orders/{n}") for n in range(3)]
        assert statuses == [200] * 30 + [403] * 3
        orders = mesh.services["orders"]

        def same_counts() -> dict[str, Any] | None:
            own = edge_counts_from_metrics(orders.metrics(), "inbound")[("web", "orders")]
            view = mesh_view(mesh, "15m")
            edges = {(e["source"], e["destination"]): e for e in view["edges"]}
            edge = edges.get(("web", "orders"))
            return view if edge and edge["requests"] == own["requests"] == 33 else None

        view = wait_until("the CA to count the workers' sum", same_counts)
        [instance] = [i for i in view["instances"] if i["service"] == "orders"]
        assert instance["workers"] == 2
        assert instance["ready"] is True
        assert instance["policy_version"]  # from the workers' metrics (the parent loads none)
        denials = wait_until("the workers' denial samples", lambda: mesh_view(mesh)["denials"])
        assert {(d["action"], d["path"]) for d in denials} <= {
            ("DELETE", f"/orders/{n}") for n in range(3)
        }
        assert all(d["policies"] == ["no-delete"] for d in denials)
