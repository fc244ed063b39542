"""Two-sidecar fixtures: A's outbound → B's inbound → B's echo app, static identity files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshgate.identity import SpiffeId
from tests.pki import TestPki as Pki
from tests.procs import free_port, write_config, write_identity


@dataclass
class Pair:
    a_config: Path
    b_config: Path
    a_admin: int
    b_admin: int
    a_outbound: int
    b_inbound: int
    a_id: SpiffeId
    b_id: SpiffeId


def sidecar_pair(pki: Pki, tmp: Path, app_port: int, **timeouts: Any) -> Pair:
    a_id, b_id = pki.spiffe_id("shop", "frontend"), pki.spiffe_id("shop", "orders")
    a_files = write_identity(pki, pki.leaf(a_id), tmp / "a")
    b_files = write_identity(pki, pki.leaf(b_id), tmp / "b")
    return pair_configs(tmp, app_port, (a_id, a_files), (b_id, b_files), **timeouts)


def pair_configs(
    tmp: Path,
    app_port: int,
    a: tuple[SpiffeId, dict[str, Any]],
    b: tuple[SpiffeId, dict[str, Any]],
    **timeouts: Any,
) -> Pair:
    """a.toml and b.toml for A (outbound to "orders") and B (inbound for A), each with its
    own ``[identity]`` table (static files, or bootstrap from a CA)."""
    (a_id, a_identity), (b_id, b_identity) = a, b
    ports = {k: free_port() for k in ("a_admin", "b_admin", "a_out", "b_in")}
    b_config = write_config(
        tmp / "b.toml",
        {
            "identity": {"spiffe_id": str(b_id), **b_identity},
            "inbound": {
                "listen": f"127.0.0.1:{ports['b_in']}",
                "app": f"127.0.0.1:{app_port}",
                "service": "orders",
                "allowed_ids": [str(a_id)],
            },
            "admin": {"listen": f"127.0.0.1:{ports['b_admin']}"},
            "timeouts": dict(timeouts),
        },
    )
    a_config = write_config(
        tmp / "a.toml",
        {
            "identity": {"spiffe_id": str(a_id), **a_identity},
            "outbound": [
                {
                    "listen": f"127.0.0.1:{ports['a_out']}",
                    "service": "orders",
                    "endpoints": [f"127.0.0.1:{ports['b_in']}"],
                    "spiffe_ids": [str(b_id)],
                }
            ],
            "admin": {"listen": f"127.0.0.1:{ports['a_admin']}"},
            "timeouts": dict(timeouts),
        },
    )
    return Pair(
        a_config,
        b_config,
        ports["a_admin"],
        ports["b_admin"],
        ports["a_out"],
        ports["b_in"],
        a_id,
        b_id,
    )
