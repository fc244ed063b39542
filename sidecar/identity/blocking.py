"""How the identity shells run blocking file I/O: in a worker thread, or inline in tests.

Under `trio.testing.MockClock(autojump_threshold=0)` a task waiting for a thread counts as
blocked, so the clock would jump hours ahead during a millisecond of file I/O; component
tests therefore pass `inline` and keep simulated time deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

__all__ = ["BlockingRunner", "in_thread", "inline"]

_T = TypeVar("_T")


class BlockingRunner(Protocol):
    async def __call__(self, fn: Callable[..., _T], /, *args: Any) -> _T: ...


async def in_thread(fn: Callable[..., _T], /, *args: Any) -> _T:
    return await trio.to_thread.run_sync(fn, *args)


async def inline(fn: Callable[..., _T], /, *args: Any) -> _T:
    return fn(*args)
