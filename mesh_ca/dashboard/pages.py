"""What the dashboard answers to one request. Pure: the mesh JSON is fetched by the caller.

The dashboard has no login: it is meant for loopback (an SSH tunnel for a remote operator),
like the CA's admin listener it reads. Two things keep a page on another origin from using it
through the operator's browser: the Host header must name the listener itself (so a DNS
rebinding page, whose Host is its own name, is refused), and the page's Content-Security-Policy
lets it load and fetch only from itself. What it shows comes from requests (paths, principals),
so the page inserts every value as text, never as markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final
from urllib.parse import parse_qs, urlsplit

__all__ = ["ASSETS", "WINDOWS", "Reply", "allowed_hosts", "dashboard_reply"]

WINDOWS: Final = ("1m", "5m", "15m")
_JSON: Final = "application/json"
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = (
    ("content-security-policy", _CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)
_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def _load_assets() -> dict[str, bytes]:
    folder = resources.files("mesh_ca.dashboard") / "assets"
    return {name: (folder / name).read_bytes() for name in _TYPES}


ASSETS: Final = _load_assets()
_PATHS: Final = {"/": "index.html", "/index.html": "index.html"} | {f"/{n}": n for n in _TYPES}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = _SECURITY_HEADERS


def _error(status: int, code: str, detail: str) -> Reply:
    body = f'{{"error":"{code}","detail":"{detail}"}}'.encode()
    return Reply(status, body, _JSON)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host header values that name this listener (``localhost`` too, on loopback)."""
    names = {host}
    if host in ("127.0.0.1", "::1", "localhost"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return frozenset(f"{name}:{port}".lower() for name in names)


def mesh_window_of(target: str) -> str | None:
    """The window a ``/api/mesh`` target asks for (default ``1m``), or None if not one."""
    values = parse_qs(urlsplit(target).query).get("window", ["1m"])
    return values[0] if len(values) == 1 and values[0] in WINDOWS else None


def dashboard_reply(
    method: str, target: str, host: str | None, allowed: frozenset[str], mesh: bytes | None
) -> Reply:
    """The reply to one request. `mesh` is the admin listener's JSON for the requested
    window (None: it could not be fetched); only ``/api/mesh`` uses it."""
    if host is None or host.lower() not in allowed:
        return _error(421, "wrong_host", "the Host header does not name this dashboard")
    if method not in ("GET", "HEAD"):
        return _error(405, "method_not_allowed", "the dashboard only reads: use GET")
    path = urlsplit(target).path
    if path == "/api/mesh":
        if mesh_window_of(target) is None:
            return _error(400, "bad_window", "window must be one of 1m, 5m, 15m")
        if mesh is None:
            return _error(502, "ca_unreachable", "the CA admin listener did not answer")
        return Reply(200, mesh, _JSON)
    if path == "/healthz":
        return Reply(200, b'{"status":"ok"}', _JSON)
    name = _PATHS.get(path)
    if name is None:
        return _error(404, "not_found", "try /")
    return Reply(200, ASSETS[name], _TYPES[name])
