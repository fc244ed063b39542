"""The shipped Prometheus alert rules and Grafana dashboard (docs/monitoring/): valid,
unit-tested with promtool, and naming only metrics that the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "docs" / "monitoring"
RULES = MONITORING / "meshgate-alerts.yml"
RULE_TESTS = MONITORING / "meshgate-alerts.test.yml"
DASHBOARD = MONITORING / "meshgate-dashboard.json"
_NAME = re.compile(r"\bmeshgate_[a-z_]+\b")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def _exported() -> set[str]:
    """Metric names as the code declares them (counters without `_total` may be either)."""
    source = "".join(
        p.read_text(encoding="utf-8")
        for p in [*(ROOT / "sidecar").rglob("*.py"), *(ROOT / "mesh_ca").rglob("*.py")]
    )
    return set(re.findall(r'"(meshgate_[a-z_]+)"', source))


def _unknown(names: set[str], exported: set[str]) -> set[str]:
    def known(name: str) -> bool:
        bases = {name} | {name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)}
        return any(b in exported or f"{b}_total" in exported for b in bases)

    return {n for n in names if not known(n)}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def test_the_name_check_catches_a_metric_nobody_exports() -> None:
    exported = _exported()
    assert _unknown({"meshgate_requests_total", "meshgate_ca_issuances_total"}, exported) == set()
    bucket = "meshgate_request_duration_seconds_bucket"
    assert _unknown({bucket, "meshgate_nope_total"}, exported) == {"meshgate_nope_total"}


def test_the_dashboard_is_json_whose_panels_query_exported_metrics_only() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = _panels(dashboard)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(_NAME.findall(target["expr"]))
            # `up` is Prometheus's own series for a scrape target (the CA's admin listener).
            assert names or target["expr"].startswith("up{"), panel["title"]
            assert not _unknown(names, _exported()), panel["title"]
    used = {n for e in _exprs() for n in _NAME.findall(e)}
    for edge_metric in ("meshgate_denials_total", "meshgate_handshake_failures_total"):
        assert edge_metric in used


def test_the_alert_rules_name_exported_metrics_only() -> None:
    names = set(_NAME.findall(RULES.read_text(encoding="utf-8")))
    names -= {"meshgate_sidecar", "meshgate_ca"}  # group names, not metrics
    assert names
    assert not _unknown(names, _exported())


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/lib/setup.sh installs Debian's prometheus"
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.interop
def test_promtool_checks_the_alert_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


@pytest.mark.interop
def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.interop
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses recording rules: one per panel query, Grafana's interval made concrete.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_exprs()):
        concrete = expr.replace("$__rate_interval", "5m")
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(concrete)}"]
    (tmp_path / "queries.yml").write_text("\n".join(lines) + "\n")
    result = _promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
