"""Which build of `meshgate.http` loads (meshgate/native.py): the mypyc build only when its
stamp matches the sources and this interpreter, and ``MESHGATE_HTTP_BUILD`` decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import meshgate.http.head
from meshgate import native

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPILED = ROOT / "meshgate" / "http" / native.COMPILED_DIR_NAME


def _stamp(directory: Path, **changes: object) -> Path:
    stamp: dict[str, object] = {
        "interpreter": native.interpreter_tag(),
        "sources": native.source_hashes(),
    }
    stamp.update(changes)
    directory.mkdir(exist_ok=True)
    (directory / native.STAMP_NAME).write_text(json.dumps(stamp))
    return directory


@pytest.mark.unit
def test_pure_is_chosen_when_asked_whatever_is_built(tmp_path: Path) -> None:
    assert native.decide("pure", _stamp(tmp_path)) == ("pure", "MESHGATE_HTTP_BUILD=pure")


@pytest.mark.unit
def test_auto_takes_a_build_whose_stamp_matches(tmp_path: Path) -> None:
    build, reason = native.decide("auto", _stamp(tmp_path))
    assert build == "compiled"
    assert str(tmp_path) in reason


@pytest.mark.unit
def test_auto_falls_back_to_pure_without_a_build_or_with_a_stale_one(tmp_path: Path) -> None:
    assert native.decide("auto", tmp_path / "none") == (
        "pure",
        "no compiled build: run scripts/build_compiled.sh",
    )
    assert native._how_to_build(tmp_path / "absent.sh") == (
        "an installed package runs pure Python; a source checkout builds one"
    )
    edited = native.source_hashes()
    edited["http/head.py"] = "0" * 64  # head.py changed after the build
    build, reason = native.decide("auto", _stamp(tmp_path, sources=edited))
    assert (build, "the sources changed" in reason) == ("pure", True)
    build, reason = native.decide("auto", _stamp(tmp_path, interpreter="cpython-39-linux"))
    assert (build, reason.startswith("built for cpython-39-linux")) == ("pure", True)
    (tmp_path / native.STAMP_NAME).write_text("{not json")
    assert native.decide("auto", tmp_path)[0] == "pure"


@pytest.mark.unit
def test_compiled_on_demand_refuses_a_stale_build_and_unknown_values_are_refused(
    tmp_path: Path,
) -> None:
    edited = {**native.source_hashes(), "http/reader.py": "0" * 64}
    with pytest.raises(ImportError, match="MESHGATE_HTTP_BUILD=compiled but the sources changed"):
        native.decide("compiled", _stamp(tmp_path, sources=edited))
    with pytest.raises(ImportError, match="expected auto, pure or compiled"):
        native.decide("fast", tmp_path)


@pytest.mark.unit
def test_the_stamp_covers_every_compiled_module_and_the_modules_their_types_come_from() -> None:
    hashed = set(native.source_hashes())
    assert {f"http/{p.name}" for p in native.compiled_sources()} <= hashed
    assert "http/__init__.py" not in hashed  # it chooses the build, so it stays Python
    assert {"errors.py", "records.py", "identity/spiffe_id.py"} <= hashed


@pytest.mark.unit
def test_this_process_loaded_the_build_the_environment_asked_for() -> None:
    """scripts/test.sh runs the unit tests twice: pure (with coverage), then compiled."""
    origin = meshgate.http.head.__spec__.origin or ""
    wanted = os.environ.get(native.BUILD_ENV) or "auto"
    expected = native.decide(wanted, COMPILED)[0]
    assert native.http_build() == expected
    assert origin.endswith(".so" if expected == "compiled" else "head.py")


def _version(build: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mesh-sidecar"), "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, native.BUILD_ENV: build},
    )


@pytest.mark.integration
def test_the_version_says_whether_the_http_core_is_compiled() -> None:
    pure = _version("pure")
    assert pure.returncode == 0, pure.stderr
    assert pure.stdout.splitlines()[1] == "compiled: no (MESHGATE_HTTP_BUILD=pure)"
    compiled = _version("compiled")
    stale = native.stale_reason(COMPILED)
    if stale is None:  # built (scripts/build_compiled.sh, or the compiled step of test.sh)
        assert compiled.returncode == 0, compiled.stderr
        assert compiled.stdout.splitlines()[1] == "compiled: yes (meshgate.http, mypyc)"
    else:  # asked for and missing or stale: refused, never a silent fallback
        assert compiled.returncode != 0
        assert f"MESHGATE_HTTP_BUILD=compiled but {stale}" in compiled.stderr
