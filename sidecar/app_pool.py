"""Keep-alive connections from the inbound sidecar to its local app: a small idle pool.

A connection goes back to the pool only after a complete exchange that both sides meant
to keep alive, with nothing left unread. An idle connection older than
``idle_timeout_seconds`` is closed instead of reused; one the app closed meanwhile shows up
as a failure before any response byte, which the caller may retry once on a fresh one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import final

import trio

from sidecar.http import HttpLimits, ResponseReader

__all__ = ["AppConnection", "AppConnector", "AppPool"]

AppConnector = Callable[[], Awaitable[trio.abc.Stream]]


@final
class AppConnection:
    """One connection to the app and the reader of its responses (in request order)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = ResponseReader(HttpLimits(max_body_bytes=None))
        self.reused = False
        self.idle_since = 0.0


@final
class AppPool:
    def __init__(
        self,
        connect: AppConnector,
        *,
        max_idle: int = 16,
        idle_timeout_seconds: float = 30.0,
    ) -> None:
        self._connect = connect
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout_seconds
        self._idle: list[AppConnection] = []
        self.opened = 0  # new connections made (reuse shows as requests > opened)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self, *, fresh: bool = False) -> AppConnection:
        """The most recently used idle connection, or a new one (`OSError` if refused)."""
        now = trio.current_time()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if now - conn.idle_since < self._idle_timeout:
                conn.reused = True
                return conn
            await trio.aclose_forcefully(conn.stream)
        stream = await self._connect()
        self.opened += 1
        return AppConnection(stream)

    async def release(self, conn: AppConnection) -> None:
        """Back to the pool when there is room and nothing is buffered; else closed."""
        if len(self._idle) >= self._max_idle or conn.reader.buffered_bytes:
            await trio.aclose_forcefully(conn.stream)
            return
        conn.idle_since = trio.current_time()
        self._idle.append(conn)

    async def discard(self, conn: AppConnection) -> None:
        await trio.aclose_forcefully(conn.stream)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)
