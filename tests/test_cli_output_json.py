"""Commands that list things print JSON with `--output json`; both CLIs say their version."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from mesh_ca.cli import main as mesh_ca
from sidecar.cli import main as mesh_sidecar
from tests.procs import ROOT

pytestmark = pytest.mark.unit


def run(main: object, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))  # type: ignore[operator]
    return int(code), out.getvalue(), err.getvalue()


def test_policy_validate_and_test_print_json() -> None:
    code, out, _ = run(
        mesh_sidecar, "policy", "validate", str(ROOT / "policies"), "--output", "json"
    )
    assert code == 0
    assert json.loads(out)["valid"] is True
    code, out, _ = run(mesh_sidecar, "policy", "test", str(ROOT / "policies"), "--output", "json")
    document = json.loads(out)
    assert code == 0
    assert document["failed"] == 0
    assert document["passed"] == len(document["cases"]) > 0


def test_mesh_ca_status_prints_json(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert run(mesh_ca, "init", "--trust-domain", "example.org", "--dir", str(ca))[0] == 0
    code, out, _ = run(mesh_ca, "status", "--dir", str(ca), "--output", "json")
    assert code == 0
    assert json.loads(out)["trust_domain"] == "example.org"


@pytest.mark.parametrize(("main", "prog"), [(mesh_ca, "mesh-ca"), (mesh_sidecar, "mesh-sidecar")])
def test_both_clis_say_their_version(main: object, prog: str) -> None:
    code, out, _ = run(main, "--version")
    assert code == 0
    assert out.startswith(f"{prog} ")
    assert out.split()[1][0].isdigit()
