"""`mesh-ca mesh stat/edges/top` on the running demo mesh show the request counts and
success rates that the sidecars' own /metrics show, once the reports (every second) are
in; a denial made in the test is listed with a `mesh-sidecar policy explain` command that
reproduces it.

Real processes: the CA with its loopback admin listener, three apps, three sidecars that
bootstrap from the CA and report to it over mTLS.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.report_mesh import (
    Mesh,
    edge_counts_from_metrics,
    mesh_ca_cli,
    mesh_view,
    running_mesh,
    send,
    wait_until,
)

pytestmark = pytest.mark.integration


def _view_edges(mesh: Mesh, command: str) -> dict[tuple[str, str], dict[str, Any]]:
    done = mesh_ca_cli(
        "mesh", command, "--admin", mesh.ca_admin, "--window", "15m", "--output", "json"
    )
    assert done.returncode == 0, done.stderr
    return {(e["source"], e["destination"]): e for e in json.loads(done.stdout)["edges"]}


def _metrics(mesh: Mesh) -> dict[tuple[str, str], dict[str, float]]:
    """Inbound requests per edge as the destination sidecars count them."""
    counts: dict[tuple[str, str], dict[str, float]] = {}
    for name in ("orders", "payments"):
        counts |= edge_counts_from_metrics(mesh.services[name].metrics(), "inbound")
    return counts


def _matches(mesh: Mesh) -> dict[tuple[str, str], dict[str, Any]] | None:
    own = _metrics(mesh)
    edges = _view_edges(mesh, "edges")
    for edge, counted in own.items():
        shown = edges.get(edge)
        # The destination's own report must be in (until then the edge is the source's view).
        if shown is None or shown["inbound"] is None or shown["measured_by"] != "inbound":
            return None
        if shown["requests"] != counted["requests"]:
            return None
        if shown["success_rate"] != round(counted["successes"] / counted["requests"], 4):
            return None
    return edges if set(own) == set(edges) else None


def test_mesh_stat_edges_and_top_match_the_sidecars_metrics(tmp_path: Path) -> None:
    with running_mesh(tmp_path) as mesh:
        web = mesh.services["web"].app_port
        statuses = [send(web, "GET", f"/orders/{n}") for n in range(12)]
        statuses += [send(web, "POST", "/checkout") for _ in range(5)]
        statuses += [send(web, "DELETE", f"/orders/{n}") for n in range(4)]
        assert statuses.count(403) == 4, statuses

        edges = wait_until("the mesh view to count what the sidecars count", lambda: _matches(mesh))
        web_orders, orders_payments = edges[("web", "orders")], edges[("orders", "payments")]
        assert web_orders["requests"] == 21
        assert web_orders["measured_by"] == "inbound"
        assert web_orders["denials"] == 4
        assert web_orders["denied_by"] == [{"decision": "deny", "policy": "no-delete", "count": 4}]
        assert web_orders["success_rate"] == 1.0  # a 403 is an answer; denials are apart
        assert orders_payments["requests"] == 5
        assert web_orders["latency_ms"]["p50"] is not None
        # The outbound side of web saw the same requests.
        outbound = edge_counts_from_metrics(mesh.services["web"].metrics(), "outbound")
        assert web_orders["outbound"]["requests"] == outbound[("web", "orders")]["requests"]

        done = mesh_ca_cli(
            "mesh", "stat", "--admin", mesh.ca_admin, "--window", "15m", "--output", "json"
        )
        services = {s["name"]: s for s in json.loads(done.stdout)["services"]}
        assert set(services) == {"web", "orders", "payments"}
        assert services["orders"]["inbound"]["requests"] == 21
        assert services["orders"]["health"] == "healthy"
        assert services["orders"]["callers"] == ["web"]

        table = mesh_ca_cli("mesh", "stat", "--admin", mesh.ca_admin, "--window", "15m")
        assert table.returncode == 0, table.stderr
        orders_row = next(
            line.split() for line in table.stdout.splitlines() if line.startswith("orders")
        )
        assert orders_row[:4] == ["orders", "healthy", "1/1", "21"], table.stdout

        top = mesh_ca_cli(
            "mesh", "top", "--admin", mesh.ca_admin, "--limit", "1", "--output", "json"
        )
        busiest = json.loads(top.stdout)["edges"]
        assert [(e["source"], e["destination"]) for e in busiest] == [("web", "orders")]

        # The denial is listed with a command that replays it.
        view = json.loads(
            mesh_ca_cli("mesh", "stat", "--admin", mesh.ca_admin, "--output", "json").stdout
        )
        assert "denials" not in view  # `stat` shows services; the full view has the samples
        denials = wait_until("denial samples", lambda: mesh_view(mesh, "15m")["denials"])
        sample = denials[0]
        assert (sample["principal"], sample["action"], sample["resource"]) == (
            "spiffe://example.org/ns/shop/svc/web",
            "DELETE",
            "orders",
        )
        assert sample["policies"] == ["no-delete"]
        argv = shlex.split(sample["explain"])
        assert argv[:3] == ["mesh-sidecar", "policy", "explain"]
        replay = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "DENY" in replay.stdout, replay.stdout + replay.stderr
        assert "no-delete" in replay.stdout
