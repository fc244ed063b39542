"""The demo mesh (CA, web → orders → payments, apps and sidecars) for reporting tests.

Built from `scripts/demo/demo_mesh.py` (the processes the demo runs, on free loopback
ports): the CA serves its loopback admin listener and every sidecar reports each second.
`running_mesh` yields once every sidecar is ready and stops every process it started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tests.procs import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "demo"))
from demo_mesh import (
    CONTROL_TOML,
    SERVICES,
    TRUST_DOMAIN,
    Mesh,
    run_tool,
    sidecar_toml,
    spiffe_id,
)

__all__ = [
    "SERVICES",
    "Mesh",
    "edge_counts_from_metrics",
    "mesh_ca_cli",
    "mesh_view",
    "reporting",
    "running_mesh",
    "send",
    "wait_until",
]

_T = TypeVar("_T")


_ATTEMPTS = 3  # free ports are picked before they are bound: another test may take one


@contextmanager
def running_mesh(
    work: Path,
    *,
    leaf_ttl: str = "1h",
    ca_server: dict[str, str] | None = None,
    workers: dict[str, int] | None = None,
    ca_toml: str = "",
) -> Iterator[Mesh]:
    """The three-service mesh under `work` (in `mesh.work`); `ca_server` sets keys of
    ca.toml's [server] (TOML values as text), `workers` the sidecars' ``workers``: those
    run off the control plane (it refuses ``workers > 1``), with static endpoints and the
    policy directory, and the others call them at static endpoints; `ca_toml` is appended
    to ca.toml (a table such as ``[rotation]``). A start that fails
    because a picked port was taken meanwhile (exit 5) starts again elsewhere."""
    for attempt in range(1, _ATTEMPTS + 1):
        mesh = Mesh(work / f"mesh-{attempt}")
        try:
            _start(mesh, leaf_ttl, ca_server or {}, workers or {}, ca_toml)
        except RuntimeError as exc:
            mesh.stop()
            taken = "exited 5" in str(exc) or "did not start" in str(exc)
            if not taken or attempt == _ATTEMPTS:
                raise
            continue
        try:
            yield mesh
        finally:
            mesh.stop()
        return


def _start(
    mesh: Mesh,
    leaf_ttl: str,
    ca_server: dict[str, str],
    workers: dict[str, int],
    ca_toml: str,
) -> None:
    work = mesh.work
    init = ("init", "--trust-domain", TRUST_DOMAIN, "--dir", "ca", "--leaf-ttl", leaf_ttl)
    run_tool("mesh-ca", *init, cwd=work)
    config = work / "ca" / "ca.toml"
    for key, value in ca_server.items():
        text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", config.read_text(), flags=re.M)
        assert found == 1, f"ca.toml has no [server] {key}"
        config.write_text(text)
    shutil.copytree(ROOT / "policies", work / "policies")
    # The demo's sidecars register, discover and take central policies: the CA is the
    # control plane, over the same policy directory.
    with config.open("a") as toml:
        toml.write(CONTROL_TOML.format(policies=work / "policies"))
        toml.write(ca_toml)
    mesh.start_ca()
    static = {name: mesh.services[name].inbound_port for name in workers}
    for name in SERVICES:
        mesh.start_app(name)
    for name in SERVICES:
        token = run_tool(
            "mesh-ca", "token", "create", "--dir", "ca", "--spiffe-id", spiffe_id(name), cwd=work
        )
        config_file = mesh.write_sidecar_config(name, token)
        if workers:
            own = mesh.services[name]
            text = sidecar_toml(own, mesh.ca_address, work, static=static)
            if name in workers:  # a top-level key: before the first table
                every = {s: svc.inbound_port for s, svc in mesh.services.items()}
                text = f"workers = {workers[name]}\n" + sidecar_toml(
                    own, mesh.ca_address, work, static=every, control_plane=False
                )
            config_file.write_text(text)
    for name in SERVICES:
        mesh.start_sidecar(name)
    mesh.wait_ready(timeout=60)


def send(port: int, method: str, path: str) -> int:
    """One request to an app on loopback; its status."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def reporting(mesh: Mesh) -> dict[str, Any] | None:
    """The mesh view once every sidecar of the mesh has reported, else None."""
    view = mesh_view(mesh)
    ids = {i["spiffe_id"] for i in view["instances"] if not i["stale"]}
    return view if ids == {spiffe_id(name) for name in SERVICES} else None


def mesh_view(mesh: Mesh, window: str = "1m") -> dict[str, Any]:
    url = f"http://{mesh.ca_admin}/v1/mesh?window={window}"
    with urllib.request.urlopen(url, timeout=5) as response:
        value: dict[str, Any] = json.loads(response.read())
    return value


def mesh_ca_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`mesh-ca ARGS` as a user runs it (its exit code is not checked)."""
    return subprocess.run(
        [sys.executable, "-m", "mesh_ca.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def edge_counts_from_metrics(
    metrics_text: str, direction: str
) -> dict[tuple[str, str], dict[str, float]]:
    """Per (source, destination): requests, successes (1xx-4xx) and denials of `direction`,
    as a sidecar's own /metrics counts them."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "meshgate_requests_total" and labels["direction"] == direction:
                row = out.setdefault(
                    (labels["source_service"], labels["destination_service"]),
                    {"requests": 0.0, "successes": 0.0},
                )
                row["requests"] += sample.value
                if labels["status_class"] in ("1xx", "2xx", "3xx", "4xx"):
                    row["successes"] += sample.value
    return out


def wait_until(what: str, probe: Callable[[], _T | None], *, timeout: float = 30.0) -> _T:
    """`probe()`'s first truthy value, polled until `timeout`; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last: _T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
