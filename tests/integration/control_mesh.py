"""A mesh run by the control plane: `mesh-ca serve` with ``[control]`` (short leases, a
central policy directory), sidecars that register, discover and take central policies.

`ControlMesh` makes the CA directory (``mesh-ca init``, then a ``[control]`` table in its
ca.toml and a policy directory beside it) and writes sidecar configs that bootstrap from
it with join tokens. `NamedApp` is an HTTP app that answers with its own name, so a test
sees which instance served a request. `Load` sends GET requests through an outbound
listener from a thread and keeps every result.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_ca.ca_dir import LoadedCa
from meshgate.identity import SpiffeId
from tests.ca_server_process import TRUST_DOMAIN, CaServer
from tests.integration.ca_mesh import bootstrap_identity, init_ca, serving
from tests.procs import ROOT, Sidecar, free_port, write_config

SCHEMA = ROOT / "policies" / "mesh.cedarschema"
LEASE_TTL_SECONDS = 3
RENEW_SECONDS = 1

REGISTRATION_POLICY = f"""
@id("shop-workloads-serve-their-own-service")
permit (principal in Namespace::"shop", action == Action::"register", resource)
when {{ principal.trust_domain == "{TRUST_DOMAIN}" && principal.service == context.service }};
"""
ORDERS_POLICY = """
@id("shop-reads-orders")
permit (principal in Namespace::"shop", action in Action::"read", resource == Service::"orders");
"""


def workload(service: str) -> SpiffeId:
    return SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/{service}")


@dataclass
class Node:
    """One sidecar's config and ports."""

    name: str
    config: Path
    admin: int
    inbound: int | None = None
    outbound: int | None = None


@dataclass
class ControlMesh:
    tmp: Path
    ca: LoadedCa
    policy_dir: Path
    server: CaServer | None = None
    nodes: dict[str, Node] = field(default_factory=dict)

    @classmethod
    def create(
        cls, tmp: Path, *, lease_ttl: int = LEASE_TTL_SECONDS, renew: int = RENEW_SECONDS
    ) -> ControlMesh:
        ca = init_ca(tmp / "ca")
        policy_dir = ca.path / "control-policies"
        policy_dir.mkdir()
        shutil.copy(SCHEMA, policy_dir / "mesh.cedarschema")
        (policy_dir / "entities.json").write_text("[]\n")
        (policy_dir / "registration.cedar").write_text(REGISTRATION_POLICY)
        (policy_dir / "orders.cedar").write_text(ORDERS_POLICY)
        with (ca.path / "ca.toml").open("a") as toml:
            toml.write(
                "\n[control]\n"
                'policy_dir = "control-policies"\n'
                f"lease_ttl_seconds = {lease_ttl}\n"
                f"renew_seconds = {renew}\n"
                "policy_poll_seconds = 0.1\n"
            )
        return cls(tmp, ca, policy_dir)

    @contextmanager
    def serving(self, *, listen: str = "127.0.0.1:0") -> Iterator[CaServer]:
        with serving(self.ca, self.tmp / "ca-server.log", listen=listen) as server:
            self.server = server
            yield server

    def edit_policy(self, name: str, text: str) -> None:
        """Write a central policy file atomically (the CA never reads half of it)."""
        staging = self.policy_dir / f".{name}.tmp"
        staging.write_text(text)
        staging.replace(self.policy_dir / name)

    def _control(self) -> dict[str, Any]:
        return {"watch_wait_seconds": 5, "retry_max_seconds": 0.5}

    def _identity(self, name: str, spiffe_id: SpiffeId) -> dict[str, Any]:
        assert self.server is not None
        ident = bootstrap_identity(self.ca, self.server, spiffe_id, self.tmp / name)
        return {"spiffe_id": str(spiffe_id), **ident}

    def instance(
        self,
        name: str,
        app_port: int,
        *,
        service: str = "orders",
        spiffe_id: SpiffeId | None = None,
        central_policies: bool = True,
        inbound_port: int | None = None,
        register: bool = True,
        protocol: str = "http",
    ) -> Node:
        """An inbound sidecar of `service` that registers (unless not `register`); its
        policies come from the control plane unless `central_policies` is false (then a
        local copy)."""
        ports = {"admin": free_port(), "inbound": inbound_port or free_port()}
        policy: dict[str, Any] = {"source": "control-plane"}
        if not central_policies:
            local = self.tmp / name / "policies"
            shutil.copytree(self.policy_dir, local, dirs_exist_ok=True)
            policy = {"dir": str(local)}
        config = write_config(
            self.tmp / f"{name}.toml",
            {
                "identity": self._identity(name, spiffe_id or workload(service)),
                "inbound": {
                    "listen": f"127.0.0.1:{ports['inbound']}",
                    "app": f"127.0.0.1:{app_port}",
                    "service": service,
                    "protocol": protocol,
                },
                "policy": policy,
                "control_plane": {**self._control(), "register_inbound": register},
                "admin": {"listen": f"127.0.0.1:{ports['admin']}"},
                "log": {"access_log": "stdout", "format": "json"},
            },
        )
        node = Node(name, config, ports["admin"], inbound=ports["inbound"])
        self.nodes[name] = node
        return node

    def client(
        self, name: str, *, service: str = "orders", protocol: str = "http", **outbound: Any
    ) -> Node:
        """A sidecar of `name` with one outbound that discovers `service`."""
        ports = {"admin": free_port(), "outbound": free_port()}
        config = write_config(
            self.tmp / f"{name}.toml",
            {
                "identity": self._identity(name, workload(name)),
                "outbound": [
                    {
                        "listen": f"127.0.0.1:{ports['outbound']}",
                        "service": service,
                        "protocol": protocol,
                        "eject_seconds": 30,
                        **outbound,
                    }
                ],
                "control_plane": self._control(),
                "admin": {"listen": f"127.0.0.1:{ports['admin']}"},
                "log": {"access_log": "stdout", "format": "json"},
            },
        )
        node = Node(name, config, ports["admin"], outbound=ports["outbound"])
        self.nodes[name] = node
        return node


def control_view(sidecar: Sidecar) -> dict[str, Any]:
    status, body = sidecar.get("/control")
    assert status == 200, body
    return body


def discovered(sidecar: Sidecar) -> set[str]:
    """The endpoint addresses `sidecar`'s (first) outbound dials now."""
    rows = control_view(sidecar)["discovery"][0]["endpoints"]
    return {row["address"] for row in rows}


def registration(sidecar: Sidecar) -> dict[str, Any]:
    view = control_view(sidecar)["registration"]
    assert view is not None
    return dict(view)


def central(sidecar: Sidecar) -> dict[str, Any]:
    view = control_view(sidecar)["policies"]
    assert view is not None
    return dict(view)


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    detail: Callable[[], object] | None = None,
) -> float:
    """Poll `check` until true; the seconds it took. Fails naming `what` (and what
    `detail` says) after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            seen = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        time.sleep(0.02)
    return time.monotonic() - started


class _NamedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: NamedApp

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
            self.server.paths.append(self.path)
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class NamedApp(http.server.ThreadingHTTPServer):
    """Answers every GET with its name; counts requests."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _NamedHandler)
        self.name = name
        self.lock = threading.Lock()
        self.requests = 0
        self.paths: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextmanager
def named_app(name: str) -> Iterator[NamedApp]:
    app = NamedApp(name)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()


def get(port: int, path: str = "/orders/1", *, timeout: float = 10) -> tuple[int, str]:
    """One GET through an outbound listener on a new connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


@dataclass
class Load:
    """GET requests through `port` from a thread, one after another, until stopped."""

    port: int
    results: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.port)
            except OSError as exc:
                status, body = 0, f"{type(exc).__name__}: {exc}"
            self.results.append((time.monotonic(), status, body))

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(15)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]

    def served_by(self, since: float = 0.0) -> Counter[str]:
        return Counter(body for at, status, body in self.results if status == 200 and at >= since)
