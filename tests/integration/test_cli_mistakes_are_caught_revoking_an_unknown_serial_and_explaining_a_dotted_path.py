"""Two operator mistakes the CLIs catch: ``mesh-ca revoke --serial`` of a serial the CA never
issued fails (and records nothing) unless ``--force``; ``mesh-sidecar policy explain``
normalizes ``--path`` exactly as the live sidecar does, so ``/orders/../admin`` is decided
as ``/admin`` (denied), and prints the path it decided on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.ca_mesh import init_ca, mesh_ca
from tests.procs import ROOT

pytestmark = pytest.mark.integration

WEB = "spiffe://example.org/ns/shop/svc/web"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _revocations(ca_dir: Path) -> list[dict[str, object]]:
    return list(json.loads(mesh_ca("status", "--dir", str(ca_dir), "--json"))["revocations"])


def test_revoking_a_serial_the_ca_never_issued_fails_unless_forced(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    done = _run("mesh_ca.cli", "revoke", "--dir", str(ca.path), "--serial", "abc123")
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "--serial abc123: this CA never issued" in done.stderr
    assert _revocations(ca.path) == []

    forced = _run("mesh_ca.cli", "revoke", "--dir", str(ca.path), "--serial", "abc123", "--force")
    assert forced.returncode == 0, forced.stderr
    assert [r["serial"] for r in _revocations(ca.path)] == ["abc123"]

    # A serial the CA did issue needs no --force.
    mesh_ca(
        *("issue", "--dir", str(ca.path), "--spiffe-id", WEB, "--out", str(tmp_path / "web")),
    )
    store = ca.open_store()
    try:
        serial = format(store.issued()[0].serial, "x")
    finally:
        store.close()
    issued = _run("mesh_ca.cli", "revoke", "--dir", str(ca.path), "--serial", serial)
    assert issued.returncode == 0, issued.stderr


@pytest.mark.parametrize(
    ("path", "decided", "verdict", "code"),
    [
        ("/orders/../admin", "/admin", "DENY", 1),
        ("/orders//7/./items", "/orders/7/items", "ALLOW", 0),
        ("/orders/%2e%2e/admin", "/admin", "DENY", 1),
    ],
)
def test_policy_explain_decides_on_the_path_the_sidecar_would(
    path: str, decided: str, verdict: str, code: int
) -> None:
    done = _run(
        *("sidecar.cli", "policy", "explain", str(ROOT / "policies")),
        *("--principal", WEB, "--action", "GET", "--resource", "orders", "--path", path),
    )
    assert done.returncode == code, done.stdout + done.stderr
    assert f"path: {decided} (normalized from {path})" in done.stdout
    assert f"decision: {verdict}" in done.stdout


def test_policy_explain_rejects_what_the_sidecar_rejects_before_any_policy() -> None:
    done = _run(
        *("sidecar.cli", "policy", "explain", str(ROOT / "policies")),
        *("--principal", WEB, "--action", "GET", "--resource", "orders"),
        *("--path", "/orders/%2F/x"),
    )
    assert done.returncode == 1
    assert "rejected before any policy is asked: 400" in done.stdout
