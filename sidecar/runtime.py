"""What every connection handler shares: credentials, clock, timeouts, tracker, observer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import final

import trio

from sidecar.config import TimeoutsConfig
from sidecar.connections import ConnectionTracker
from sidecar.identity.credentials import CredentialStore
from sidecar.observe.access import Observer
from sidecar.observe.tracing import Tracer

__all__ = ["Runtime"]


@final
@dataclass(frozen=True, slots=True)
class Runtime:
    store: CredentialStore
    now: Callable[[], datetime]
    timeouts: TimeoutsConfig
    tracker: ConnectionTracker
    observer: Observer = field(default_factory=Observer)
    tracer: Tracer | None = None  # [tracing]: None when off, and the data path skips it

    def trio_deadline(self, not_after: datetime) -> float:
        """The trio-clock deadline for a wall-clock instant (e.g. an SVID's notAfter)."""
        return trio.current_time() + max(0.0, (not_after - self.now()).total_seconds())
