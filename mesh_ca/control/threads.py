"""Store calls from the control plane's trio code: in worker threads, a few at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, final

import trio

__all__ = ["Threads"]

_T = TypeVar("_T")


@final
class Threads:
    def __init__(self, limit: int = 8) -> None:
        self._limiter = trio.CapacityLimiter(limit)

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
