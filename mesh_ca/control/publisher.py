"""The central policy set of one replica: watch the policy directory, validate a change,
publish it (the store gives it the next version), keep the last good set on error, and
take up sets other replicas published. Trio shell around `mesh_ca.control.policy_set`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import final

import trio

from mesh_ca.control.metrics import ControlMetrics
from mesh_ca.control.policy_set import (
    LoadedPolicySet,
    PolicySetError,
    directory_fingerprint,
    load_policy_set,
    read_policy_files,
)
from mesh_ca.control.threads import Threads
from mesh_ca.store import StoreError
from mesh_ca.store.control import ControlStore
from meshgate.clock import Clock

__all__ = ["PolicyPublisher", "PolicyState"]

log = logging.getLogger("mesh_ca.control")


@final
@dataclass(frozen=True, slots=True)
class PolicyState:
    """The policy set this replica serves and decides with, and the last refusal."""

    loaded: LoadedPolicySet | None = None
    version: int = 0
    published_at: datetime | None = None
    error: str | None = None  # why the directory's current content was not published
    error_at: datetime | None = None


@final
class PolicyPublisher:
    def __init__(
        self,
        store: ControlStore,
        clock: Clock,
        threads: Threads,
        directory: Path | None,
        poll_seconds: float,
        metrics: ControlMetrics,
    ) -> None:
        self.store = store
        self.clock = clock
        self.directory = directory
        self.state = PolicyState()
        self._threads = threads
        self._poll_seconds = poll_seconds
        self._metrics = metrics
        self._changed = trio.Event()
        self._closing = False

    async def wait_changed(self, deadline: float) -> None:
        """Until a new version is served, `close`, or trio time `deadline`."""
        if self._closing:
            return
        with trio.move_on_at(deadline):
            await self._changed.wait()

    def close(self) -> None:
        self._closing = True
        self._changed.set()

    async def start(self) -> None:
        """Publish the directory if it is good, then serve the newest published set."""
        if self.directory is not None:
            await self.publish_directory()
        await self.adopt_latest()

    async def watch(self) -> None:
        """Publish the directory whenever its files change, until cancelled."""
        directory = self.directory
        if directory is None:
            return
        fingerprint = directory_fingerprint(directory)
        while True:
            await trio.sleep(self._poll_seconds)
            now_fingerprint = directory_fingerprint(directory)
            if now_fingerprint != fingerprint:
                fingerprint = now_fingerprint
                await self.publish_directory()

    async def publish_directory(self) -> None:
        """Validate the directory; publish it if good, else keep the last good set."""
        assert self.directory is not None
        directory = self.directory
        now = self.clock.now()
        try:
            # Parsing and validating take tens of ms: always off the event loop.
            files = await trio.to_thread.run_sync(read_policy_files, directory)
            loaded = await trio.to_thread.run_sync(load_policy_set, files)
        except PolicySetError as exc:
            self._refused(f"{directory}: {exc}", now)
            self._metrics.policy_publishes.labels("refused").inc()
            log.error(
                json.dumps(
                    {
                        "event": "policy_set_refused",
                        "dir": str(directory),
                        "problems": list(exc.problems)[:20],
                        "serving_version": self.state.version,
                    }
                )
            )
            return
        try:
            published = await self._threads.run(
                self.store.publish_policy, loaded.files, loaded.sha256, now
            )
        except StoreError as exc:
            self._refused(f"cannot publish: {exc}", now)
            self._metrics.policy_publishes.labels("failed").inc()
            log.error(json.dumps({"event": "policy_publish_failed", "error": str(exc)}))
            return
        if published.sha256 == loaded.sha256 and self._adopt(
            loaded, published.version, published.published_at
        ):
            self._metrics.policy_publishes.labels("published").inc()

    async def adopt_latest(self) -> None:
        """Serve the newest published set if it is newer than ours (another replica's)."""
        try:
            latest = await self._threads.run(self.store.latest_policy)
        except StoreError as exc:
            log.error(json.dumps({"event": "policy_read_failed", "error": str(exc)}))
            return
        if latest is None or latest.version <= self.state.version:
            return
        try:
            loaded = await trio.to_thread.run_sync(load_policy_set, latest.files)
        except PolicySetError as exc:  # published by a newer or broken replica: keep ours
            log.error(json.dumps({"event": "published_policy_unusable", "error": str(exc)}))
            return
        self._adopt(loaded, latest.version, latest.published_at)

    def _refused(self, error: str, now: datetime) -> None:
        state = self.state
        self.state = PolicyState(state.loaded, state.version, state.published_at, error[:2000], now)

    def _adopt(self, loaded: LoadedPolicySet, version: int, published_at: datetime) -> bool:
        """Serve `loaded` as `version` unless ours is newer; True if the version moved on."""
        if version < self.state.version:
            return False
        changed = version != self.state.version
        self.state = PolicyState(loaded, version, published_at)
        if changed:
            log.info(
                json.dumps(
                    {"event": "policy_set_published", "version": version, "sha256": loaded.sha256}
                )
            )
            self._changed.set()
            self._changed = trio.Event()
        return changed
