"""The test cases shipped in `policies/tests.toml` hold against the shipped policies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.policy import load_snapshot
from sidecar.policy.cases import PolicyCase, load_cases, run_cases

POLICIES = Path(__file__).resolve().parent.parent / "policies"
CASES = load_cases(POLICIES / "tests.toml")


def test_cases_cover_allow_and_deny() -> None:
    assert {case.expect for case in CASES} == {"allow", "deny"}
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_shipped_case(case: PolicyCase) -> None:
    snapshot = load_snapshot(POLICIES, datetime.now(UTC))
    (result,) = run_cases(snapshot, [case])
    assert result.passed, (result.decision, snapshot.describe(result.decision.policy_ids))
