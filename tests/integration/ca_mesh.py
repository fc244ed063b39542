"""A mesh whose sidecars get their SVIDs from a real `mesh-ca serve` (bootstrap mode).

The CA directory is made with `mesh-ca init` (optionally with a short leaf TTL), join tokens
with `mesh-ca token create`, and each sidecar bootstraps with its token file. Admin reads
are async (run in a thread) so that the echo app and the traffic loops, which share the
test's trio loop, never stall behind a blocking HTTP call.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from mesh_ca.ca_dir import LoadedCa, load_ca_dir
from meshgate.identity import SpiffeId
from tests.ca_server_process import TRUST_DOMAIN, CaServer, serving_ca_dir
from tests.integration.mesh import Pair, pair_configs
from tests.procs import ROOT, Sidecar

A_ID = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/frontend")
B_ID = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/orders")


def mesh_ca(*args: str) -> str:
    """Run one `mesh-ca` command; its stdout. Raises with its stderr when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mesh_ca.cli", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mesh-ca {' '.join(args)} exited {done.returncode}:\n{done.stderr!r}")
    return done.stdout.decode()


def init_ca(directory: Path, *, leaf_ttl: str | None = None) -> LoadedCa:
    """`mesh-ca init` (leaf TTL as the CLI takes it, e.g. "30s"), loaded for the helpers."""
    ttl = ("--leaf-ttl", leaf_ttl) if leaf_ttl else ()
    mesh_ca("init", "--trust-domain", TRUST_DOMAIN, "--dir", str(directory), *ttl)
    return load_ca_dir(directory)


def write_token(ca: LoadedCa, spiffe_id: SpiffeId, token_file: Path) -> None:
    """A fresh one-time join token from `mesh-ca token create`, written where a sidecar reads it."""
    token = mesh_ca("token", "create", "--dir", str(ca.path), "--spiffe-id", str(spiffe_id))
    token_file.write_text(token.strip() + "\n")


@contextmanager
def serving(ca: LoadedCa, log_path: Path, *, listen: str = "127.0.0.1:0") -> Iterator[CaServer]:
    """`mesh-ca serve` for `ca` until the block ends (or a test stops it earlier)."""
    with serving_ca_dir(ca, log_path, argv=("-m", "mesh_ca.cli", "serve"), listen=listen) as srv:
        yield srv


def bootstrap_identity(
    ca: LoadedCa, server: CaServer, spiffe_id: SpiffeId, directory: Path, **extra: Any
) -> dict[str, Any]:
    """An ``[identity]`` table in bootstrap mode, with a fresh token in its token file."""
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "token"
    write_token(ca, spiffe_id, token_file)
    return {
        "bundle_file": str(ca.path / "bundle.pem"),
        "ca_addresses": [server.address],
        "state_dir": str(directory / "state"),
        "token_file": str(token_file),
        **extra,
    }


def bootstrap_pair(
    ca: LoadedCa,
    server: CaServer,
    tmp: Path,
    app_port: int,
    *,
    a_identity: dict[str, Any] | None = None,
    b_identity: dict[str, Any] | None = None,
    **timeouts: Any,
) -> Pair:
    """A (outbound) → B (inbound) → app, both bootstrapping from `server` with tokens.

    `a_identity` / `b_identity` add keys to that sidecar's ``[identity]`` table (e.g.
    ``poll_interval_seconds``).
    """
    a = (A_ID, bootstrap_identity(ca, server, A_ID, tmp / "a", **(a_identity or {})))
    b = (B_ID, bootstrap_identity(ca, server, B_ID, tmp / "b", **(b_identity or {})))
    return pair_configs(tmp, app_port, a, b, **timeouts)


async def admin(sidecar: Sidecar, path: str) -> tuple[int, dict[str, Any]]:
    """An admin JSON view, read in a thread."""
    return await trio.to_thread.run_sync(sidecar.get, path)


async def metrics_text(sidecar: Sidecar) -> str:
    def read() -> str:
        url = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    return await trio.to_thread.run_sync(read)


@dataclass(frozen=True)
class CertView:
    """The fields of `/certificate` the tests compare."""

    serial: str
    not_after: datetime
    rotations: dict[str, int]

    @property
    def rotated(self) -> int:
        return self.rotations.get("ok", 0)

    @property
    def renewal_failures(self) -> int:
        return sum(n for result, n in self.rotations.items() if result != "ok")


async def certificate(sidecar: Sidecar) -> CertView:
    status, view = await admin(sidecar, "/certificate")
    if status != 200:
        raise AssertionError(f"/certificate answered {status}: {view}")
    return CertView(
        view["serial"], datetime.fromisoformat(view["not_after"]), dict(view["rotations"])
    )


@dataclass
class CertWatch:
    """Reads the sidecars' `/certificate` views; `run` keeps `latest` and the serials seen."""

    sidecars: tuple[Sidecar, ...]
    latest: tuple[CertView, ...] = ()
    serials_seen: list[set[str]] = field(default_factory=list)

    async def read(self) -> tuple[CertView, ...]:
        views = tuple([await certificate(sidecar) for sidecar in self.sidecars])
        self.latest = views
        if not self.serials_seen:
            self.serials_seen = [set() for _ in views]
        for seen, view in zip(self.serials_seen, views, strict=True):
            seen.add(view.serial)
        return views

    async def run(self, *, every: float = 0.25) -> None:
        while True:
            await self.read()
            await trio.sleep(every)

    @staticmethod
    def serials(views: tuple[CertView, ...]) -> tuple[str, ...]:
        return tuple(view.serial for view in views)


async def wait_for(what: str, check: Any, *, timeout: float, every: float = 0.25) -> None:
    """Poll the async predicate `check` until it is true; fail naming `what` after `timeout`."""
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(every)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
