"""The configuration reference cannot rot: it is generated from the models, `--check` fails
when it is stale, and its example configs load with the real loaders."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import mesh_ca.config
import sidecar.config
from tests.pki import TestPki as Pki

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_reference.py"
REFERENCE = ROOT / "docs" / "configuration.md"
_FENCE_RE = re.compile(r"^```toml\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def _toml_blocks() -> list[str]:
    return _FENCE_RE.findall(REFERENCE.read_text(encoding="utf-8"))


def test_reference_is_up_to_date_with_the_models() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator()
    stale = tmp_path / "configuration.md"
    stale.write_text(REFERENCE.read_text(encoding="utf-8").replace("`workers`", "`wrkers`"))
    monkeypatch.setattr(gen, "OUTPUT", stale)
    assert gen.main(["--check"]) == 1
    monkeypatch.setattr(gen, "OUTPUT", tmp_path / "missing.md")
    assert gen.main(["--check"]) == 1


def test_every_key_of_both_models_has_a_row() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    keys = _generator().all_keys()
    paths = {key.path for _, key in keys}
    for path in (
        "identity.spiffe_id",
        "outbound[].spiffe_ids",
        "policy.audit",
        "timeouts.header_timeout_seconds",
        "issuance.default_ttl_seconds",
        "store.kind",
        "trust_domain",
    ):
        assert path in paths, path
    for _, key in keys:
        assert f"| `{key.path}` | " in text, key.path
    assert "| `identity.spiffe_id` | " in text
    assert "**required**" in text


def test_sidecar_example_loads_http_mode_with_policy(tmp_path: Path) -> None:
    sidecar_block = next(b for b in _toml_blocks() if "[identity]" in b)
    path = tmp_path / "sidecar.toml"
    path.write_text(sidecar_block, encoding="utf-8")
    config = sidecar.config.load_config(path)
    assert config.inbound is not None
    assert config.inbound.protocol == "http"
    assert config.policy is not None
    assert config.policy.dir == tmp_path / "policies"
    assert [o.protocol for o in config.outbound] == ["http"]
    # check-config also checks the files the example names: give it a bundle and policies.
    (tmp_path / "bundle.pem").write_bytes(Pki().bundle_pem())
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_ca_example_loads_and_a_misspelt_key_is_named(tmp_path: Path) -> None:
    ca_block = next(b for b in _toml_blocks() if "trust_domain" in b)
    path = tmp_path / "ca.toml"
    path.write_text(ca_block, encoding="utf-8")
    config = mesh_ca.config.load_config(path)
    assert config.trust_domain == "example.org"
    assert config.server.admin_ids
    # The same text with one key misspelt is refused, naming the key: the loader is strict.
    path.write_text(ca_block.replace("rate_limit_burst", "rate_limit_brust"), encoding="utf-8")
    with pytest.raises(mesh_ca.config.ConfigError, match=r"server\.rate_limit_brust"):
        mesh_ca.config.load_config(path)
