"""Two sidecars in http mode: A's outbound (http) → mTLS → B's inbound (http, Cedar) → app.

The policy set is `docs/examples/policies/allow-namespace`: every workload of namespace
"shop" may read service "catalog". Also a small threaded HTTP/1.1 app on 127.0.0.1 that
answers with the path and the `x-forwarded-client-cert` it received, counting connections.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshgate.identity import SpiffeId
from tests.pki import TestPki as Pki
from tests.procs import ROOT, free_port, write_config, write_identity

POLICIES = ROOT / "docs" / "examples" / "policies" / "allow-namespace"


@dataclass
class HttpPair:
    a_config: Path
    b_config: Path
    a_admin: int
    b_admin: int
    a_outbound: int
    b_inbound: int
    a_id: SpiffeId
    b_id: SpiffeId


def http_sidecar_pair(
    pki: Pki,
    tmp: Path,
    app_port: int,
    *,
    workers: int = 1,
    timeouts: dict[str, Any] | None = None,
    outbound: dict[str, Any] | None = None,
) -> HttpPair:
    a_id, b_id = pki.spiffe_id("shop", "frontend"), pki.spiffe_id("shop", "catalog")
    a_files = write_identity(pki, pki.leaf(a_id), tmp / "a")
    b_files = write_identity(pki, pki.leaf(b_id), tmp / "b")
    policy_dir = tmp / "policies"
    if not policy_dir.exists():
        shutil.copytree(POLICIES, policy_dir)
    ports = {k: free_port() for k in ("a_admin", "b_admin", "a_out", "b_in")}
    b_config = write_config(
        tmp / "b.toml",
        {
            "identity": {"spiffe_id": str(b_id), **b_files},
            "inbound": {
                "listen": f"127.0.0.1:{ports['b_in']}",
                "app": f"127.0.0.1:{app_port}",
                "service": "catalog",
                "protocol": "http",
            },
            "policy": {"dir": str(policy_dir)},
            "admin": {"listen": f"127.0.0.1:{ports['b_admin']}"},
            "timeouts": dict(timeouts or {}),
        },
    )
    a_config = write_config(
        tmp / "a.toml",
        {
            "workers": workers,
            "identity": {"spiffe_id": str(a_id), **a_files},
            "outbound": [
                {
                    "listen": f"127.0.0.1:{ports['a_out']}",
                    "service": "catalog",
                    "endpoints": [f"127.0.0.1:{ports['b_in']}"],
                    "spiffe_ids": [str(b_id)],
                    "protocol": "http",
                    **(outbound or {}),
                }
            ],
            "admin": {"listen": f"127.0.0.1:{ports['a_admin']}"},
            "timeouts": dict(timeouts or {}),
        },
    )
    return HttpPair(
        a_config,
        b_config,
        ports["a_admin"],
        ports["b_admin"],
        ports["a_out"],
        ports["b_in"],
        a_id,
        b_id,
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _AppServer

    def do_GET(self) -> None:
        body = f"{self.path} xfcc={self.headers.get('x-forwarded-client-cert', '')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-app-request-id", self.headers.get("x-request-id", ""))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _AppServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)


@contextmanager
def http_app() -> Iterator[_AppServer]:
    """A keep-alive HTTP/1.1 app on a free loopback port (`server.server_address[1]`)."""
    server = _AppServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def threaded_app(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP app of `handler` on a free loopback port (yielded), one thread a connection."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
