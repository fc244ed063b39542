"""The demo mesh's processes: the CA server, three apps and their sidecars, on free loopback ports.

The CA is also the control plane: every sidecar registers its inbound listener, finds the
services it calls by discovery (no endpoint lists in its config) and takes its policies
from the CA's central directory ($WORK/policies, ``[control] policy_dir``). Extra instances
of a service (`start_instance`) register the same way and get traffic without any other
sidecar's config changing.

Every child runs in its own session (so Ctrl-C reaches only the orchestrator, which then
stops them in order) with its output in ``WORK/logs``. `Mesh.stop` sends SIGTERM to each
child it started, by pid, and SIGKILL to any that has not exited a few seconds later.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "example.org"
NAMESPACE = "shop"
SERVICES = ("web", "orders", "payments")
# Who calls whom through its outbound sidecar (web → payments is there to be refused).
CALLS = {"web": ("orders", "payments"), "orders": ("payments",), "payments": ()}
_SERVING = re.compile(r"mesh-ca serving on (\S+):(\d+)")
_DASHBOARD = re.compile(r"mesh-ca dashboard on (http://\S+)")
# Sidecars report to the CA this often (`[report]`); the CA's admin listener serves the
# mesh view (`mesh-ca mesh stat`, `mesh-ca check`) from these reports.
REPORT_INTERVAL_SECONDS = 1


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/svc/{service}"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process: the kernel may give a
    just-released port again, and two listeners of one sidecar then clashed (the web
    sidecar refused a config whose admin.listen equalled an outbound listen)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tool(name: str) -> list[str]:
    """argv for `mesh-ca` / `mesh-sidecar`: the console script next to this Python, if any."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {"mesh-ca": "mesh_ca.cli", "mesh-sidecar": "sidecar.cli"}[name]
    return [sys.executable, "-m", module]


def run_tool(*argv: str, cwd: Path) -> str:
    """Run a `mesh-ca`/`mesh-sidecar` command in `cwd`; its stdout, or an error with stderr."""
    done = subprocess.run(
        [*tool(argv[0]), *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Service:
    name: str  # the instance: "orders", or "orders-2" for an extra instance of orders
    service: str = ""  # the service it serves; default: name
    app_port: int = field(default_factory=free_port)
    inbound_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    outbound_ports: dict[str, int] = field(default_factory=dict)

    @property
    def service_name(self) -> str:
        return self.service or self.name

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.service_name)

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def admin_json(self, path: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.admin_url(path), timeout=3) as response:
                value = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            value = json.loads(exc.read())
        return value if isinstance(value, dict) else {"value": value}

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin_url("/metrics"), timeout=3) as response:
            return str(response.read().decode())


CONTROL_TOML = """
[control]
policy_dir = "{policies}"  # the central policy directory, published to every sidecar
lease_ttl_seconds = 6
renew_seconds = 2
policy_poll_seconds = 0.2
"""


def sidecar_toml(
    svc: Service,
    ca_address: str,
    work: Path,
    *,
    static: Mapping[str, int] | None = None,
    control_plane: bool = True,
) -> str:
    """The sidecar config: bootstrap from the CA with a join token, http mode both ways,
    registered with the control plane, calling its upstreams by discovery, policies from
    the control plane. `static` (service → inbound port) names upstreams called at fixed
    endpoints instead; without `control_plane` the sidecar neither registers nor discovers
    (every upstream must be in `static`) and reads the policy directory itself (tests:
    ``workers > 1`` is not supported on the control plane)."""
    static = static or {}
    lines = [
        f"# The {svc.name} sidecar (written by the meshgate demo).",
        "[identity]",
        f'spiffe_id = "{svc.spiffe_id}"',
        f'bundle_file = "{work / "ca" / "bundle.pem"}"',
        f'ca_addresses = ["{ca_address}"]',
        f'state_dir = "{svc.name}/state"',
        f'token_file = "{svc.name}/token"',
        "poll_interval_seconds = 1  # fetch revocations every second (default 30)",
        "",
        "[inbound]",
        f'listen = "127.0.0.1:{svc.inbound_port}"',
        f'app = "127.0.0.1:{svc.app_port}"',
        f'service = "{svc.service_name}"',
        'protocol = "http"',
    ]
    for target in CALLS[svc.service_name]:
        if target in static:
            lines += [
                "",
                "[[outbound]]",
                f'listen = "127.0.0.1:{svc.outbound_ports[target]}"',
                f'service = "{target}"',
                f'endpoints = ["127.0.0.1:{static[target]}"]',
                f'spiffe_ids = ["{spiffe_id(target)}"]',
                'protocol = "http"',
            ]
            continue
        assert control_plane, f"{svc.name} calls {target}: no static endpoint given"
        lines += [
            "",
            "[[outbound]]  # no endpoints: discovered from the control plane",
            f'listen = "127.0.0.1:{svc.outbound_ports[target]}"',
            f'service = "{target}"',
            'protocol = "http"',
        ]
    if control_plane:
        lines += ["", "[policy]", 'source = "control-plane"']
        lines += ["", "[control_plane]", "retry_max_seconds = 1"]
    else:
        lines += ["", "[policy]", f'dir = "{work / "policies"}"']
    lines += [
        "",
        "[admin]",
        f'listen = "127.0.0.1:{svc.admin_port}"',
        "",
        "[log]",
        f'access_log = "{work / "logs" / f"{svc.name}-access.log"}"',
        'format = "json"',
        "",
        "[timeouts]",
        "drain_timeout_seconds = 2",
        "",
        "[report]",
        f"interval_seconds = {REPORT_INTERVAL_SECONDS}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Mesh:
    work: Path
    services: dict[str, Service] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ca_address: str = ""
    ca_admin_port: int = field(default_factory=free_port)  # /metrics, /v1/mesh (plain HTTP)

    def __post_init__(self) -> None:
        for name in SERVICES:
            svc = Service(name)
            svc.outbound_ports = {target: free_port() for target in CALLS[name]}
            self.services[name] = svc
        (self.work / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def ca_admin(self) -> str:
        """HOST:PORT of the CA's loopback admin listener (`mesh-ca mesh --admin`)."""
        return f"127.0.0.1:{self.ca_admin_port}"

    def log_path(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def access_log(self, service: str) -> Path:
        return self.work / "logs" / f"{service}-access.log"

    def app_log(self, service: str) -> Path:
        return self.work / "logs" / f"{service}-app.jsonl"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # Ctrl-C goes to the orchestrator, which stops us
            )
        self.processes[name] = process
        return process

    def start_ca(self, timeout: float = 30) -> str:
        argv = [*tool("mesh-ca"), "serve", "--dir", "ca", "--listen", "127.0.0.1:0"]
        argv += ["--admin-listen", self.ca_admin]
        process = self._spawn("ca", argv)
        deadline = time.monotonic() + timeout
        while not (match := _SERVING.search(self.log_path("ca").read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mesh-ca serve did not start; see {self.log_path('ca')}")
            time.sleep(0.05)
        self.ca_address = f"{match.group(1)}:{match.group(2)}"
        return self.ca_address

    def start_dashboard(self, timeout: float = 30) -> str:
        """`mesh-ca dashboard` over the CA's admin listener; returns the page's URL."""
        argv = [*tool("mesh-ca"), "dashboard", "--admin", self.ca_admin, "--listen", "127.0.0.1:0"]
        process = self._spawn("dashboard", argv)
        deadline = time.monotonic() + timeout
        log = self.log_path("dashboard")
        while not (match := _DASHBOARD.search(log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mesh-ca dashboard did not start; see {log}")
            time.sleep(0.05)
        return match.group(1)

    def start_app(self, name: str) -> None:
        svc = self.services[name]
        argv = [
            sys.executable,
            str(Path(__file__).with_name("demo_services.py")),
            "--name",
            svc.service_name,
            "--port",
            str(svc.app_port),
            "--log",
            str(self.app_log(name)),
        ]
        for target, port in svc.outbound_ports.items():
            argv += ["--upstream", f"{target}=127.0.0.1:{port}"]
        self._spawn(f"{name}-app", argv)

    def write_sidecar_config(self, name: str, token: str) -> Path:
        svc = self.services[name]
        (self.work / name).mkdir(exist_ok=True)
        token_file = self.work / name / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(token.strip() + "\n")
        config = self.work / f"{name}.toml"
        config.write_text(sidecar_toml(svc, self.ca_address, self.work))
        return config

    def add_instance(self, service: str, number: int) -> Service:
        """An extra instance of `service` ("orders-2"): its own app, ports and state."""
        base = self.services[service]
        svc = Service(f"{service}-{number}", service=service)
        svc.outbound_ports = {target: free_port() for target in base.outbound_ports}
        self.services[svc.name] = svc
        return svc

    def stop_process(self, name: str, timeout: float = 10) -> int:
        """SIGTERM one child and wait for it; its exit code (SIGKILL after `timeout`)."""
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(5)

    def start_sidecar(self, name: str) -> None:
        argv = [*tool("mesh-sidecar"), "run", "--config", f"{name}.toml"]
        self._spawn(f"{name}-sidecar", argv)

    def wait_ready(self, timeout: float = 30, names: tuple[str, ...] = SERVICES) -> None:
        """Every sidecar answers /readyz 200 and every app accepts connections."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                process = self.processes[f"{name}-sidecar"]
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the {name} sidecar exited {process.returncode}; "
                        f"see {self.log_path(name + '-sidecar')}"
                    )
                if self._ready(self.services[name]):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {', '.join(sorted(pending))}")
            time.sleep(0.1)

    @staticmethod
    def _ready(svc: Service) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", svc.app_port), timeout=1):
                pass
            with urllib.request.urlopen(svc.admin_url("/readyz"), timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.poll() is None}

    def stop(self, grace: float = 6) -> list[str]:
        """SIGTERM every child, apps before sidecars before the CA; SIGKILL stragglers.
        Returns the names of children that had to be killed."""
        order = sorted(self.processes, key=lambda n: (n == "ca", n.endswith("-sidecar")))
        for name in order:
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        killed = []
        deadline = time.monotonic() + grace
        for name in order:
            process = self.processes[name]
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
                killed.append(name)
        return killed
