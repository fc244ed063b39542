"""The live policy set: validate a new snapshot, then swap; keep the last good one on failure.

Pure (no trio): `try_reload` may run in a worker thread while the event loop keeps reading
`current`. The swap is one reference assignment, so a reader sees the old or the new
snapshot, never a mix. Reloads are serialized by a lock (a poll and a SIGHUP may overlap).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import final

from sidecar.policy.decision import (
    AccessRequest,
    Decision,
    decide,
    deny_engine_error,
    deny_unloaded,
)
from sidecar.policy.loader import PolicyLoadError, load_snapshot
from sidecar.policy.snapshot import PolicySnapshot
from sidecar.policy.source import PolicyProblem

__all__ = ["PolicyStore", "ReloadError", "ReloadOutcome"]


class ReloadOutcome(StrEnum):
    LOADED = "loaded"  # a new version went live
    UNCHANGED = "unchanged"  # same content hash as the live set: nothing swapped
    FAILED = "failed"  # the live set (if any) stays


@final
@dataclass(frozen=True, slots=True)
class ReloadError:
    """The last failed reload: shown on the admin port until a reload succeeds."""

    at: datetime
    problems: tuple[PolicyProblem, ...]

    @property
    def file(self) -> str:
        return self.problems[0].file if self.problems else ""

    @property
    def message(self) -> str:
        return "; ".join(str(p) for p in self.problems)

    def as_json(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "file": self.file,
            "problems": [
                {"file": p.file, "line": p.line, "policy_id": p.policy_id, "message": p.message}
                for p in self.problems
            ],
        }


@final
class PolicyStore:
    """Holds the current snapshot; never goes back to "no policies" once one is live."""

    def __init__(self) -> None:
        self._current: PolicySnapshot | None = None
        self._last_error: ReloadError | None = None
        self._lock = threading.Lock()
        self.reloads: Counter[ReloadOutcome] = Counter()

    @property
    def current(self) -> PolicySnapshot | None:
        return self._current

    @property
    def last_error(self) -> ReloadError | None:
        """The error of the most recent failed reload; cleared by a successful one."""
        return self._last_error

    def try_reload(self, directory: Path, now: datetime) -> ReloadOutcome:
        """Load and validate `directory`; swap only if it is valid and different."""
        with self._lock:
            try:
                snapshot = load_snapshot(directory, now)
            except PolicyLoadError as exc:
                self._last_error = ReloadError(now, exc.problems)
                outcome = ReloadOutcome.FAILED
            else:
                self._last_error = None
                current = self._current
                if current is not None and current.version == snapshot.version:
                    outcome = ReloadOutcome.UNCHANGED
                else:
                    self._current = snapshot
                    outcome = ReloadOutcome.LOADED
            self.reloads[outcome] += 1
            return outcome

    def decide(self, request: AccessRequest, *, audit: bool = False) -> Decision:
        """Decide against the live snapshot; deny when none is live (fails closed), and
        deny when the engine raises (`DecisionReason.ENGINE_ERROR`, naming the error): a
        fault in Cedar or in building its request must cost one request, not the
        connection it came on."""
        snapshot = self._current
        if snapshot is None:
            return deny_unloaded(audit=audit)
        try:
            return decide(snapshot, request, audit=audit)
        except Exception as exc:  # noqa: BLE001 - fails closed: any engine fault denies
            return deny_engine_error(exc, snapshot.version, audit=audit)

    def status(self) -> dict[str, object]:
        """A JSON view for the admin endpoint: live version, files, last error, counters."""
        snapshot = self._current
        error = self._last_error
        return {
            "loaded": snapshot.summary() if snapshot else None,
            "last_error": error.as_json() if error else None,
            "reloads": {outcome.value: self.reloads[outcome] for outcome in ReloadOutcome},
        }
