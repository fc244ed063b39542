"""Real sidecar processes under attack: a policy set with forbids to bypass, a recording
app that keeps every request it completely received, and raw clients that speak bytes.

`mesh(tmp)` starts B (inbound, http, Cedar) and, when asked, A (outbound) — the pair of
tests/integration/http_mesh.py with the policy set below. `MeshClient` is a workload of
namespace "shop" talking mTLS straight to B's inbound (a compromised peer: valid SVID,
hostile bytes); `PlainClient` is a local app talking to A's outbound.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import socket
import ssl
import threading
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from meshgate.transport.mtls import mesh_context
from tests.integration.http_mesh import POLICIES, HttpPair, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import Sidecar, running_sidecar, sidecar_process, wait_ready, write_config

__all__ = [
    "Client",
    "MeshClient",
    "PlainClient",
    "RecordingApp",
    "Response",
    "SecurityMesh",
    "metric_value",
    "security_mesh",
]

# The permit lets every "shop" workload call catalog; each forbid is one thing an attack
# tries to get past.
POLICY = """
@id("shop-uses-catalog")
permit (principal in Namespace::"shop", action in Action::"http", resource == Service::"catalog");

@id("no-internal-host")
forbid (principal, action, resource) when { context.host == "internal.svc" };

@id("no-admin-routes")
forbid (principal, action, resource)
when { context.path == "/admin" || context.path like "/admin/*" };

@id("reports-from-the-office-only")
forbid (principal, action, resource)
when {
  context.path == "/reports" &&
  !(context.headers has "x-forwarded-for" && context.headers["x-forwarded-for"] == "10.0.0.1")
};

@id("no-admin-role")
forbid (principal, action, resource)
when { context.headers has "x-role" && context.headers["x-role"] == "admin" };
"""


def _write_policies(target: Path) -> None:
    shutil.copytree(POLICIES, target)
    for old in target.glob("*.cedar"):
        old.unlink()
    (target / "security.cedar").write_text(POLICY)
    (target / "tests.toml").unlink(missing_ok=True)
    schema = target / "mesh.cedarschema"
    text = schema.read_text()
    declared = '"x-tenant"?: String,'
    extra = '\n  "x-role"?: String,\n  "x-forwarded-for"?: String,'
    schema.write_text(text.replace(declared, declared + extra))


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]  # as received, copies kept
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingApp

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            with self.server.lock:
                self.server.partial += 1  # the head came, the body was cut: not a request
            self.close_connection = True
            return
        with self.server.lock:
            self.server.seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
        answer = f"{self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RecordingApp(http.server.ThreadingHTTPServer):
    """Records each request it received completely (head and whole body)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.partial = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Unclosable:
    """The connection's one buffered file, which http.client must not close after a
    response (we read on: the next response, or the EOF that follows a refusal)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def close(self) -> None:
        pass


def _read_response(stream: BinaryIO) -> Response:
    class _Sock:  # http.client reads from one buffered file we keep across responses
        def makefile(self, *_: Any, **__: Any) -> Any:
            return _Unclosable(stream)

    response = http.client.HTTPResponse(_Sock())  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    return Response(response.status, list(response.getheaders()), body)


class Client:
    sock: socket.socket

    def __init__(self) -> None:
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> Response:
        return _read_response(self.stream)

    def ask(self, data: bytes) -> Response:
        self.send(data)
        return self.response()

    def closed(self) -> bool:
        """Whether the server closed the connection (EOF or reset) with nothing more."""
        try:
            return self.stream.read(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


class MeshClient(Client):
    """A "shop" workload's mTLS connection straight to B's inbound."""

    def __init__(self, pki: Pki, port: int, namespace: str = "shop") -> None:
        leaf = pki.leaf(pki.spiffe_id(namespace, "intruder"))
        context = mesh_context("client", leaf.chain_pem(), leaf.key_pem(), pki.bundles)
        context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock = context.wrap_socket(raw)
        super().__init__()


class PlainClient(Client):
    """The local app's plain connection to A's outbound."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        super().__init__()


@dataclass
class SecurityMesh:
    pki: Pki
    pair: HttpPair
    app: RecordingApp
    b: Sidecar
    a: Sidecar | None = None
    clients: list[Client] = field(default_factory=list)

    def mesh_client(self) -> MeshClient:
        client = MeshClient(self.pki, self.pair.b_inbound)
        self.clients.append(client)
        return client

    def plain_client(self) -> PlainClient:
        client = PlainClient(self.pair.a_outbound)
        self.clients.append(client)
        return client

    def ask(self, data: bytes) -> Response:
        """One request on a fresh mTLS connection to B."""
        return self.mesh_client().ask(data)


def metric_value(admin_port: int, sample: str) -> float:
    """The value of one sample line (`name{labels}`) of a sidecar's /metrics; 0 if absent."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


@contextmanager
def _sidecar_process(config: Path, admin_port: int, module: str | None) -> Iterator[Sidecar]:
    """The real sidecar, or a stand-in module with the same CLI (e.g. a faulty engine)."""
    with sidecar_process(config, admin_port, wait_ready, module or "sidecar.cli") as sidecar:
        yield sidecar


@contextmanager
def security_mesh(
    tmp: Path,
    *,
    with_outbound: bool = False,
    inbound: dict[str, Any] | None = None,
    timeouts: dict[str, Any] | None = None,
    b_timeouts: dict[str, Any] | None = None,
    b_module: str | None = None,
) -> Iterator[SecurityMesh]:
    """B (and A when `with_outbound`) running with the policy set above; `timeouts` for
    both, `b_timeouts` on top for B alone; `inbound` adds keys to B's [inbound] table;
    `b_module` runs B as `python -m b_module` instead."""
    pki = Pki()
    _write_policies(tmp / "policies")
    with ExitStack() as stack:
        app = RecordingApp()
        threading.Thread(target=app.serve_forever, daemon=True).start()
        stack.callback(app.server_close)
        stack.callback(app.shutdown)
        pair = http_sidecar_pair(pki, tmp, app.port, timeouts=timeouts)
        if inbound or b_timeouts:
            data = tomllib.loads(pair.b_config.read_text())
            data["inbound"] |= inbound or {}
            data["timeouts"] |= b_timeouts or {}
            write_config(pair.b_config, data)
        b = stack.enter_context(_sidecar_process(pair.b_config, pair.b_admin, b_module))
        a = None
        if with_outbound:
            a = stack.enter_context(running_sidecar(pair.a_config, pair.a_admin))
        mesh = SecurityMesh(pki, pair, app, b, a)
        try:
            yield mesh
        finally:
            for client in mesh.clients:
                client.close()
