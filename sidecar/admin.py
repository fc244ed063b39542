"""The loopback admin listener: /healthz, /readyz, /certificate, /config (h11 over trio).

`respond` is pure (method, path, state → status and JSON body); the trio shell reads one
request per connection with a size cap and answers with ``Connection: close``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, final

import h11
import trio

from sidecar.config import Address, SidecarConfig
from sidecar.identity.credentials import CredentialStore

__all__ = ["AdminState", "respond", "serve_admin"]

log = logging.getLogger("sidecar.admin")
_MAX_REQUEST_BYTES = 16 * 1024
_READ_TIMEOUT_SECONDS = 5.0


@final
@dataclass(frozen=True, slots=True)
class AdminState:
    config: SidecarConfig
    store: CredentialStore
    now: Callable[[], datetime]
    next_rotation: Callable[[], datetime | None] = lambda: None


def _readiness(state: AdminState) -> tuple[bool, str]:
    current = state.store.current
    if current is None:
        return False, "no SVID loaded yet"
    if current.expired(state.now()):
        return False, f"own SVID expired at {current.not_after.isoformat()}"
    return True, "SVID valid"


def respond(method: str, path: str, state: AdminState) -> tuple[int, dict[str, Any]]:
    """The status and JSON body for one admin request. Pure apart from reading the store."""
    if method not in ("GET", "HEAD"):
        return 405, {"error": f"method {method} not allowed"}
    route = path.split("?", 1)[0]
    if route == "/healthz":
        return 200, {"status": "ok"}
    if route == "/readyz":
        ready, reason = _readiness(state)
        return (200 if ready else 503), {"ready": ready, "reason": reason}
    if route == "/certificate":
        current = state.store.current
        if current is None:
            return 503, {"error": "no SVID loaded yet"}
        rotation = state.next_rotation()
        return 200, {
            "spiffe_id": str(current.spiffe_id),
            "serial": f"{current.serial:x}",
            "not_before": current.not_before.isoformat(),
            "not_after": current.not_after.isoformat(),
            "expired": current.expired(state.now()),
            "next_rotation": rotation.isoformat() if rotation else None,
            "trust_domains": sorted(str(td) for td in current.bundles),
        }
    if route == "/config":
        return 200, state.config.model_dump(mode="json")
    return 404, {"error": f"no such endpoint {route}"}


async def _serve_one(stream: trio.SocketStream, state: AdminState) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
    request: h11.Request | None = None
    with trio.move_on_after(_READ_TIMEOUT_SECONDS):
        while request is None:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                break
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                conn.receive_data(data)
                if not data:
                    break
            elif isinstance(event, h11.Request):
                request = event
            else:
                break
    if request is None:
        status, body = 400, {"error": "bad or incomplete request"}
        method = "GET"
    else:
        method = request.method.decode("ascii", "replace")
        status, body = respond(method, request.target.decode("ascii", "replace"), state)
    payload = (json.dumps(body, indent=1) + "\n").encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(payload))),
        ("connection", "close"),
    ]
    out = h11.Connection(h11.SERVER) if request is None else conn
    if request is None:  # h11 needs a request before a response: answer on a fresh state
        out.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        out.next_event()
    data = out.send(h11.Response(status_code=status, headers=headers))
    if method != "HEAD":
        data = (data or b"") + (out.send(h11.Data(data=payload)) or b"")
    data = (data or b"") + (out.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)


async def serve_admin(
    listen: Address,
    state: AdminState,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError
            ):
                await _serve_one(stream, state)

    task_status.started()
    await trio.serve_listeners(handler, listeners)
