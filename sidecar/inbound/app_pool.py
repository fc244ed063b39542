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

from meshgate.http import HttpLimits, ResponseReader
from meshgate.transport.socket_stream import TimedStream, lean

__all__ = ["AppConnection", "AppConnector", "AppPool"]

AppConnector = Callable[[], Awaitable[trio.abc.Stream]]
_RESPONSE_LIMITS = HttpLimits(max_body_bytes=None)


@final
class AppConnection:
    """One connection to the app and the reader of its responses (in request order)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream: TimedStream = lean(stream)
        self.reader = ResponseReader(_RESPONSE_LIMITS)
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

    def take_idle(self) -> AppConnection | None:
        """The most recently used idle connection if it is within the idle timeout (then
        all older ones may not be, so `acquire` is left to close them); no await."""
        if self._idle and trio.current_time() - self._idle[-1].idle_since < self._idle_timeout:
            conn = self._idle.pop()
            conn.reused = True
            return conn
        return None

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

    def keep(self, conn: AppConnection) -> bool:
        """Back to the pool when there is room and nothing is buffered (True); else the
        caller must `discard` it."""
        if len(self._idle) >= self._max_idle or conn.reader.buffered_bytes:
            return False
        conn.idle_since = trio.current_time()
        self._idle.append(conn)
        return True

    async def release(self, conn: AppConnection) -> None:
        """`keep`, or close."""
        if not self.keep(conn):
            await trio.aclose_forcefully(conn.stream)

    async def discard(self, conn: AppConnection) -> None:
        await trio.aclose_forcefully(conn.stream)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)
