"""`mesh-ca dashboard`: serve the page and the CA's mesh JSON on loopback. Thin trio shell
over `pages.dashboard_reply`.

The page polls ``/api/mesh`` every two seconds; the dashboard fetches the JSON from the CA's
admin listener at most once a second per window, however many tabs are open, so a wall of
browsers costs the CA one small request a second.
"""

from __future__ import annotations

import functools
import math
from typing import Final
from urllib.parse import urlsplit

import trio

from mesh_ca.dashboard.pages import dashboard_reply, mesh_window_of
from mesh_ca.server.loopback_http import read_request_head, serve_in_slot
from mesh_ca.server.wire import WireError, render_response

__all__ = ["MeshFetcher", "serve_dashboard"]

_MAX_HEAD_BYTES: Final = 8 * 1024
_DEADLINE_SECONDS: Final = 10.0  # to send a request head; browsers send theirs at once
_MAX_CONNECTIONS: Final = 32
_FETCH_SECONDS: Final = 3.0
_MAX_MESH_BYTES: Final = 8 * 1024 * 1024
_FRESH_SECONDS: Final = 1.0


class MeshFetcher:
    """Reads ``/v1/mesh`` from the CA admin listener, sharing one answer per window a second."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._cache: dict[str, tuple[float, bytes | None]] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def mesh(self, window: str) -> bytes | None:
        lock = self._locks.setdefault(window, trio.Lock())
        async with lock:  # one fetch in flight per window; the others wait and share it
            at, body = self._cache.get(window, (-math.inf, None))
            if trio.current_time() - at < _FRESH_SECONDS:
                return body
            body = await self._fetch(window)
            self._cache[window] = (trio.current_time(), body)
            return body

    async def _fetch(self, window: str) -> bytes | None:
        request = (
            f"GET /v1/mesh?window={window} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            "accept: application/json\r\nconnection: close\r\n\r\n"
        ).encode("ascii")
        data = bytearray()
        with trio.move_on_after(_FETCH_SECONDS) as scope:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
                async with stream:
                    await stream.send_all(request)
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                        if len(data) > _MAX_MESH_BYTES:
                            return None
            except (OSError, trio.BrokenResourceError):
                return None
        if scope.cancelled_caught:
            return None
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split(b" ")
        return body if len(status) >= 2 and status[1] == b"200" else None


async def _answer(fetcher: MeshFetcher, allowed: frozenset[str], stream: trio.SocketStream) -> None:
    try:
        head = await read_request_head(stream, max_bytes=_MAX_HEAD_BYTES, seconds=_DEADLINE_SECONDS)
    except WireError as exc:
        body = b'{"error":"bad_request"}'
        await stream.send_all(render_response(exc.status, body, "application/json", close=True))
        return
    if head is None:
        return
    mesh = None
    window = mesh_window_of(head.target)
    if urlsplit(head.target).path == "/api/mesh" and window is not None:
        mesh = await fetcher.mesh(window)
    reply = dashboard_reply(head.method, head.target, head.headers.get("host"), allowed, mesh)
    body = b"" if head.method == "HEAD" else reply.body
    await stream.send_all(
        render_response(reply.status, body, reply.content_type, reply.headers, close=True)
    )


async def serve_dashboard(
    listeners: list[trio.SocketListener],
    fetcher: MeshFetcher,
    allowed: frozenset[str],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard on `listeners` until cancelled."""
    slots = trio.CapacityLimiter(_MAX_CONNECTIONS)
    answer = functools.partial(_answer, fetcher, allowed)
    handler = functools.partial(serve_in_slot, slots, answer=answer)
    await trio.serve_listeners(handler, listeners, task_status=task_status)
