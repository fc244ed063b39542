"""One injectable clock. Pure cores take `now`; shells ask a `Clock` for it.

`TrioWallClock` ties wall time to trio's clock, so under `trio.testing.MockClock` a day of
certificate rotations passes in milliseconds while certificates still carry real dates.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, final

__all__ = ["Clock", "SystemClock", "TrioWallClock", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Clock(Protocol):
    def now(self) -> datetime: ...


@final
class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@final
class TrioWallClock:
    """Wall time = `epoch` + (trio.current_time() at read - trio time at construction)."""

    def __init__(self, epoch: datetime | None = None) -> None:
        import trio

        self._trio = trio
        self._epoch = epoch or datetime.now(UTC)
        self._start = trio.current_time()

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=self._trio.current_time() - self._start)
