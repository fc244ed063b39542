"""The trio shell that keeps a `PolicyStore` in step with its directory.

Polls the directory fingerprint (names, sizes, mtimes) and reloads when it changes or when
`request_reload()` is called (wire SIGHUP to it). Parsing and validating run in a worker
thread, so the event loop keeps serving while a large policy set loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import final

import trio

from meshgate.clock import Clock
from sidecar.policy.source import directory_fingerprint
from sidecar.policy.store import PolicyStore, ReloadOutcome

__all__ = ["PolicyWatcher"]

log = logging.getLogger("sidecar.policy")


@final
class PolicyWatcher:
    def __init__(
        self,
        store: PolicyStore,
        directory: Path,
        clock: Clock,
        *,
        poll_interval_ms: int = 250,
        on_reload: Callable[[ReloadOutcome], None] | None = None,
    ) -> None:
        self._store = store
        self._directory = directory
        self._clock = clock
        self._poll_s = poll_interval_ms / 1000
        self._on_reload = on_reload
        self._wake = trio.Event()

    def request_reload(self) -> None:
        """Reload at the next opportunity even if no file changed (SIGHUP)."""
        self._wake.set()

    async def reload(self) -> ReloadOutcome:
        now = self._clock.now()
        outcome = await trio.to_thread.run_sync(self._store.try_reload, self._directory, now)
        if outcome is ReloadOutcome.FAILED and (error := self._store.last_error) is not None:
            log.error("policy reload failed, keeping the live set: %s", error.message)
        elif outcome is ReloadOutcome.LOADED and (snapshot := self._store.current) is not None:
            log.info("policy set %s loaded from %s", snapshot.version, self._directory)
        if self._on_reload is not None:
            self._on_reload(outcome)
        return outcome

    async def run(
        self, *, task_status: trio.TaskStatus[ReloadOutcome] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load once, report the outcome through `task_status`, then watch forever."""
        seen = directory_fingerprint(self._directory)
        task_status.started(await self.reload())
        while True:
            with trio.move_on_after(self._poll_s):
                await self._wake.wait()
            forced = self._wake.is_set()
            if forced:
                self._wake = trio.Event()
            current = directory_fingerprint(self._directory)
            if forced or current != seen:
                seen = current
                await self.reload()
