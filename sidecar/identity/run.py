"""Which identity source a sidecar runs: its static files, or the CA.

The one place that chooses. The CA branch (`lifecycle`, and with it `mesh_ca.client` and
its models) is imported only when the sidecar has a CA, so a sidecar on static files
never loads it (tests/integration read the loaded modules to check).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import trio

from meshgate.clock import Clock
from sidecar.identity.blocking import BlockingRunner, in_thread
from sidecar.identity.credentials import CredentialStore
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.static_files import ReloadSignal, run_static_identity
from sidecar.identity.stats import IdentityStats

if TYPE_CHECKING:
    from sidecar.identity.lifecycle import ClientFactory

__all__ = ["run_identity"]


async def run_identity(
    config: IdentitySettings | Any,
    store: CredentialStore,
    clock: Clock,
    *,
    client_factory: ClientFactory | None = None,
    rng: random.Random | None = None,
    stats: IdentityStats | None = None,
    reload: ReloadSignal | None = None,
    run_blocking: BlockingRunner = in_thread,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Obtain credentials, publish them, report started, then keep them fresh forever.

    Raises at start-up only for local errors the operator must fix (unreadable bundle file,
    unusable state directory, invalid static identity files); a CA that is down or refuses
    is retried, never fatal. `config` is an `IdentitySettings`, or the sidecar config (its
    ``identity`` table). `reload` (static files): re-read them at once when requested.
    """
    settings = (
        config
        if isinstance(config, IdentitySettings)
        else IdentitySettings.from_config(getattr(config, "identity", config))
    )
    stats = stats if stats is not None else IdentityStats()
    if settings.static:
        await run_static_identity(
            settings,
            store,
            clock,
            stats=stats,
            reload=reload,
            run_blocking=run_blocking,
            task_status=task_status,
        )
        return
    from sidecar.identity.lifecycle import run_ca_identity  # the CA client, only with a CA

    await run_ca_identity(
        settings,
        store,
        clock,
        stats=stats,
        client_factory=client_factory,
        rng=rng,
        run_blocking=run_blocking,
        task_status=task_status,
    )
