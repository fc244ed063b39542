"""Process helpers for integration tests: free ports, sidecar processes, tiny apps.

Real processes on 127.0.0.1 only. Ports come from `free_port`: below the kernel's ephemeral
range, a disjoint block per xdist worker, handed out in turn and checked by binding.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tests.pki import Leaf
from tests.pki import TestPki as Pki

ROOT = Path(__file__).resolve().parent.parent


# Port 0 gave ports from the ephemeral range, where every outgoing connection of every test
# also takes its local port, and the two xdist workers could be handed the same just-freed
# port: a sidecar then failed to bind ("Address already in use") now and then. Ports here
# come from below that range (32768+ on Linux), from a block per worker, each at most once
# per session; a random start keeps two concurrent runs on one machine apart too.
_PORT_BLOCK = 2500
_PORT_BASE = 20000


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = worker.removeprefix("gw")
    return int(digits) % 4 if digits.isdigit() else 0


def _port_sequence() -> Iterator[int]:
    first = _PORT_BASE + _worker_index() * _PORT_BLOCK
    start = random.randrange(_PORT_BLOCK)
    for offset in range(_PORT_BLOCK):
        yield first + (start + offset) % _PORT_BLOCK


_ports = _port_sequence()


def free_port() -> int:
    """A loopback TCP port nobody listens on, never handed out before in this session."""
    for port in _ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port left in this worker's block of {_PORT_BLOCK}")


def write_identity(pki: Pki, leaf: Leaf, directory: Path) -> dict[str, str]:
    """svid.pem (leaf + intermediate), svid.key (0600), bundle.pem: as `mesh-ca issue` does."""
    cert, key = leaf.write(directory)
    bundle = directory / "bundle.pem"
    bundle.write_bytes(pki.bundle_pem())
    return {"cert_file": str(cert), "key_file": str(key), "bundle_file": str(bundle)}


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """A sidecar TOML file from nested dicts (lists of dicts become [[tables]])."""
    lines: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml(v)}" for k, v in item.items()]
        elif isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{section} = {_toml(body)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Sidecar:
    process: subprocess.Popen[bytes]
    admin_port: int
    log_path: Path

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def _wait_admin(sidecar: Sidecar, path: str, what: str, timeout: float) -> None:
    """Until the admin listener answers `path` with 200; raises if the sidecar exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sidecar.process.poll() is not None:
            raise RuntimeError(f"sidecar exited {sidecar.process.returncode}:\n{sidecar.log()}")
        try:
            if sidecar.get(path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} after {timeout} s:\n{sidecar.log()}")


def wait_ready(sidecar: Sidecar, timeout: float = 15) -> None:
    _wait_admin(sidecar, "/readyz", "sidecar not ready", timeout)


def wait_answering(sidecar: Sidecar, timeout: float = 15) -> None:
    """Until the admin listener answers ``/healthz`` (ready or not)."""
    _wait_admin(sidecar, "/healthz", "admin listener not answering", timeout)


@contextmanager
def sidecar_process(
    config_path: Path,
    admin_port: int,
    wait: Callable[[Sidecar], None],
    module: str = "sidecar.cli",
) -> Iterator[Sidecar]:
    """Run ``python -m MODULE run --config``, wait as told, kill it at the end if still up."""
    log_path = config_path.with_suffix(".log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(config_path)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    sidecar = Sidecar(process, admin_port, log_path)
    try:
        wait(sidecar)
        yield sidecar
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@contextmanager
def running_sidecar(config_path: Path, admin_port: int) -> Iterator[Sidecar]:
    """Start `mesh-sidecar run --config`, wait for /readyz, stop it (SIGKILL if stuck)."""
    with sidecar_process(config_path, admin_port, wait_ready) as sidecar:
        yield sidecar


@contextmanager
def started_sidecar(config_path: Path, admin_port: int) -> Iterator[Sidecar]:
    """Start `mesh-sidecar run --config` and wait only for its admin listener (not for
    readiness); kill it at the end if a test left it running."""
    with sidecar_process(config_path, admin_port, wait_answering) as sidecar:
        yield sidecar


def wait_readyz(sidecar: Sidecar, code: str, timeout: float = 30) -> dict[str, Any]:
    """Until ``/readyz`` reports `code` (e.g. ``ca_unreachable``); its body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if sidecar.process.poll() is not None:
            raise RuntimeError(f"sidecar exited {sidecar.process.returncode}:\n{sidecar.log()}")
        _, body = sidecar.get("/readyz")
        if body.get("code") == code:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"/readyz never said {code} in {timeout} s (last {body}):\n{sidecar.log()}")


@dataclass
class EchoApp:
    """A tiny trio echo app on 127.0.0.1 that counts the connections it saw."""

    port: int = 0
    connections: int = 0
    peers: list[str] = field(default_factory=list)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._echo, listeners)

    async def _echo(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
                await stream.send_eof()  # echo the half-close too
        except trio.BrokenResourceError:
            pass


async def exchange(port: int, payload: bytes, *, timeout: float = 10) -> bytes:
    """Connect, send `payload`, half-close, and read until EOF."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(payload)
            await stream.send_eof()
            received = bytearray()
            while data := await stream.receive_some(65536):
                received += data
            return bytes(received)
