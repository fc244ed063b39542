"""Store calls from the control plane's trio code: in worker threads, a few at a time, or
inline for a store whose calls are local and sub-millisecond (SQLite), as the CA's own
handlers are: a thread hop costs more than the call, and under load the hops queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, final

import trio

__all__ = ["Threads"]

_T = TypeVar("_T")


@final
class Threads:
    def __init__(self, limit: int = 8, *, inline: bool = False) -> None:
        self._limiter = trio.CapacityLimiter(limit)
        self._inline = inline

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._inline:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
