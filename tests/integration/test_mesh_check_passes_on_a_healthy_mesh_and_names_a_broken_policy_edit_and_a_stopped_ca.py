"""`mesh-ca check` passes (exit 0, every line ✔) on the healthy demo mesh; after a broken
edit of the central policy directory it fails with the file and line and a hint to fix it
(the CA refuses to publish it and the sidecars keep enforcing the last good set); once the
CA is stopped it fails with a hint to start it.

Real processes: the CA (the control plane) with its loopback admin listener, three apps,
three reporting sidecars that take their policies from it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.report_mesh import (
    Mesh,
    mesh_ca_cli,
    mesh_view,
    reporting,
    running_mesh,
    wait_until,
)

pytestmark = pytest.mark.integration


def _check(admin: str) -> tuple[int, dict[str, Any]]:
    done = mesh_ca_cli("check", "--admin", admin, "--output", "json")
    return done.returncode, json.loads(done.stdout)


def _all_ready(mesh: Mesh) -> bool:
    view = reporting(mesh)
    return view is not None and all(i["ready"] for i in view["instances"] if not i["stale"])


def _failed(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in document["checks"] if not c["ok"]}


def test_check_passes_then_names_a_broken_policy_then_a_stopped_ca(tmp_path: Path) -> None:
    with running_mesh(tmp_path) as mesh:
        # A sidecar's first report may precede its first central policy set (not ready).
        wait_until("every sidecar to report ready", lambda: _all_ready(mesh))
        table = mesh_ca_cli("check", "--admin", mesh.ca_admin)
        assert table.returncode == 0, table.stdout + table.stderr
        lines = [line for line in table.stdout.splitlines() if line.startswith(("✔", "✘"))]
        assert len(lines) >= 9
        assert all(line.startswith("✔") for line in lines), table.stdout
        assert "all checks passed" in table.stdout

        enforced = {i["policy_version"] for i in mesh_view(mesh)["instances"]}

        # A broken edit of the central directory: the CA refuses to publish it, the
        # sidecars keep enforcing the last good set, and check names the file and line.
        with (mesh.work / "policies" / "shop.cedar").open("a") as policy:
            policy.write("\npermit(principal, action, resource\n")

        def policy_failure() -> dict[str, Any] | None:
            code, document = _check(mesh.ca_admin)
            failed = _failed(document)
            return failed["policies"] if code == 1 and set(failed) == {"policies"} else None

        failure = wait_until("check to name the refused policy edit", policy_failure)
        [line] = failure["details"]
        assert line.startswith("control plane (serving published v1): "), line
        assert "shop.cedar:" in line, line
        assert "fix the policy files" in failure["hint"]
        assert "mesh-sidecar policy validate" in failure["hint"]
        view = mesh_view(mesh)
        assert {i["policy_version"] for i in view["instances"]} == enforced
        assert all(i["ready"] and not i["policy_error"] for i in view["instances"]), view

        mesh.processes["ca"].send_signal(signal.SIGTERM)
        mesh.processes["ca"].wait(timeout=30)
        stopped = mesh_ca_cli("check", "--admin", mesh.ca_admin)
        assert stopped.returncode == 1
        assert f"✘ ca_reachable: the CA's admin listener at {mesh.ca_admin} does not answer" in (
            stopped.stdout
        )
        assert f"hint: is `mesh-ca serve --admin-listen {mesh.ca_admin}` running?" in stopped.stdout
        stat = mesh_ca_cli("mesh", "stat", "--admin", mesh.ca_admin)
        assert stat.returncode == 1
        assert "Connection refused" in stat.stderr
