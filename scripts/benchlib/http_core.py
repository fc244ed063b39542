"""The ``http-core`` section of scripts/bench.py: the sans-I/O HTTP core's work for one
keep-alive request, pure Python against the mypyc build (meshgate/native.py), in the same run.

Each round runs one child per build (``MESHGATE_HTTP_BUILD=pure`` / ``compiled``, so each
loads only its own) that times, with `timeit` (best of 7), the steps one request costs a
sidecar: reading the request (head and end of message) and the response (head, a 46-byte
body, end), path and Host normalization, rebuilding the request head on each side, relaying
the response head; and ``both_hops``, everything the outbound and the inbound sidecar do
for one request, in order. The best round is reported: other jobs only ever add time.
Two request heads: wrk's (two lines, what `bench.py http` sends) and a browser-like one of
11 lines. With ``--instructions`` the ``both_hops`` loop is also counted under callgrind
(instructions do not move with the machine's load; seconds do).

Run as a script, it is that child: ``http_core.py wrk|browser [N]`` prints the step times
as JSON, or with N runs ``both_hops`` N times (for callgrind).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from meshgate import native  # noqa: E402
from meshgate.http import (  # noqa: E402
    Data,
    HttpLimits,
    PeerCertificate,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    forward_request_headers,
    normalize_target,
    serialize_request_head,
    xfcc_value,
)
from meshgate.http.inbound_rules import InboundRules  # noqa: E402
from meshgate.http.relay import relay_response_head  # noqa: E402
from meshgate.identity import SpiffeId  # noqa: E402

__all__ = ["bench_http_core"]

Figures = dict[str, Any]

HEADS = {
    "wrk": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "browser": (
        b"GET /api/v1/orders/12345?expand=items&limit=20 HTTP/1.1\r\n"
        b"Host: orders.shop.svc:8080\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0\r\n"
        b"Accept: application/json, text/plain, */*\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\n"
        b"Accept-Language: en-US,en;q=0.9\r\n"
        b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl\r\n"
        b"Cookie: session=abcdef0123456789; theme=dark\r\n"
        b"X-Request-Id: 6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f\r\n"
        b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
        b"Connection: keep-alive\r\n\r\n"
    ),
}
# What the bench's nginx app answers, give or take the date.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 11:50:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 46\r\nConnection: keep-alive\r\n"
    b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n"
    b'{"id": 12345, "status": "shipped", "items": 3}'
)
_BODY = RESPONSE[RESPONSE.index(b"\r\n\r\n") + 4 :]
_OUR = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")
_PEER = PeerCertificate(SpiffeId.parse("spiffe://example.org/ns/shop/svc/web"), b"\x30" * 600)
_XFCC = xfcc_value(_OUR, _PEER)
_RULES = InboundRules(local_ports=frozenset({8080}))
_UNBOUNDED = HttpLimits(max_body_bytes=None)


def _request_id() -> str:
    return "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"


def _read_request(reader: RequestReader, wire: bytes) -> RequestHead:
    reader.feed(wire)
    head = reader.next_event()
    reader.next_event()  # EndOfMessage
    reader.next_event()  # NEED_DATA
    assert isinstance(head, RequestHead)
    return head


def _read_response(reader: ResponseReader, wire: bytes) -> ResponseHead:
    reader.expect("GET")
    reader.feed(wire)
    head = reader.next_event()
    assert isinstance(reader.next_event(), Data)
    reader.next_event()  # EndOfMessage
    reader.next_event()  # NEED_DATA
    assert isinstance(head, ResponseHead)
    return head


def steps(wire: bytes) -> dict[str, Callable[[], object]]:
    """The timed steps for request head `wire` (each leaves its reader ready for the next)."""
    a_client, a_upstream = RequestReader(), ResponseReader(_UNBOUNDED)  # the outbound's
    b_client, b_app = RequestReader(), ResponseReader(_UNBOUNDED)  # the inbound's
    head = _read_request(a_client, wire)
    response = _read_response(a_upstream, RESPONSE)

    def rewrite_outbound() -> bytes:
        target = normalize_target(head.target)
        fwd = forward_request_headers(
            head.headers, our_id=None, peer=None, new_request_id=_request_id
        )
        return serialize_request_head(head.method, target.target, fwd.headers, head.framing)

    def normalize_inbound() -> str:
        normalize_target(head.target)
        return _RULES.checked_host(head, ())

    def rewrite_inbound() -> bytes:
        fwd = forward_request_headers(
            head.headers, our_id=_OUR, peer=_PEER, new_request_id=_request_id, xfcc=_XFCC
        )
        app = _RULES.app_headers(fwd.headers, host="orders.shop.svc", source_ip="127.0.0.1")
        return serialize_request_head(head.method, head.target, app, head.framing)

    def relay() -> bytes:
        return relay_response_head(
            response, method="GET", client_version="1.1", keep_client=True
        ).wire

    def both_hops() -> None:
        a_head = _read_request(a_client, wire)  # A, outbound: the client's request
        target = normalize_target(a_head.target)
        fwd = forward_request_headers(
            a_head.headers, our_id=None, peer=None, new_request_id=_request_id
        )
        sent = serialize_request_head(a_head.method, target.target, fwd.headers, a_head.framing)
        b_head = _read_request(b_client, sent)  # B, inbound: what A sent
        b_target = normalize_target(b_head.target)
        host = _RULES.checked_host(b_head, ())
        b_fwd = forward_request_headers(
            b_head.headers, our_id=_OUR, peer=_PEER, new_request_id=_request_id, xfcc=_XFCC
        )
        app = _RULES.app_headers(b_fwd.headers, host=host, source_ip="127.0.0.1")
        serialize_request_head(b_head.method, b_target.target, app, b_head.framing)
        b_resp = _read_response(b_app, RESPONSE)  # B: the app's answer, relayed
        relayed = relay_response_head(b_resp, method="GET", client_version="1.1", keep_client=True)
        a_resp = _read_response(a_upstream, relayed.wire + _BODY)  # A: B's, relayed
        relay_response_head(a_resp, method="GET", client_version="1.1", keep_client=True)

    return {
        "read request": lambda: _read_request(a_client, wire),
        "read response": lambda: _read_response(a_upstream, RESPONSE),
        "normalize path and Host (inbound)": normalize_inbound,
        "rebuild request head (outbound)": rewrite_outbound,
        "rebuild request head (inbound)": rewrite_inbound,
        "relay response head": relay,
        "both_hops": both_hops,
    }


def _child(kind: str, loops: int | None) -> None:
    fns = steps(HEADS[kind])
    if loops is not None:  # callgrind mode
        for _ in range(loops):
            fns["both_hops"]()
        return
    out: dict[str, float] = {}
    for name, fn in fns.items():
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()
        out[name] = round(min(timer.repeat(repeat=7, number=number)) / number * 1e6, 2)
    print(json.dumps({"build": native.http_build(), "us": out}))


def _run_child(build: str, kind: str, prefix: list[str] | None = None, loops: int = 0) -> str:
    command = [*(prefix or []), sys.executable, str(Path(__file__).resolve()), kind]
    if prefix:
        command.append(str(loops))
    env = {**os.environ, native.BUILD_ENV: build}
    return subprocess.run(
        command, check=True, capture_output=True, text=True, env=env, cwd=ROOT
    ).stdout


def _instructions(build: str, kind: str) -> int:
    """Instructions of one `both_hops` call: two loop lengths, the difference."""
    from scripts.benchlib.callgrind import require_valgrind, total_instructions, valgrind_prefix

    require_valgrind()
    counts = []
    with tempfile.TemporaryDirectory(prefix="meshgate-cg-") as name:
        for loops in (200, 1200):
            out = Path(name) / f"cg-{loops}.out"
            _run_child(build, kind, valgrind_prefix(out), loops)
            counts.append(total_instructions(out))
    return (counts[1] - counts[0]) // 1000


def bench_http_core(args: argparse.Namespace) -> Figures:
    from scripts.benchlib.datapath import ensure_compiled_build, progress

    ensure_compiled_build()
    rounds = max(1, args.rounds)
    figures: Figures = {"rounds": rounds, "load_average_before": os.getloadavg()[0]}
    for kind in HEADS:
        runs: dict[str, list[dict[str, float]]] = {"pure": [], "compiled": []}
        for index in range(rounds):
            progress(f"http-core: {kind} head, round {index + 1}/{rounds}")
            for build, results in runs.items():
                result = json.loads(_run_child(build, kind))
                assert result["build"] == build, result
                results.append(result["us"])
        table: Figures = {}
        for step in runs["pure"][0]:
            # The least disturbed round, as timeit advises: other jobs only ever add time.
            pure = min(r[step] for r in runs["pure"])
            compiled = min(r[step] for r in runs["compiled"])
            table[step] = {
                "pure_us": pure,
                "compiled_us": compiled,
                "ratio": round(compiled / pure, 2),
            }
        figures[kind] = table
        if args.instructions:
            progress(f"http-core: {kind} head, instructions under callgrind")
            pure_i, compiled_i = _instructions("pure", kind), _instructions("compiled", kind)
            figures[kind]["both_hops_instructions"] = {
                "pure": pure_i,
                "compiled": compiled_i,
                "ratio": round(compiled_i / pure_i, 2),
            }
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
