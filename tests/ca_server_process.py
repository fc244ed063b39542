"""A real CA server process on loopback for the CA server and client tests.

`running_ca_server` makes a CA directory with the CA core's `init_ca_dir`, starts
``python -m mesh_ca.server --listen 127.0.0.1:0``, reads the port from its stderr line and
stops it with SIGTERM (expecting a clean exit 0). `https_request` speaks raw HTTP/1.1 over
TLS so tests can send what a well-behaved client never would.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h11
import trio

from mesh_ca.ca_dir import LoadedCa, init_ca_dir
from mesh_ca.config import CaConfig, ServerConfig
from mesh_ca.store import StateStore
from mesh_ca.tokens import new_token
from meshgate.identity import BundleSet, SpiffeId
from meshgate.transport.mtls import client_context

TRUST_DOMAIN = "example.org"
_SERVING = re.compile(r"mesh-ca serving on (\S+):(\d+)")


@dataclass
class CaServer:
    ca: LoadedCa
    host: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def bundles(self) -> BundleSet:
        return BundleSet.of(self.ca.bundle)

    def store(self) -> StateStore:
        return self.ca.open_store()

    def token(self, spiffe_id: SpiffeId | str, *, ttl_seconds: int = 600) -> str:
        sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
        token, token_id, secret_hash = new_token()
        now = datetime.now(UTC)

        store = self.store()
        try:
            store.add_token(token_id, secret_hash, sid, now, now + timedelta(seconds=ttl_seconds))
        finally:
            store.close()
        return token

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def make_ca(directory: Path, **server: object) -> LoadedCa:
    config = CaConfig(trust_domain=TRUST_DOMAIN, server=ServerConfig(**server))  # type: ignore[arg-type]
    return init_ca_dir(directory, TRUST_DOMAIN, datetime.now(UTC), config=config)


@contextlib.contextmanager
def running_ca_server(directory: Path, **server: object) -> Iterator[CaServer]:
    ca = make_ca(directory / "ca", **server)
    with serving_ca_dir(ca, directory / "server.log") as running:
        yield running


@contextlib.contextmanager
def serving_ca_dir(
    ca: LoadedCa,
    log_path: Path,
    *,
    argv: tuple[str, ...] = ("-m", "mesh_ca.server"),
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    listen: str = "127.0.0.1:0",
) -> Iterator[CaServer]:
    """Serve an existing CA directory in a child process on 127.0.0.1:0 until the block ends.

    Stopped with SIGTERM (a test may have killed it already). `argv` picks the entry point
    (``("-m", "mesh_ca.cli", "serve")`` runs ``mesh-ca serve``); `env` is added to ours.
    `listen` is for a restart on the address an earlier server had (sidecars know only it).
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *argv, "--dir", str(ca.path), "--listen", listen, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            match = _SERVING.search(log_path.read_text(errors="replace"))
            if match:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"CA server did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield CaServer(ca, match.group(1), int(match.group(2)), log_path, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes


async def https_request(
    server: CaServer,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: list[tuple[str, str]] | None = None,
    context: ssl.SSLContext | None = None,
) -> RawReply:
    """One HTTP/1.1 request over TLS (server not authenticated by ID: tests only)."""
    context = context or client_context(server.bundles)
    tcp = await trio.open_tcp_stream(server.host, server.port)
    stream = trio.SSLStream(tcp, context)
    try:
        conn = h11.Connection(h11.CLIENT)
        all_headers = [("host", server.address), *(headers or [])]
        if body is not None and not any(k == "content-length" for k, _ in all_headers):
            all_headers.append(("content-length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=path, headers=all_headers)) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        with trio.fail_after(10):
            await stream.send_all(data)
            status, reply_headers, chunks = 0, {}, []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    reply_headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return RawReply(status, reply_headers, b"".join(chunks))
    finally:
        await trio.aclose_forcefully(stream)
