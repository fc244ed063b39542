"""SVIDs from the real ``mesh-ca issue`` are accepted by py-spiffe and by ``openssl verify``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

SID = "spiffe://interop.example/ns/shop/svc/checkout"
pytestmark = pytest.mark.interop


# The installed console script, as an operator runs it.
MESH_CA = Path(sys.executable).parent / "mesh-ca"


def _mesh_ca(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MESH_CA), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("interop")
    ca, out = base / "ca", base / "svid"
    _mesh_ca("init", "--trust-domain", "interop.example", "--dir", str(ca))
    _mesh_ca("issue", "--dir", str(ca), "--spiffe-id", SID, "--out", str(out), "--ttl", "30m")
    return ca, out


def test_py_spiffe_loads_the_issued_svid(issued: tuple[Path, Path]) -> None:
    # py-spiffe is imported here, not at the top: the minimum-versions run of the unit tests
    # (scripts/test.sh) collects this module without it (it needs a newer cryptography).
    from spiffe import X509Svid

    _, out = issued
    svid = X509Svid.load(out / "svid.pem", out / "svid.key", serialization.Encoding.PEM)
    assert str(svid.spiffe_id) == SID
    assert len(svid.cert_chain) == 2
    parsed = X509Svid.parse((out / "svid.pem").read_bytes(), (out / "svid.key").read_bytes())
    assert str(parsed.spiffe_id) == SID


@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_strict_verify_accepts_the_chain(issued: tuple[Path, Path], purpose: str) -> None:
    ca, out = issued
    # The intermediate as sent in the handshake: the second certificate of svid.pem.
    result = subprocess.run(
        [
            "openssl", "verify", "-x509_strict", "-purpose", purpose,
            "-CAfile", str(out / "bundle.pem"),
            "-untrusted", str(ca / "intermediate.pem"),
            str(out / "svid.pem"),
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_openssl_refuses_the_chain_against_another_ca(
    issued: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = issued
    other = tmp_path / "other"
    _mesh_ca("init", "--trust-domain", "interop.example", "--dir", str(other))
    result = subprocess.run(
        [
            "openssl", "verify", "-x509_strict", "-purpose", "sslclient",
            "-CAfile", str(other / "bundle.pem"),
            "-untrusted", str(other / "intermediate.pem"),
            str(out / "svid.pem"),
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_key_file_is_0600_and_bundle_is_the_ca_bundle(issued: tuple[Path, Path]) -> None:
    ca, out = issued
    assert stat.S_IMODE(os.stat(out / "svid.key").st_mode) == 0o600
    assert (out / "bundle.pem").read_bytes() == (ca / "bundle.pem").read_bytes()
    for key in ("root.key", "intermediate.key"):
        assert stat.S_IMODE(os.stat(ca / key).st_mode) == 0o600
