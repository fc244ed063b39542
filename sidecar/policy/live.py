"""The sidecar's live policy set: load at start (refuse to start on an invalid set), then
keep it in step with its directory (file changes and SIGHUP), counting every reload.

With ``source = "control-plane"`` there is no directory to watch: the store starts empty
(every request denied) and `sidecar.control.policies` feeds it through `load`."""

from __future__ import annotations

from pathlib import Path
from typing import final

import trio

from meshgate.clock import Clock
from meshgate.errors import PolicyError
from sidecar.config import PolicyConfig
from sidecar.observe.access import Observer
from sidecar.policy import PolicyStore, ReloadOutcome
from sidecar.policy.watch import PolicyWatcher

__all__ = ["LivePolicies", "PolicyStartError"]


class PolicyStartError(PolicyError):
    """The initial policy set did not load: the sidecar does not start (fails closed)."""


@final
class LivePolicies:
    """A `PolicyStore` and the watcher that reloads it; `start` loads the first set."""

    def __init__(self, config: PolicyConfig, clock: Clock, observer: Observer) -> None:
        self.config = config
        self.store = PolicyStore()
        self._observer = observer
        self._clock = clock
        self.watcher = (
            PolicyWatcher(
                self.store,
                config.dir,
                clock,
                poll_interval_ms=config.reload_interval_ms,
                on_reload=self._count,
            )
            if config.dir is not None
            else None
        )

    def _count(self, outcome: ReloadOutcome) -> None:
        metrics = self._observer.metrics
        metrics.count_policy_reload(outcome.value, self._clock.now().timestamp())
        current = self.store.current
        if current is not None:
            metrics.set_policy_version(current.version)

    def request_reload(self) -> None:
        """SIGHUP: reload now even if no file changed."""
        if self.watcher is not None:
            self.watcher.request_reload()

    async def load(self, directory: Path) -> ReloadOutcome:
        """Validate `directory` and swap it in if it is good (in a thread: Cedar parsing
        holds the event loop otherwise); counted like a reload."""
        outcome = await trio.to_thread.run_sync(self.store.try_reload, directory, self._clock.now())
        self._count(outcome)
        return outcome

    async def start(self, nursery: trio.Nursery) -> None:
        """Load the first set and keep watching in `nursery`; raise `PolicyStartError`
        (naming file, line and policy) when it does not load. Control-plane source:
        nothing to load here."""
        if self.config.dir is None or self.watcher is None:
            return
        if not self.config.dir.is_dir():
            raise PolicyStartError(f"policy.dir {self.config.dir} is not a directory")
        outcome = await nursery.start(self.watcher.run)
        if outcome is ReloadOutcome.FAILED or self.store.current is None:
            error = self.store.last_error
            detail = error.message if error else "no policy set loaded"
            raise PolicyStartError(f"policy.dir {self.config.dir}: {detail}")
