"""The CA's plain-HTTP admin listener: ``GET /metrics`` and ``GET /healthz`` for a stock
Prometheus, which cannot verify the CA's own certificate (an SVID with no DNS name), and
``GET /v1/mesh?window=1m|5m|15m``: the mesh as the sidecars report it (JSON,
`mesh_ca.control.mesh_view`; what ``mesh-ca mesh`` and ``mesh-ca check`` read).

Loopback only unless the operator says otherwise (`mesh_ca.config.parse_admin_listen`):
no TLS, no authentication, so it serves nothing but counts, durations and expiry times.
One request per connection, a small head, a short deadline: a scraper needs no more, and
a slow or hostile client ties up one of a few slots for seconds at most.

With the control plane: ``GET /control/endpoints[?service=S]`` (every registered endpoint)
and ``GET /control/policy`` (the published policy version, the last refused edit, which
version each sidecar enforces and which are stale), as JSON.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, Final, Protocol
from urllib.parse import parse_qs

import trio

from mesh_ca.server.loopback_http import read_request_head, serve_in_slot
from mesh_ca.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.server.wire import WireError, render_response
from mesh_ca.store import StoreError
from meshgate.exit_codes import ExitCode, StartupError

__all__ = ["admin_response", "open_admin_listeners", "serve_admin"]

_JSON: Final = "application/json"
_MAX_HEAD_BYTES: Final = 8 * 1024
_DEADLINE_SECONDS: Final = 5.0
_MAX_CONNECTIONS: Final = 16


# The mesh JSON for a window name (ValueError for an unknown one); None: not served.
MeshSource = Callable[[str], dict[str, Any]]


class ControlViews(Protocol):
    """What the admin listener shows of the control plane (`mesh_ca.control.plane`)."""

    def endpoints_json(self, service: str | None = None) -> bytes: ...

    async def policy_status_json(self) -> bytes: ...


async def _control_view(control: ControlViews, method: str, target: str) -> tuple[int, bytes]:
    path, _, query = target.partition("?")
    if method not in ("GET", "HEAD"):
        return 405, b'{"error":"method_not_allowed","detail":"use GET"}'
    if path == "/control/endpoints":
        service = parse_qs(query).get("service", [None])[0]
        return 200, control.endpoints_json(service)
    if path == "/control/policy":
        try:
            return 200, await control.policy_status_json()
        except StoreError:
            return 503, b'{"error":"store_unavailable","detail":"the CA state store is down"}'
    return 404, b'{"error":"not_found","detail":"try /control/endpoints or /control/policy"}'


def admin_response(
    method: str, target: str, metrics: CaMetrics, mesh: MeshSource | None = None
) -> tuple[int, bytes, str]:
    """(status, body, content type) of one admin request. Pure apart from what `mesh` reads."""
    path, _, query = target.partition("?")
    if path not in ("/metrics", "/healthz", "/v1/mesh"):
        return 404, b'{"error":"not_found","detail":"try /metrics, /healthz or /v1/mesh"}', _JSON
    if method not in ("GET", "HEAD"):
        return 405, b'{"error":"method_not_allowed","detail":"use GET"}', _JSON
    if path == "/metrics":
        return 200, metrics.render(), METRICS_CONTENT_TYPE
    if path == "/v1/mesh":
        return _mesh(query, mesh)
    return 200, b'{"status":"ok"}', _JSON


def _mesh(query: str, mesh: MeshSource | None) -> tuple[int, bytes, str]:
    if mesh is None:
        return 404, b'{"error":"not_found","detail":"no mesh view on this listener"}', _JSON
    try:
        params = parse_qs(query, strict_parsing=bool(query), max_num_fields=8)
        windows = params.get("window", ["1m"])
        if len(windows) != 1 or set(params) - {"window"}:
            raise ValueError("the query takes one parameter: window=1m|5m|15m")
        view = mesh(windows[0])
    except ValueError as exc:
        body = json.dumps({"error": "bad_request", "detail": str(exc)}).encode()
        return 400, body, _JSON
    return 200, json.dumps(view, indent=1).encode() + b"\n", _JSON


async def open_admin_listeners(key: str, host: str, port: int) -> list[trio.SocketListener]:
    """Bind the admin address; a taken port is one line naming `key` (flag or config key)."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        problem = f"cannot listen: {exc.strerror or exc}"
        raise StartupError(key, f"{host}:{port}", problem, ExitCode.LISTEN) from exc


async def _answer(
    metrics: CaMetrics,
    control: ControlViews | None,
    mesh: MeshSource | None,
    stream: trio.SocketStream,
) -> None:
    try:
        head = await read_request_head(stream, max_bytes=_MAX_HEAD_BYTES, seconds=_DEADLINE_SECONDS)
    except WireError as exc:
        reply = render_response(exc.status, b'{"error":"bad_request"}', _JSON, close=True)
        await stream.send_all(reply)
        return
    if head is None:
        return
    with trio.move_on_after(_DEADLINE_SECONDS):
        if control is not None and head.path.startswith("/control/"):
            status, body = await _control_view(control, head.method, head.target)
            content_type = _JSON
        elif head.path == "/v1/mesh":  # it sums every instance's edges: off the loop
            status, body, content_type = await trio.to_thread.run_sync(
                admin_response, head.method, head.target, metrics, mesh
            )
        else:
            status, body, content_type = admin_response(head.method, head.target, metrics, mesh)
        if head.method == "HEAD":
            body = b""
        await stream.send_all(render_response(status, body, content_type, close=True))


async def serve_admin(
    listeners: list[trio.SocketListener],
    metrics: CaMetrics,
    control: ControlViews | None = None,
    mesh: MeshSource | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoints on `listeners` until cancelled."""
    slots = trio.CapacityLimiter(_MAX_CONNECTIONS)
    answer = functools.partial(_answer, metrics, control, mesh)
    handler = functools.partial(serve_in_slot, slots, answer=answer)
    await trio.serve_listeners(handler, listeners, task_status=task_status)
