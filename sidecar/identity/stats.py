"""Counters of the identity lifecycle, for logs, the admin view and metrics.

A plain object the lifecycle writes and others read; no metrics library here, so the
metrics code decides names and labels. Events are ``(kind, result)`` pairs, for example
``("rotation", "ok")``, ``("rotation", "ca_unavailable")``, ``("bundle", "updated")``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import final

__all__ = ["IdentityStats"]


@final
@dataclass
class IdentityStats:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_rotation_at: datetime | None = None
    next_rotation_at: datetime | None = None

    def count(self, kind: str, result: str) -> None:
        self.counts[(kind, result)] += 1

    def error(self, kind: str, result: str, message: str, now: datetime) -> None:
        self.count(kind, result)
        self.last_error, self.last_error_at = f"{kind}: {message}", now

    def results(self, kind: str) -> dict[str, int]:
        """Counts of one kind by result, e.g. ``results("rotation") == {"ok": 3}``."""
        return {result: n for (k, result), n in self.counts.items() if k == kind}
