"""docs/architecture.md, operations.md and security.md stay true where a machine can tell:
the dependency direction, the pure cores, the module paths and metric names they cite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("architecture.md", "operations.md", "security.md")
PURE_CORES = (
    "meshgate/identity",
    "mesh_ca/issuance",
    "mesh_ca/tokens.py",
    "mesh_ca/server/core.py",
    "mesh_ca/server/endpoints",
    "mesh_ca/server/routing.py",
    "mesh_ca/server/authenticate.py",
    "mesh_ca/server/authorize.py",
    "mesh_ca/server/signing.py",
    "mesh_ca/server/store_steps.py",
    "mesh_ca/server/wire.py",
    "mesh_ca/server/ratelimit.py",
    "mesh_ca/rotation/state.py",
    "mesh_ca/rotation/slots.py",
    "mesh_ca/rotation/roots.py",
    "mesh_ca/control/policy_set.py",
    "mesh_ca/control/registry.py",
    "mesh_ca/control/wire.py",
    "sidecar/identity/rotation.py",
    "sidecar/identity/credentials.py",
    "sidecar/identity/state.py",
    "meshgate/http",
    "sidecar/policy/decision.py",
    "sidecar/policy/loader.py",
    "sidecar/policy/store.py",
    "sidecar/policy/snapshot.py",
    "sidecar/authz/allow_list.py",
    "sidecar/authz/cedar.py",
    "sidecar/transport/svid_cache.py",
    "sidecar/observe/tracing.py",
    "sidecar/observe/report.py",
    "mesh_ca/control/mesh_window.py",
    "mesh_ca/control/histogram.py",
    "mesh_ca/control/mesh_view.py",
    "mesh_ca/control/report_intake.py",
    "mesh_ca/control/report_wire.py",
    "mesh_ca/mesh_check.py",
    "sidecar/outbound/endpoints.py",
    "sidecar/control/backoff.py",
)
_PATH_RE = re.compile(r"`((?:meshgate|mesh_ca|sidecar|scripts|tests|policies)/[A-Za-z0-9_./-]*)`")
_METRIC_RE = re.compile(r"`(meshgate_[a-z_]+)")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(rel: str) -> list[Path]:
    path = ROOT / rel
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def test_mesh_ca_never_imports_sidecar() -> None:
    for path in sorted((ROOT / "mesh_ca").rglob("*.py")):
        bad = {n for n in _imports(path) if n == "sidecar" or n.startswith("sidecar.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("core", PURE_CORES)
def test_pure_core_imports_no_trio_and_no_sockets(core: str) -> None:
    assert core in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for path in _files(core):
        bad = {n for n in _imports(path) if n.split(".")[0] in {"trio", "socket", "asyncio"}}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("doc", DOCS)
def test_cited_modules_exist(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    cited = set(_PATH_RE.findall(text))
    assert cited, doc
    missing = sorted(p for p in cited if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"{doc} cites {missing}"


def test_metric_names_in_operations_are_the_exported_ones() -> None:
    source = "".join(
        p.read_text(encoding="utf-8")
        for p in [*(ROOT / "sidecar").rglob("*.py"), *(ROOT / "mesh_ca").rglob("*.py")]
    )
    exported = set(re.findall(r'"(meshgate_[a-z_]+)"', source))
    documented = set(_METRIC_RE.findall((ROOT / "docs" / "operations.md").read_text()))
    # Counters are exported with `_total` appended when the code names them without it.
    unknown = {
        m for m in documented if m not in exported and m.removesuffix("_total") not in exported
    }
    assert not unknown, f"operations.md names metrics nobody exports: {sorted(unknown)}"
    undocumented = {m for m in exported if m not in documented and f"{m}_total" not in documented}
    assert not undocumented, f"exported but not in operations.md: {sorted(undocumented)}"
