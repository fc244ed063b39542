"""The loopback admin listener: health, metrics and JSON views of the sidecar's state (h11).

Endpoints (``GET /`` lists them): ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text
format), and JSON views ``/certificate``, ``/policies``, ``/config``, ``/upstreams``.
`respond` is pure (method, path, state → `AdminResponse`); the trio shell reads one
request per connection with a size cap and answers with ``Connection: close``. Views never
show secrets: a token or key file's path, never its contents.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol, final

import h11
import trio

from sidecar.config import Address, SidecarConfig
from sidecar.identity.credentials import CredentialStore
from sidecar.identity.stats import IdentityStats
from sidecar.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sidecar.observe.metrics import SidecarMetrics

__all__ = [
    "ENDPOINTS",
    "AdminResponse",
    "AdminState",
    "PolicyView",
    "readiness",
    "respond",
    "serve_admin",
]

log = logging.getLogger("sidecar.observe.admin")
_MAX_REQUEST_BYTES = 16 * 1024
_READ_TIMEOUT_SECONDS = 5.0
_JSON: Final = "application/json"
ENDPOINTS: Final[Mapping[str, str]] = {
    "/healthz": "liveness: the process answers",
    "/readyz": "readiness: an unexpired, unrevoked, saved SVID (and a policy set, when "
    "configured); else 503 with the reason and its code",
    "/metrics": "Prometheus metrics (text exposition format)",
    "/certificate": "current SVID: SPIFFE ID, serial, validity, next rotation, rotation results",
    "/policies": (
        "loaded policy set: version, files, loaded_at, headers_read (sent at most once), "
        "last reload error"
    ),
    "/config": "effective configuration (file paths, never secrets)",
    "/upstreams": "outbound services, their endpoints and health",
    "/control": "[control_plane]: registration, discovered endpoints, central policy status",
}
# Config keys whose values are never shown (none hold secrets today: a safety net).
_SECRET_WORDS: Final = ("password", "secret", "token", "dsn", "private")


class PolicyView(Protocol):
    """What the admin views need from the policy store (`sidecar.policy.PolicyStore`)."""

    @property
    def current(self) -> object | None: ...

    def status(self) -> dict[str, object]: ...


@final
@dataclass(frozen=True, slots=True)
class AdminState:
    config: SidecarConfig
    store: CredentialStore
    now: Callable[[], datetime]
    next_rotation: Callable[[], datetime | None] = lambda: None
    metrics: SidecarMetrics | None = None
    identity_stats: IdentityStats | None = None  # None without an identity lifecycle (tests)
    policies: PolicyView | None = None  # None when no [policy] is configured
    # Endpoint health from the outbound pool: a JSON-able list, one item per service.
    upstreams: Callable[[], list[dict[str, Any]]] | None = None
    # Why the data path is not serving yet (None: it is), e.g. workers still starting.
    serving: Callable[[], str | None] | None = None
    # [control_plane]: registration, discovery and central policy status (details only:
    # a refused registration or a stale policy set does not stop serving).
    control: Callable[[], dict[str, Any]] | None = None


@final
@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = _JSON

    @classmethod
    def json(cls, status: int, body: Mapping[str, Any]) -> AdminResponse:
        return cls(status, (json.dumps(body, indent=1, default=str) + "\n").encode())

    def decoded(self) -> Any:
        """The JSON body (for tests and tools)."""
        return json.loads(self.body)


def _readiness(state: AdminState) -> tuple[bool, str, str]:
    """(ready, code, reason). Ready only with an unexpired SVID that is not revoked and is
    saved to ``state_dir``, and a policy set when one is configured. `code` is stable for
    alerts: ``starting``, ``waiting_for_token``, ``ca_unreachable``, ``token_refused``,
    ``token_wrong_id``, ``svid_invalid``, ``svid_expired``, ``own_id_revoked``,
    ``persist_failed``, ``no_policy_set``, ``workers_starting``, ``ready``."""
    stats = state.identity_stats
    blocked = stats.blocked if stats is not None else None
    current = state.store.current
    if current is None:
        if blocked is not None:
            why = blocked.message.removeprefix("cannot get an SVID: ")
            return False, blocked.code, f"no SVID yet: {why}"
        return False, "starting", "no SVID loaded yet"
    if current.expired(state.now()):
        reason = f"own SVID expired at {current.not_after.isoformat()}"
        return False, "svid_expired", reason + (f": {blocked.message}" if blocked else "")
    revocations = state.store.revocations
    if current.spiffe_id in revocations.spiffe_ids:
        return False, "own_id_revoked", f"own SPIFFE ID {current.spiffe_id} is revoked"
    if current.serial in revocations.serials:
        return False, "own_id_revoked", f"own SVID serial {current.serial:x} is revoked"
    if stats is not None and stats.persist_error is not None:
        return False, "persist_failed", stats.persist_error
    if state.policies is not None and state.policies.current is None:
        return False, "no_policy_set", "no policy set loaded yet"
    not_serving = state.serving() if state.serving is not None else None
    if not_serving is not None:
        return False, "workers_starting", not_serving
    return True, "ready", "SVID valid" + (" and policy set loaded" if state.policies else "")


def readiness(state: AdminState) -> tuple[bool, str, str]:
    """What ``/readyz`` says: (ready, code, reason); also sent in control-plane reports."""
    return _readiness(state)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _certificate(state: AdminState) -> AdminResponse:
    current = state.store.current
    stats = state.identity_stats
    if current is None:  # what the attempts so far said, for an operator waiting on it
        return AdminResponse.json(
            503,
            {
                "error": "no SVID loaded yet",
                "bootstraps": stats.results("bootstrap") if stats else {},
                "last_error": stats.last_error if stats else None,
                "last_error_at": _iso(stats.last_error_at) if stats else None,
            },
        )
    rotation = state.next_rotation()
    if rotation is None and stats is not None:
        rotation = stats.next_rotation_at
    return AdminResponse.json(
        200,
        {
            "spiffe_id": str(current.spiffe_id),
            "serial": f"{current.serial:x}",
            "not_before": current.not_before.isoformat(),
            "not_after": current.not_after.isoformat(),
            "expired": current.expired(state.now()),
            "source": "static files" if state.config.identity.static else "mesh CA",
            "next_rotation": _iso(rotation),
            "last_rotation": _iso(stats.last_rotation_at) if stats else None,
            "rotations": stats.results("rotation") if stats else {},
            "bootstraps": stats.results("bootstrap") if stats else {},
            "last_error": stats.last_error if stats else None,
            "last_error_at": _iso(stats.last_error_at) if stats else None,
            "trust_domains": sorted(str(td) for td in current.bundles),
            # The spiffe_sequence of the own trust domain's bundle, as reported to the CA
            # (`mesh-ca root activate` waits for it); null before the first CA poll.
            "bundle_sequence": getattr(
                current.bundles.get(current.spiffe_id.trust_domain), "sequence", None
            ),
        },
    )


def _policies(state: AdminState) -> AdminResponse:
    audit = state.config.policy.audit if state.config.policy is not None else None
    if state.policies is None:
        return AdminResponse.json(
            200,
            {"configured": False, "status": "not configured", "version": None, "files": []},
        )
    status = state.policies.status()
    loaded = status.get("loaded")
    view: dict[str, Any] = {"configured": True, "audit": audit}
    view |= loaded if isinstance(loaded, dict) else {"version": None, "files": []}
    view["loaded"] = isinstance(loaded, dict)
    view["last_reload_error"] = status.get("last_error")
    view["reloads"] = status.get("reloads", {})
    central = state.control()["policies"] if state.control is not None else None
    view["source"] = "control-plane" if central is not None else "dir"
    if central is not None:
        view["control_plane"] = central
    return AdminResponse.json(200, view)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "<redacted>"
            if any(w in k for w in _SECRET_WORDS) and not k.endswith(("_file", "_dir"))
            else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _upstreams(state: AdminState) -> AdminResponse:
    if state.upstreams is not None:
        return AdminResponse.json(200, {"source": "pool", "upstreams": state.upstreams()})
    configured = [
        {
            "service": out.service,
            "listen": str(out.listen),
            "protocol": out.protocol,
            "spiffe_ids": [str(i) for i in out.spiffe_ids],
            "endpoints": [{"address": str(e), "health": "unknown"} for e in out.endpoints],
        }
        for out in state.config.outbound
    ]
    return AdminResponse.json(200, {"source": "config", "upstreams": configured})


def respond(method: str, path: str, state: AdminState) -> AdminResponse:
    """The response to one admin request. Pure apart from reading the stores."""
    if method not in ("GET", "HEAD"):
        return AdminResponse.json(405, {"error": f"method {method} not allowed"})
    route = path.split("?", 1)[0]
    if route == "/":
        return AdminResponse.json(200, {"endpoints": dict(ENDPOINTS)})
    if route == "/healthz":
        return AdminResponse.json(200, {"status": "ok"})
    if route == "/readyz":
        ready, code, reason = _readiness(state)
        body: dict[str, Any] = {"ready": ready, "reason": reason, "code": code}
        if state.control is not None:
            body["control_plane"] = state.control()
        return AdminResponse.json(200 if ready else 503, body)
    if route == "/metrics":
        if state.metrics is None:
            return AdminResponse.json(503, {"error": "metrics are not wired to this listener"})
        return AdminResponse(200, state.metrics.render(), METRICS_CONTENT_TYPE)
    if route == "/certificate":
        return _certificate(state)
    if route == "/policies":
        return _policies(state)
    if route == "/config":
        return AdminResponse.json(200, _redact(state.config.model_dump(mode="json")))
    if route == "/upstreams":
        return _upstreams(state)
    if route == "/control":
        if state.control is None:
            return AdminResponse.json(200, {"configured": False})
        return AdminResponse.json(200, {"configured": True, **state.control()})
    return AdminResponse.json(
        404, {"error": f"no such endpoint {route}", "endpoints": sorted(["/", *ENDPOINTS])}
    )


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
        response = AdminResponse.json(400, {"error": "bad or incomplete request"})
        method = "GET"
    else:
        method = request.method.decode("ascii", "replace")
        response = respond(method, request.target.decode("ascii", "replace"), state)
    payload = response.body
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(payload))),
        ("connection", "close"),
    ]
    out = h11.Connection(h11.SERVER) if request is None else conn
    if request is None:  # h11 needs a request before a response: answer on a fresh state
        out.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        out.next_event()
    data = out.send(h11.Response(status_code=response.status, headers=headers))
    if method != "HEAD":
        data = (data or b"") + (out.send(h11.Data(data=payload)) or b"")
    data = (data or b"") + (out.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)


async def serve_admin(
    listen: Address | list[trio.SocketListener],
    state: AdminState,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve admin requests on `listen`: an address, or sockets the caller bound already
    (so a taken port is reported at start-up, naming ``admin.listen``)."""
    listeners = (
        listen
        if isinstance(listen, list)
        else await trio.open_tcp_listeners(listen.port, host=listen.host)
    )

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError
            ):
                await _serve_one(stream, state)

    task_status.started()
    await trio.serve_listeners(handler, listeners)
