"""The control plane of a CA directory, as `mesh-ca serve` starts it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from mesh_ca.control.config import ControlConfig
from mesh_ca.control.metrics import ControlMetrics
from mesh_ca.control.plane import ControlPlane
from mesh_ca.server.core import ApiRequest
from mesh_ca.store import SqliteStore, StateStore
from mesh_ca.store.control import control_store
from meshgate.clock import Clock
from meshgate.identity import VerifiedSvid

__all__ = ["control_plane_for"]


def control_plane_for(
    ca_dir: Path,
    config: ControlConfig,
    store: StateStore,
    clock: Clock,
    verify_client: Callable[[ApiRequest, datetime], VerifiedSvid],
    registry: CollectorRegistry | None = None,
) -> ControlPlane:
    """The control plane of a CA directory: its store, `[control]` and policy directory."""
    policy_dir = None
    if config.policy_dir is not None:
        policy_dir = Path(config.policy_dir)
        policy_dir = policy_dir if policy_dir.is_absolute() else ca_dir / policy_dir
    return ControlPlane(
        control_store(store),
        config,
        policy_dir,
        clock,
        verify_client,
        store.is_revoked,
        inline_store=isinstance(store, SqliteStore),  # local, sub-millisecond calls
        metrics=ControlMetrics(registry),
    )
