"""A keep-alive HTTP/1.1 app that writes each response head and body in two sends with
Nagle's algorithm on, as Python's `http.server` does: the app behind ``bench.py latency
--latency-app two-sends``. On a kept-alive connection its body waits for the delayed ACK
of its head (~40 ms) unless the reader ACKs at once; called with a connection per request
it answers in well under a millisecond.

    python -m scripts.benchlib.two_sends_app PORT
"""

from __future__ import annotations

import contextlib
import socketserver
import sys

_BODY = b"x" * 64


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        # A proxy that resets its idle upstream connection is not an error of the bench.
        with contextlib.suppress(ConnectionError):
            self._serve()

    def _serve(self) -> None:
        while self.rfile.readline():
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n")
            self.connection.sendall(_BODY)


class _App(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str]) -> int:
    with _App(("127.0.0.1", int(argv[0])), _Handler) as app:
        app.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
