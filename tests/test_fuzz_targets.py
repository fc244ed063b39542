"""The fuzz targets (tests/fuzz/targets.py) as part of the suite: the committed corpus
replayed (every input a fuzzer once found stays a regression test), hypothesis-made inputs
for each target, and a short coverage-guided run of scripts/fuzz.py (atheris)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.strategies import CORPUS, inputs_for
from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[1]
SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_committed_corpus_passes_every_invariant(target: str) -> None:
    inputs = sorted((CORPUS / target).iterdir())
    assert inputs, f"no corpus for {target}"
    for path in inputs:
        TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_hypothesis_inputs_pass_every_invariant(target: str) -> None:
    @SOME
    @given(inputs_for(target))
    def run(data: bytes) -> None:
        TARGETS[target](data)

    run()


@pytest.mark.integration  # starts scripts/fuzz.py processes
def test_a_short_coverage_guided_run_of_every_target_finds_nothing(tmp_path: Path) -> None:
    fuzz = ROOT / "scripts" / "fuzz.py"
    done = subprocess.run(
        [sys.executable, str(fuzz), "all", "--seconds", "1", "--work", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count(": ok after") == len(TARGETS), done.stderr[-2000:]
    # Every package a target reaches is instrumented: one left out is fuzzed blind.
    instrumented = set(re.findall(r"INFO: Instrumenting (\w+)\n", done.stderr))
    assert _packages_the_targets_import() <= instrumented, instrumented


def _packages_the_targets_import() -> set[str]:
    tree = ast.parse((ROOT / "tests" / "fuzz" / "targets.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    ours = {"meshgate", "sidecar", "mesh_ca"}
    return {m.split(".")[0] for m in modules} & ours
