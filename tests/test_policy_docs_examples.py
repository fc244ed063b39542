"""The policy authoring guide cannot rot: its examples are policy directories that load and
pass their own test cases, its `cedar` blocks are those directories' text, and its
`mesh-sidecar policy` sessions print what the guide shows."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.policy import decide, load_snapshot
from sidecar.policy.cases import load_cases, run_cases
from sidecar.policy.cli import policy_main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "policies.md"
EXAMPLES = ROOT / "docs" / "examples" / "policies"
EXPECTED = {
    "allow-namespace",
    "deny-path",
    "audit-mode",
    "time-of-day",
    "group-membership",
    "tcp-connect",
}
NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
_FENCE_RE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_VERSION_RE = re.compile(r"version [0-9a-f]{16}|policy set [0-9a-f]{16}")


def _blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE_RE.findall(GUIDE.read_text()) if lang == language]


def test_every_example_named_in_the_guide_exists() -> None:
    found = {path.name for path in EXAMPLES.iterdir() if path.is_dir()}
    assert found == EXPECTED
    guide = GUIDE.read_text()
    for name in EXPECTED:
        assert f"(examples/policies/{name}/)" in guide, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_passes_its_test_cases(name: str) -> None:
    directory = EXAMPLES / name
    snapshot = load_snapshot(directory, NOW)
    cases = load_cases(directory / "tests.toml")
    assert {case.expect for case in cases} == {"allow", "deny"}, "test both outcomes"
    for result in run_cases(snapshot, cases):
        assert result.passed, (result.case.name, result.decision)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates_and_tests_through_the_cli(name: str) -> None:
    for command in ("validate", "test"):
        out, err = io.StringIO(), io.StringIO()
        assert policy_main([command, str(EXAMPLES / name)], out, err) == 0, err.getvalue()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_schema_is_the_shipped_one(name: str) -> None:
    shipped = (ROOT / "policies" / "mesh.cedarschema").read_text()
    assert (EXAMPLES / name / "mesh.cedarschema").read_text() == shipped


def test_every_cedar_block_is_the_text_of_an_example() -> None:
    sources = [path.read_text() for path in EXAMPLES.glob("*/*.cedar")]
    blocks = _blocks("cedar")
    assert len(blocks) >= len(EXPECTED)
    for block in blocks:
        assert any(block in source for source in sources), block


def test_every_json_block_is_an_example_entities_file() -> None:
    files = {path.read_text() for path in EXAMPLES.glob("*/entities.json")}
    blocks = _blocks("json")
    assert blocks
    for block in blocks:
        assert block in files, block


def test_audit_mode_example_forwards_what_it_would_deny() -> None:
    directory = EXAMPLES / "audit-mode"
    snapshot = load_snapshot(directory, NOW)
    for case in load_cases(directory / "tests.toml"):
        decision = decide(snapshot, case.request(), audit=True)
        assert decision.allowed is (case.expect == "allow")
        assert decision.forward
        assert decision.would_deny is (case.expect == "deny")
        enforcing = decide(snapshot, case.request())
        assert enforcing.forward is (case.expect == "allow")


def _sessions() -> list[tuple[list[str], str]]:
    sessions = []
    for block in _blocks("console"):
        command, _, output = block.partition("\n")
        assert command.startswith("$ mesh-sidecar policy "), command
        sessions.append((shlex.split(command)[3:], output))
    return sessions


@pytest.mark.parametrize(("argv", "expected"), _sessions(), ids=lambda v: str(v)[:60])
def test_guide_session_prints_what_the_guide_shows(
    argv: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    out, err = io.StringIO(), io.StringIO()
    code = policy_main(argv, out, err)
    assert err.getvalue() == ""
    assert code in (0, 1)
    # The version hash is shown for orientation; it changes with every edit of the example.
    got = _VERSION_RE.sub("VERSION", out.getvalue())
    assert got == _VERSION_RE.sub("VERSION", expected)


def test_the_mesh_sidecar_command_forwards_to_the_policy_tools() -> None:
    script = Path(sys.executable).parent / "mesh-sidecar"
    argv, expected = _sessions()[0]
    done = subprocess.run(
        [str(script), "policy", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _VERSION_RE.sub("VERSION", done.stdout) == _VERSION_RE.sub("VERSION", expected)


def test_guide_error_line_is_what_validate_prints(tmp_path: Path) -> None:
    # The guide's example error: deny-path with `context.path` misspelt in its forbid.
    broken = tmp_path / "deny-path"
    shutil.copytree(EXAMPLES / "deny-path", broken)
    cedar = broken / "orders.cedar"
    cedar.write_text(cedar.read_text().replace("context.path like", "context.pth like"))
    out, err = io.StringIO(), io.StringIO()
    assert policy_main(["validate", str(broken)], out, err) == 1
    (shown,) = _blocks("text")
    assert err.getvalue().splitlines()[0] == shown.strip()
