"""`mesh-ca mesh` without a CA names the flag to give (exit 2); with an address nobody
listens on, it names the URL (exit 1), and `mesh-ca check` fails `ca_reachable`."""

from __future__ import annotations

import json
import socket

import pytest

from mesh_ca.cli import main as mesh_ca
from tests.test_cli_output_json import run

pytestmark = pytest.mark.integration


def test_mesh_views_need_a_ca_and_say_which_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_CA_ADMIN", raising=False)
    code, _, err = run(mesh_ca, "mesh", "stat")
    assert code == 2
    assert "--admin" in err
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run(mesh_ca, "mesh", "edges", "--admin", f"127.0.0.1:{port}")
    assert code == 1
    assert f"127.0.0.1:{port}/v1/mesh" in err
    code, out, _ = run(mesh_ca, "check", "--admin", f"127.0.0.1:{port}", "--output", "json")
    assert code == 1
    assert json.loads(out)["checks"][0]["name"] == "ca_reachable"
