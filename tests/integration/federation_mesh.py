"""Independent meshes for the federation tests: one `mesh-ca init` CA per trust domain,
``[[federation.trust_domains]]`` written into ca.toml, sidecars bootstrapping from their
own CA, and an http client that goes through an outbound sidecar. Synchronous: the CAs,
sidecars and the app all run as processes or threads; waits are on conditions with a
deadline."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh_ca.ca_dir import LoadedCa, load_ca_dir
from meshgate.identity import SpiffeId
from tests.ca_server_process import CaServer
from tests.integration.ca_mesh import mesh_ca, write_token
from tests.procs import ROOT

SCHEMA = ROOT / "docs" / "examples" / "policies" / "allow-namespace" / "mesh.cedarschema"


def init_domain_ca(directory: Path, trust_domain: str) -> LoadedCa:
    mesh_ca("init", "--trust-domain", trust_domain, "--dir", str(directory))
    return load_ca_dir(directory)


def federate(
    ca: LoadedCa,
    *others: tuple[LoadedCa, int],
    check_seconds: int = 1,
    refresh_seconds: int | None = None,
) -> None:
    """Append a [federation] table to `ca`'s ca.toml trusting each other CA, fetched from
    its https_spiffe bundle endpoint (``/v1/bundle`` on the port it will listen on) and
    bootstrapped with its ``bundle.spiffe.json``. No others: an empty federation."""
    text = (ca.path / "ca.toml").read_text().split("\n[federation]")[0].rstrip() + "\n"
    text += f"\n[federation]\ncheck_seconds = {check_seconds}\n"
    for other, port in others:
        td = other.trust_domain.name
        text += (
            "\n[[federation.trust_domains]]\n"
            f'trust_domain = "{td}"\n'
            f'bundle_file = "{other.path / "bundle.spiffe.json"}"\n'
            f'bundle_endpoint_url = "https://127.0.0.1:{port}/v1/bundle"\n'
            f'endpoint_spiffe_id = "spiffe://{td}/mesh/ca"\n'
        )
        if refresh_seconds is not None:
            text += f"refresh_seconds = {refresh_seconds}\n"
    tmp = ca.path / "ca.toml.new"
    tmp.write_text(text)
    tmp.replace(ca.path / "ca.toml")  # the running CA never reads half a file


def identity(
    ca: LoadedCa, server: CaServer, spiffe_id: SpiffeId, directory: Path
) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "token"
    write_token(ca, spiffe_id, token_file)
    return {
        "spiffe_id": str(spiffe_id),
        "bundle_file": str(ca.path / "bundle.pem"),
        "ca_addresses": [server.address],
        "state_dir": str(directory / "state"),
        "token_file": str(token_file),
        "poll_interval_seconds": 1,
    }


def write_policies(directory: Path, cedar: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mesh.cedarschema").write_text(SCHEMA.read_text())
    (directory / "entities.json").write_text("[]\n")
    (directory / "orders.cedar").write_text(cedar)
    return directory


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, str]:
    """GET through an outbound sidecar on 127.0.0.1:`port`; (status, body)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        if own:
            conn.close()


def until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.2) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
