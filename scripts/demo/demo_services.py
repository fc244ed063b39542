"""The demo shop's three apps, `web` → `orders` → `payments`, as tiny stdlib HTTP servers.

Each app knows nothing about TLS or identities: it listens on plain loopback HTTP and calls
the next service through its own sidecar's outbound port (``--upstream NAME=127.0.0.1:PORT``).
Apps pass `traceparent` and `x-request-id` on to the calls they make, as instrumented apps do,
so one request can be followed across both hops. Every request an app receives is appended
to ``--log`` as a JSON line (method, path, trace headers, the verified caller from
`x-forwarded-client-cert`), so the demo and its test can see what actually arrived.

    python demo_services.py --name web --port 8080 --log web.jsonl \
        --upstream orders=127.0.0.1:9001 --upstream payments=127.0.0.1:9002
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

# (method, path prefix) → the upstream call the app makes for it: (service, method, path).
# None as the path means "the same path"; no entry means the app answers itself.
ROUTES: dict[str, list[tuple[str, str, str, str, str | None]]] = {
    "web": [
        ("POST", "/checkout", "orders", "POST", "/orders"),
        ("POST", "/pay", "payments", "POST", "/charge"),  # web may not do this: 403
        ("*", "/orders", "orders", "*", None),
        ("*", "/stats", "orders", "*", None),
    ],
    "orders": [("POST", "/orders", "payments", "POST", "/charge")],
    "payments": [],
}
TRACE_HEADERS = ("traceparent", "tracestate", "x-request-id")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ShopApp
    # One send per response (the buffer is flushed after each request) and no Nagle: a
    # head and a body in two small sends waited ~40 ms for a delayed ACK on every
    # kept-alive connection after the first request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.record(self.command, self.path, self.headers)
        route = self.server.route(self.command, self.path)
        if route is None:
            status, reply = self.server.answer(self.command, self.path, body)
        else:
            service, method, path = route
            status, reply = self.server.call(service, method, path, body, self.headers)
        data = (json.dumps(reply) + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the JSON request log is the app's log


class ShopApp(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, port: int, upstreams: dict[str, str], log_path: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.name = name
        self.upstreams = upstreams
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the app)
        self._lock = threading.Lock()
        self._next_order = 1000

    def record(self, method: str, path: str, headers: Any) -> None:
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "service": self.name,
            "method": method,
            "path": path,
            **{name: headers.get(name) for name in TRACE_HEADERS},
            "xfcc": headers.get("x-forwarded-client-cert"),
        }
        with self._lock:
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()

    def route(self, method: str, path: str) -> tuple[str, str, str] | None:
        for want, prefix, service, up_method, up_path in ROUTES[self.name]:
            if want in ("*", method) and (path == prefix or path.startswith(prefix + "/")):
                return service, method if up_method == "*" else up_method, up_path or path
        return None

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if self.name == "payments" and method == "POST" and path == "/charge":
            return 200, {"service": "payments", "charged": True, "bytes": len(body)}
        if self.name == "orders" and method in ("GET", "HEAD") and path.startswith("/orders/"):
            return 200, {"service": "orders", "order": path.rsplit("/", 1)[1], "state": "paid"}
        if self.name == "orders" and path == "/stats":
            return 200, {"service": "orders", "orders_today": self._next_order - 1000}
        if self.name == "orders" and method == "DELETE":
            return 204, {}
        if path in ("/", "/healthz"):
            return 200, {"service": self.name, "ok": True}
        return 404, {"service": self.name, "error": f"no route for {method} {path}"}

    def call(
        self, service: str, method: str, path: str, body: bytes, headers: Any
    ) -> tuple[int, dict[str, Any]]:
        """Call `service` through the sidecar's outbound port; pass its status through."""
        host, _, port = self.upstreams[service].rpartition(":")
        sent = {name: headers[name] for name in TRACE_HEADERS if headers.get(name)}
        sent["content-type"] = "application/json"
        if service == "orders" and method == "POST":
            with self._lock:
                self._next_order += 1
                body = json.dumps({"order": self._next_order}).encode()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(method, path, body=body or None, headers=sent)
            response = conn.getresponse()
            raw = response.read()
        except OSError as exc:
            return 502, {"service": self.name, "error": f"{service} unreachable: {exc}"}
        finally:
            conn.close()
        try:
            upstream: Any = json.loads(raw) if raw.strip() else {}
        except ValueError:
            upstream = raw.decode(errors="replace")
        return response.status, {"service": self.name, "called": service, "upstream": upstream}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one app of the meshgate demo shop")
    parser.add_argument("--name", required=True, choices=sorted(ROUTES))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="JSON lines: one per request received")
    parser.add_argument("--upstream", action="append", default=[], metavar="NAME=HOST:PORT")
    args = parser.parse_args(argv)
    upstreams = dict(item.split("=", 1) for item in args.upstream)
    app = ShopApp(args.name, args.port, upstreams, args.log)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=app.shutdown).start())
    print(f"{args.name} app listening on 127.0.0.1:{app.server_address[1]}", file=sys.stderr)
    app.serve_forever()
    app.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
