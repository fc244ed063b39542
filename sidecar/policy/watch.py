"""The trio shell that keeps a `PolicyStore` in step with its directory.

Polls the directory fingerprint (names, sizes, mtimes) and reloads when it changes or when
`request_reload()` is called (wire SIGHUP to it). Parsing and validating run in a worker
thread, so the event loop keeps serving while a large policy set loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import final

import cedarpy._internal
import trio

from mesh_ca.clock import Clock
from sidecar.policy.residency import drop_clean_pages
from sidecar.policy.source import directory_fingerprint
from sidecar.policy.store import PolicyStore, ReloadOutcome

__all__ = ["PolicyWatcher"]

# Its native library (parser, validator and authorizer).
CEDAR_LIBRARY = cedarpy._internal.__file__
# How often its code pages are let go between loads: a few madvise calls each time; the
# pages the decisions use come back as minor faults at the next decisions.
RELEASE_INTERVAL_SECONDS = 10.0

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
        outcome = await trio.to_thread.run_sync(self._load, now)
        if outcome is ReloadOutcome.FAILED and (error := self._store.last_error) is not None:
            log.error("policy reload failed, keeping the live set: %s", error.message)
        elif outcome is ReloadOutcome.LOADED and (snapshot := self._store.current) is not None:
            log.info("policy set %s loaded from %s", snapshot.version, self._directory)
        if self._on_reload is not None:
            self._on_reload(outcome)
        return outcome

    def _load(self, now: datetime) -> ReloadOutcome:
        """In the worker thread: load; after a parse, drop the parser's code pages."""
        outcome = self._store.try_reload(self._directory, now)
        if outcome is not ReloadOutcome.UNCHANGED:
            drop_clean_pages(CEDAR_LIBRARY)
        return outcome

    async def run(
        self, *, task_status: trio.TaskStatus[ReloadOutcome] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load once, report the outcome through `task_status`, then watch forever."""
        seen = directory_fingerprint(self._directory)
        task_status.started(await self.reload())
        next_release = trio.current_time() + RELEASE_INTERVAL_SECONDS
        while True:
            with trio.move_on_after(self._poll_s):
                await self._wake.wait()
            if trio.current_time() >= next_release:
                # The first request of each principal and action builds a narrowed policy
                # set and its entities: parser code again, needed once, not kept resident.
                drop_clean_pages(CEDAR_LIBRARY)
                next_release = trio.current_time() + RELEASE_INTERVAL_SECONDS
            forced = self._wake.is_set()
            if forced:
                self._wake = trio.Event()
            current = directory_fingerprint(self._directory)
            if forced or current != seen:
                seen = current
                await self.reload()
