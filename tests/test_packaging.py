"""What an installed meshgate offers besides the proxies: `--version` on both CLIs, the Cedar
schema shipped in the package (the same bytes as policies/mesh.cedarschema), and
`mesh-sidecar policy init`, whose directory validates and tests green and which never
overwrites an author's files. (scripts/test.sh also installs the built wheel alone.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.policy.starter import shipped_schema

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(program: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / program), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_the_shipped_schema_is_the_repository_schema() -> None:
    assert shipped_schema() == (ROOT / "policies" / "mesh.cedarschema").read_text("utf-8")


@pytest.mark.parametrize("program", ["mesh-ca", "mesh-sidecar"])
def test_both_clis_print_their_version(program: str) -> None:
    done = _run(program, "--version")
    assert done.returncode == 0
    first, build = done.stdout.splitlines()
    name, version = first.split()
    assert name == program
    assert version[0].isdigit()
    assert build.startswith(("compiled: yes", "compiled: no ("))  # meshgate/native.py


def test_policy_init_starts_a_directory_that_validates_and_tests_green(tmp_path: Path) -> None:
    done = _run("mesh-sidecar", "policy", "init", "policies", "--service", "orders", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "policies").iterdir())
    assert names == ["entities.json", "mesh.cedarschema", "orders.cedar", "tests.toml"]
    validated = _run("mesh-sidecar", "policy", "validate", "policies", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    tested = _run("mesh-sidecar", "policy", "test", "policies", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout
    assert "2 passed, 0 failed" in tested.stdout


def test_policy_init_never_overwrites_and_refuses_a_bad_service_name(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    mine = tmp_path / "policies" / "orders.cedar"
    mine.write_text("// mine\n")
    done = _run("mesh-sidecar", "policy", "init", "policies", "--service", "orders", cwd=tmp_path)
    assert done.returncode == 1
    assert "orders.cedar: already exists; nothing was written" in done.stderr
    assert mine.read_text() == "// mine\n"
    assert sorted(p.name for p in (tmp_path / "policies").iterdir()) == ["orders.cedar"]
    bad = _run("mesh-sidecar", "policy", "init", "other", "--service", "../x", cwd=tmp_path)
    assert bad.returncode == 1
    assert "--service '../x'" in bad.stderr
    assert not (tmp_path / "other").exists()
