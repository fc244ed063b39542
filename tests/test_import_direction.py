"""The layering of docs/architecture.md, read from the source with `ast`: nothing imports upward.

    meshgate/   what both programs use          imports neither mesh_ca nor sidecar
    mesh_ca/    the CA                          never imports sidecar
    sidecar/    identity, transport, policy, authz, observe  <  inbound | outbound  <  app

Every import counts, including ones inside functions and under TYPE_CHECKING: a lazy
import upward is still a cycle waiting to happen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The process wiring at the top: only it may import itself.
WIRING = ("sidecar.app", "sidecar.workers", "sidecar.cli")
HANDLERS = ("sidecar.inbound", "sidecar.outbound")

# module prefix -> module prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "meshgate": ("mesh_ca", "sidecar"),
    "mesh_ca": ("sidecar",),
    "sidecar.identity": (
        *WIRING,
        *HANDLERS,
        "sidecar.transport",
        "sidecar.authz",
        "sidecar.policy",
        "sidecar.admission",
        "sidecar.runtime",
        "sidecar.connections",
    ),
    "sidecar.transport": (
        *WIRING,
        *HANDLERS,
        "sidecar.authz",
        "sidecar.policy",
        "sidecar.admission",
        "sidecar.runtime",
        "sidecar.connections",
    ),
    "sidecar.policy": (*WIRING, *HANDLERS, "sidecar.transport", "sidecar.authz"),
    "sidecar.authz": (*WIRING, *HANDLERS, "sidecar.transport"),
    "sidecar.observe": (*WIRING, *HANDLERS, "sidecar.authz", "sidecar.policy"),
    "sidecar.inbound": (*WIRING, "sidecar.outbound"),
    "sidecar.outbound": (*WIRING, "sidecar.inbound"),
    "sidecar.config": (*WIRING, *HANDLERS, "sidecar.observe", "sidecar.policy"),
    "sidecar.runtime": (*WIRING, *HANDLERS),
    "sidecar.connections": (*WIRING, *HANDLERS),
    "sidecar.admission": (*WIRING, *HANDLERS),
    "sidecar.preflight": (*WIRING, *HANDLERS),
    # The control-plane client fills outbound's endpoint tables; it never reaches the
    # request handlers themselves.
    "sidecar.control": (
        *WIRING,
        "sidecar.inbound",
        "sidecar.outbound.http",
        "sidecar.outbound.tcp",
        "sidecar.outbound.mesh_pool",
    ),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, package: str) -> set[str]:
    """Absolute module names imported, with `from a import b` counted as a.b too (b may be
    a module); relative imports resolved against `package`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _sources() -> list[Path]:
    return sorted(
        p
        for top in ("meshgate", "mesh_ca", "sidecar")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def _violations(module: str, source: str, *, is_package: bool = False) -> set[str]:
    imported = _imports(source, module if is_package else module.rpartition(".")[0])
    bad: set[str] = set()
    for prefix, forbidden in FORBIDDEN.items():
        if _under(module, prefix):
            bad |= {n for n in imported for f in forbidden if _under(n, f)}
    if _under(module, "sidecar") and not any(_under(module, w) for w in WIRING):
        bad |= {n for n in imported for w in WIRING if _under(n, w)}
    return bad


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_upward(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    bad = _violations(_module_name(path), source, is_package=path.name == "__init__.py")
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} (see FORBIDDEN)"


def test_every_folder_says_what_it_is_for() -> None:
    for init in sorted(ROOT.glob("*/**/__init__.py")):
        top = init.relative_to(ROOT).parts[0]
        if top not in {"meshgate", "mesh_ca", "sidecar"}:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init.relative_to(ROOT)} has no docstring saying what the folder holds"


def test_the_checker_sees_an_upward_import() -> None:
    """The rules are not vacuous: a transport module importing a handler is caught, so is a
    lazy `from sidecar import app` inside a function, and so is a relative import."""
    source = "import sidecar.inbound.http\n\ndef f() -> None:\n    from sidecar import app\n"
    assert _violations("sidecar.transport.probe", source) == {"sidecar.inbound.http", "sidecar.app"}
    assert _violations("meshgate.http.probe", "from ...mesh_ca import tls\n") == {
        "mesh_ca",
        "mesh_ca.tls",
    }
    assert _violations("sidecar.inbound.probe", "from sidecar.transport import relay\n") == set()


def test_every_top_package_is_checked() -> None:
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert tops == {"meshgate", "mesh_ca", "sidecar"}, tops
    checked = {_module_name(p).split(".")[0] for p in _sources()}
    assert checked == tops
