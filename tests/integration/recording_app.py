"""A threaded HTTP/1.1 keep-alive app on 127.0.0.1 that answers every method with 200 and
records what it received (method, path, headers), for the http inbound integration tests."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.procs import write_config

__all__ = ["RecordingServer", "recording_app", "request", "set_policy_options"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingServer

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.seen.append((self.command, self.path, dict(self.headers.items())))
        body = f"{self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RecordingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def methods(self) -> list[str]:
        with self.lock:
            return [method for method, _, _ in self.seen]


@contextmanager
def recording_app() -> Iterator[RecordingServer]:
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def request(
    port: int, method: str, path: str, conn: http.client.HTTPConnection | None = None
) -> tuple[int, bytes]:
    """One request on `conn` (kept open for the caller) or on a fresh connection."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def set_policy_options(config_path: Any, **options: Any) -> None:
    """Add keys to the [policy] table of a config written by `write_config`."""
    import tomllib

    data = tomllib.loads(config_path.read_text())
    data["policy"] |= options
    write_config(config_path, data)
