"""Counters and conditions of the identity lifecycle, for logs, the admin view and metrics.

A plain object the lifecycle writes and others read; no metrics library here, so the
metrics code decides names and labels. Events are ``(kind, result)`` pairs, for example
``("rotation", "ok")``, ``("rotation", "ca_unavailable")``, ``("bundle", "updated")``.

Errors are kept per kind and a success clears its kinds (`ok`), so ``last_error`` is the
newest error that still holds, never a stale one. Two conditions feed readiness
(`sidecar.observe.admin`): `blocked`, why there is no usable SVID and what the last attempt to get
one said, and `persist_error`, why the live SVID could not be saved to ``state_dir``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, final

__all__ = ["CLEARS", "Blocked", "IdentityStats"]

# What a success of one kind proves fixed: a new SVID ends the errors of every way of
# getting one (and an own-SVID revocation, which it replaces).
CLEARS: Final[dict[str, tuple[str, ...]]] = {
    "bootstrap": ("bootstrap", "rotation", "revocations", "start"),
    "rotation": ("bootstrap", "rotation", "revocations", "start"),
    "poll": ("poll",),
    "bundle": ("bundle",),
    "persist": ("persist",),
    "reload": ("reload",),
}


@final
@dataclass(frozen=True, slots=True)
class Blocked:
    """Why the lifecycle cannot get an SVID right now: a stable `code` (for /readyz and
    alerts: ``waiting_for_token``, ``ca_unreachable``, ``token_refused``,
    ``token_wrong_id``, ``svid_invalid``) and a `message` for people."""

    code: str
    message: str


@final
@dataclass
class IdentityStats:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_rotation_at: datetime | None = None
    next_rotation_at: datetime | None = None
    blocked: Blocked | None = None  # set by a failed attempt, cleared by a new SVID
    persist_error: str | None = None  # set when saving fails, cleared by the next save
    _errors: dict[str, tuple[str, datetime]] = field(default_factory=dict)

    def count(self, kind: str, result: str) -> None:
        self.counts[(kind, result)] += 1

    def ok(self, kind: str, result: str = "ok") -> None:
        """Count a success and forget the errors it proves fixed (`CLEARS`)."""
        self.count(kind, result)
        for cleared in CLEARS.get(kind, (kind,)):
            self._errors.pop(cleared, None)

    def error(self, kind: str, result: str, message: str, now: datetime) -> None:
        self.count(kind, result)
        self._errors.pop(kind, None)  # the newest error of a kind goes to the end
        self._errors[kind] = (f"{kind}: {message}", now)

    @property
    def last_error(self) -> str | None:
        newest = self._newest()
        return newest[0] if newest else None

    @property
    def last_error_at(self) -> datetime | None:
        newest = self._newest()
        return newest[1] if newest else None

    def _newest(self) -> tuple[str, datetime] | None:
        # the newest by time; of equal times the last recorded (dicts keep insertion order)
        return max(reversed(self._errors.values()), key=lambda e: e[1], default=None)

    def results(self, kind: str) -> dict[str, int]:
        """Counts of one kind by result, e.g. ``results("rotation") == {"ok": 3}``."""
        return {result: n for (k, result), n in self.counts.items() if k == kind}
