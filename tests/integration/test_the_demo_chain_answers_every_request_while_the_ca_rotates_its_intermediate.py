"""The demo chain (client → web → orders → payments, http, every hop through sidecars on the
control plane) answers every request while the CA rotates its intermediate through every
step: prepare, activate, retire, twice over.

The CA's intermediates live 60 s here (`SHORT_ROTATION`) and its SVIDs 30 s, so within
about two minutes each sidecar renews onto leaves of a new intermediate while its peers
still hold leaves of the old one, in both directions of every hop.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.report_mesh import mesh_ca_cli, running_mesh, send
from tests.integration.rotation import SHORT_ROTATION

pytestmark = pytest.mark.integration

CALLS = (("GET", "/orders/7"), ("POST", "/checkout"))  # web → orders, web → orders → payments


def _rotated_twice(actions: list[str]) -> bool:
    return actions.count("intermediate activate") >= 2 and "intermediate retire" in actions


def _audit_entries(work: Path) -> list[tuple[float, str]]:
    """(POSIX time, action) of `mesh-ca root log`, oldest first."""
    done = mesh_ca_cli("root", "log", "--dir", str(work / "ca"), "--json")
    assert done.returncode == 0, done.stderr
    return [
        (datetime.fromisoformat(entry["at"]).timestamp(), entry["action"])
        for entry in reversed(json.loads(done.stdout))
    ]


def _audit(work: Path) -> list[str]:
    return [action for _, action in _audit_entries(work)]


def test_every_request_through_the_demo_chain_succeeds_across_intermediate_rotations(
    tmp_path: Path,
) -> None:
    with running_mesh(tmp_path, leaf_ttl="30s", ca_toml=SHORT_ROTATION) as mesh:
        web = mesh.services["web"].app_port
        sent, actions = 0, _audit(mesh.work)
        sent_at: list[float] = []  # POSIX time of every request, to place it among the steps
        failures: list[tuple[float, str, str, int | str]] = []
        deadline = time.monotonic() + 240
        extra = 5  # rounds after the last step was seen, so traffic follows it too
        while extra > 0:
            if _rotated_twice(actions):
                extra -= 1
            assert time.monotonic() < deadline, f"rotation steps so far: {actions}"
            for method, path in CALLS:
                status: int | str
                try:
                    status = send(web, method, path)
                except OSError as exc:
                    status = f"{type(exc).__name__}: {exc}"
                sent += 1
                sent_at.append(time.time())
                if status != 200:
                    failures.append((time.monotonic(), method, path, status))
            if sent % 20 == 0:
                actions = _audit(mesh.work)
            time.sleep(0.05)
        assert failures == [], failures[:10]
        # Traffic spanned the whole rotation: requests went before the first activation,
        # between the two, and after the second (each window lasts 15 s or more). How many
        # depends on the machine's load, so the count is not the measure.
        activations = [at for at, action in _audit_entries(mesh.work) if "activate" in action]
        edges = [sent_at[0], *activations[:2], sent_at[-1]]
        for start, end in itertools.pairwise(edges):
            within = sum(1 for at in sent_at if start <= at < end)
            assert within >= 5, (sent, start, end, within)
        assert actions[0] == "seed"
        assert actions.count("intermediate prepare") >= 2, actions
