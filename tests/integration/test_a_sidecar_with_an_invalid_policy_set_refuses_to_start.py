"""An inbound sidecar whose policy directory does not load exits 1 at once, naming the
file, line and policy; it never listens, so nothing is served without policies."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import ROOT

pytestmark = pytest.mark.integration


def test_a_sidecar_with_an_invalid_policy_set_refuses_to_start(tmp_path: Path) -> None:
    pair = http_sidecar_pair(Pki(), tmp_path, app_port=1)
    policy = tmp_path / "policies" / "catalog.cedar"
    policy.write_text(
        policy.read_text() + '\n@id("broken")\npermit (principal, action resource);\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "run", "--config", str(pair.b_config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 6, done.stderr  # the policy directory (meshgate.exit_codes)
    assert "policy.dir = " in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "catalog.cedar" in done.stderr
    assert "broken" in done.stderr
    with socket.socket() as probe:  # the inbound port was never bound
        assert probe.connect_ex(("127.0.0.1", pair.b_inbound)) != 0
