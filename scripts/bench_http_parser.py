"""Micro-benchmark: HTTP/1.1 request parsing with h11, httptools (llhttp) and our reader.

Usage: .venv/bin/python scripts/bench_http_parser.py [--seconds 1.0]

Three workloads, each parsed to completion (head fields + body bytes + end of message):
  single     one typical request head (browser-like, 9 headers), a fresh parser each time
  pipelined  16 keep-alive GETs in one buffer, one parser for the whole buffer
  body       a POST with a 4 KiB Content-Length body and a POST with 4 chunks of 1 KiB

Results are CPU microseconds per request (process time, best of 5 runs: the machine is
shared) and ratios to httptools. h11 needs a
response cycle between keep-alive requests (it is a full connection state machine), so its
pipelined figure includes sending a minimal response; that is the price of using it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from importlib.metadata import version

import h11
import httptools

from meshgate.http import Data, EndOfMessage, RequestHead, RequestReader

HEAD = (
    b"GET /api/v1/orders/12345?expand=items&limit=20 HTTP/1.1\r\n"
    b"Host: orders.shop.svc:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: session=4f1c2a9e8b7d6c5e4f3a2b1c0d9e8f7a; theme=dark\r\n"
    b"X-Request-Id: 6f1c2a9e-8b7d-4c5e-9f3a-2b1c0d9e8f7a\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
PIPELINE_N = 16
PIPELINED = HEAD * PIPELINE_N
CL_BODY = (
    b"POST /api/v1/orders HTTP/1.1\r\nHost: orders\r\nContent-Type: application/json\r\n"
    b"Content-Length: 4096\r\n\r\n" + b"x" * 4096
)
CHUNKED_BODY = (
    (
        b"POST /api/v1/orders HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"400\r\n" + b"y" * 1024 + b"\r\n"
    )
    + (b"400\r\n" + b"y" * 1024 + b"\r\n") * 3
    + b"0\r\n\r\n"
)


class _Sink:
    """httptools callbacks: collect what a proxy needs (url, headers, body)."""

    __slots__ = ("body", "complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = 0
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        self.complete += 1


def httptools_parse(data: bytes, expected: int) -> None:
    sink = _Sink()
    parser = httptools.HttpRequestParser(sink)
    parser.feed_data(data)
    parser.get_method()
    assert sink.complete == expected


def h11_parse(data: bytes, expected: int) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    done = 0
    while done < expected:
        event = conn.next_event()
        if type(event) is h11.EndOfMessage:
            done += 1
            if done < expected:
                conn.send(h11.Response(status_code=204, headers=[]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
        elif event is h11.NEED_DATA:
            raise AssertionError("h11 wanted more data")


def ours_parse(data: bytes, expected: int) -> None:
    reader = RequestReader()
    reader.feed(data)
    done = 0
    while done < expected:
        event = reader.next_event()
        if type(event) is EndOfMessage:
            done += 1
        elif type(event) is not RequestHead and type(event) is not Data:
            raise AssertionError(f"reader wanted more data: {event!r}")


def per_request_us(fn: Callable[[bytes, int], None], data: bytes, n: int, seconds: float) -> float:
    best = float("inf")
    for _ in range(5):
        loops = 0
        start = time.process_time()
        deadline = start + seconds / 5
        while True:
            for _ in range(50):
                fn(data, n)
            loops += 50
            now = time.process_time()
            if now >= deadline:
                break
        best = min(best, (now - start) / (loops * n))
    return best * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args()
    workloads = [
        ("single head", HEAD, 1),
        (f"pipelined x{PIPELINE_N}", PIPELINED, PIPELINE_N),
        ("POST 4 KiB Content-Length", CL_BODY, 1),
        ("POST 4x1 KiB chunked", CHUNKED_BODY, 1),
    ]
    parsers: list[tuple[str, Callable[[bytes, int], None]]] = [
        ("httptools", httptools_parse),
        ("h11", h11_parse),
        ("meshgate RequestReader", ours_parse),
    ]
    versions = f"h11 {version('h11')}, httptools {version('httptools')}"
    print(f"{versions}; CPU µs per request, best of 5")
    print(f"{'workload':28} " + " ".join(f"{name:>24}" for name, _ in parsers))
    for label, data, n in workloads:
        figures = [per_request_us(fn, data, n, args.seconds) for _, fn in parsers]
        base = figures[0]
        cells = " ".join(f"{f:>12.2f} ({f / base:>5.1f}x)    " for f in figures)
        print(f"{label:28} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
