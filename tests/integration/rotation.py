"""Helpers for the CA key rotation tests: short rotation settings, the CA's audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from mesh_ca.ca_dir import LoadedCa
from tests.integration.ca_mesh import mesh_ca

# An intermediate lives 60 s (50 s from its backdated notBefore); the next one is published
# 30 s before its end and signs from 15 s before it: sidecars polling every 2 s have 15 s.
SHORT_ROTATION = """
[rotation]
intermediate_ttl_seconds = 60
prepare_lead_seconds = 30
activate_lead_seconds = 15
check_interval_seconds = 1.0
"""
SIDECAR_POLL = {"poll_interval_seconds": 1.0}


def short_rotation(ca: LoadedCa, *, intermediates: bool = True) -> None:
    """Append a fast ``[rotation]`` table to the CA's ca.toml (before `mesh-ca serve`):
    short intermediates, or only a 1 s check (operator steps applied within a second)."""
    text = SHORT_ROTATION if intermediates else "\n[rotation]\ncheck_interval_seconds = 1.0\n"
    with (ca.path / "ca.toml").open("a") as file:
        file.write(text)


def try_mesh_ca(*args: str) -> tuple[bool, str]:
    """(succeeded, stdout or the error) of one `mesh-ca` command."""
    try:
        return True, mesh_ca(*args)
    except RuntimeError as exc:
        return False, str(exc)


async def audit_actions(ca_dir: Path) -> list[str]:
    """The actions of `mesh-ca root log`, oldest first."""
    text = await trio.to_thread.run_sync(mesh_ca, "root", "log", "--dir", str(ca_dir), "--json")
    return [entry["action"] for entry in reversed(json.loads(text))]


async def ca_status(ca_dir: Path) -> dict[str, Any]:
    text = await trio.to_thread.run_sync(mesh_ca, "status", "--dir", str(ca_dir), "--json")
    slots: dict[str, Any] = json.loads(text)["slots"]
    return slots
