"""The demo chain (client → web → orders → payments, http, every hop through sidecars on the
control plane) answers every request while the CA rotates its intermediate through every
step: prepare, activate, retire, twice over.

The CA's intermediates live 60 s here (`SHORT_ROTATION`) and its SVIDs 30 s, so within
about two minutes each sidecar renews onto leaves of a new intermediate while its peers
still hold leaves of the old one, in both directions of every hop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.report_mesh import mesh_ca_cli, running_mesh, send
from tests.integration.rotation import SHORT_ROTATION

pytestmark = pytest.mark.integration

CALLS = (("GET", "/orders/7"), ("POST", "/checkout"))  # web → orders, web → orders → payments


def _rotated_twice(actions: list[str]) -> bool:
    return actions.count("intermediate activate") >= 2 and "intermediate retire" in actions


def _audit(work: Path) -> list[str]:
    done = mesh_ca_cli("root", "log", "--dir", str(work / "ca"), "--json")
    assert done.returncode == 0, done.stderr
    return [entry["action"] for entry in reversed(json.loads(done.stdout))]


def test_every_request_through_the_demo_chain_succeeds_across_intermediate_rotations(
    tmp_path: Path,
) -> None:
    with running_mesh(tmp_path, leaf_ttl="30s", ca_toml=SHORT_ROTATION) as mesh:
        web = mesh.services["web"].app_port
        sent, actions = 0, _audit(mesh.work)
        failures: list[tuple[float, str, str, int | str]] = []
        deadline = time.monotonic() + 240
        while not (
            actions.count("intermediate activate") >= 2 and "intermediate retire" in actions
        ):
            assert time.monotonic() < deadline, f"rotation steps so far: {actions}"
            for method, path in CALLS:
                status: int | str
                try:
                    status = send(web, method, path)
                except OSError as exc:
                    status = f"{type(exc).__name__}: {exc}"
                sent += 1
                if status != 200:
                    failures.append((time.monotonic(), method, path, status))
            if sent % 20 == 0:
                actions = _audit(mesh.work)
            time.sleep(0.05)
        assert failures == [], failures[:10]
        assert sent >= 200, sent
        assert actions[0] == "seed"
        assert actions.count("intermediate prepare") >= 2, actions
