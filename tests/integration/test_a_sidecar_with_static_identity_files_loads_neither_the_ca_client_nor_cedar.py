"""A sidecar with static identity files, no control plane and no policy set loads neither
the CA client and the control plane's wire models nor the Cedar library.

Those are for sidecars that have a CA or Cedar policies; importing them anyway cost an
outbound-only sidecar ~6 MB of idle RSS. A real `sidecar.app.run` in its own interpreter
serves until its first SVID is live, then lists what it imported and drains.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pki import TestPki as Pki
from tests.procs import ROOT, free_port, write_config, write_identity

pytestmark = pytest.mark.integration

_RUN = """
import json, sys, trio
from sidecar.app import run
from sidecar.config import load_config

async def main() -> None:
    drain = trio.Event()
    def started() -> None:
        print(json.dumps(sorted(sys.modules)), flush=True)
        drain.set()
    await run(load_config(sys.argv[1]), handle_signals=False, drain=drain, on_started=started)

trio.run(main)
"""

_CA_OR_CEDAR = ("mesh_ca.client", "mesh_ca.api", "mesh_ca.control.wire", "cedarpy")


def test_a_sidecar_with_static_identity_files_loads_neither_the_ca_client_nor_cedar(
    tmp_path: Path,
) -> None:
    pki = Pki()
    our_id, peer_id = pki.spiffe_id("shop", "frontend"), pki.spiffe_id("shop", "catalog")
    config = write_config(
        tmp_path / "a.toml",
        {
            "identity": {
                "spiffe_id": str(our_id),
                **write_identity(pki, pki.leaf(our_id), tmp_path),
            },
            "outbound": [
                {
                    "listen": f"127.0.0.1:{free_port()}",
                    "service": "catalog",
                    "endpoints": [f"127.0.0.1:{free_port()}"],
                    "spiffe_ids": [str(peer_id)],
                    "protocol": "http",
                }
            ],
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
        },
    )
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout.splitlines()[0]))
    assert "sidecar.outbound.http" in modules  # it did serve
    assert not modules.intersection(_CA_OR_CEDAR)
