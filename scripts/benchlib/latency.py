"""The ``latency`` section of scripts/bench.py: latency as users see it, at fixed request rates.

In one run: direct (an nginx app), the meshgate pair in http mode (and the pair of git
``--baseline REF``), an nginx pair and a haproxy pair (`scripts/benchlib/peers.py`), each
driven open-loop (`scripts/benchlib/open_loop.py`: latency from each request's due time,
so coordinated omission is avoided) at 100 and 500 requests/s and at one rate near the
meshgate pair's capacity (``--latency-capacity-fraction`` of its closed-loop wrk req/s,
measured first). Rounds interleave every rate and target, so the shared machine's load
falls on all alike. Figures: p50, p90, p99, p99.9 and max per target and rate, and the
same percentiles minus direct's (the latency the proxies add), plus the proxies' CPU µs
per request at that rate.

``--latency-app two-sends`` puts `scripts/benchlib/two_sends_app.py` behind every target
instead of nginx: an app that writes head and body in two sends with Nagle on, so a proxy
that reuses its upstream connection and delays its ACKs stalls ~40 ms a request (direct
over a kept-alive connection stalls too: that is the app's own doing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scripts.benchlib.datapath import (
    ROOT,
    Figures,
    Target,
    baseline_tree,
    bench_certs,
    cpu_seconds,
    ensure_compiled_build,
    meshgate_pair,
    peer_pair,
    progress,
    run_wrk,
)
from scripts.benchlib.open_loop import OpenLoopResult, run_open_loop
from scripts.benchlib.peers import haproxy_pair, nginx_app, nginx_pair, wait_port
from tests.pki import TestPki
from tests.procs import free_port

__all__ = ["bench_latency"]

_PERCENTILES = ("p50", "p90", "p99", "p99.9")


@contextlib.contextmanager
def _two_sends_app(port: int) -> Iterator[None]:
    argv = [sys.executable, "-m", "scripts.benchlib.two_sends_app", str(port)]
    with subprocess.Popen(argv, cwd=ROOT) as app:
        try:
            wait_port(port)
            yield
        finally:
            app.kill()


def _capacity(entry: int) -> float:
    """The closed-loop req/s of a target (wrk, 16 keep-alive connections, 3 s)."""
    return run_wrk(entry, 3, 16, close=False, pids=[]).rps


def _merge(parts: list[OpenLoopResult]) -> OpenLoopResult:
    merged = OpenLoopResult(parts[0].rate, 0.0, 0)
    for part in parts:
        merged.seconds += part.seconds
        merged.scheduled += part.scheduled
        merged.latencies_ms += part.latencies_ms
        merged.send_lags_ms += part.send_lags_ms
        merged.failed += part.failed
        merged.unfinished += part.unfinished
        merged.client_cpu_seconds += part.client_cpu_seconds
    return merged


def bench_latency(args: argparse.Namespace) -> Figures:
    rounds = max(1, args.rounds)
    slice_seconds = max(1.0, args.seconds / rounds)
    figures: Figures = {
        "seconds_per_target_and_rate": slice_seconds * rounds,
        "rounds": rounds,
        "connections": args.concurrency,
        "baseline": args.baseline,
        "baseline2": args.baseline2,
        "app": args.latency_app,
        "load_average_before": os.getloadavg()[0],
    }
    pki = TestPki()
    certs = bench_certs(pki)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgate-bench-")))
        port = free_port()
        if args.latency_app == "nginx":
            stack.callback(nginx_app(tmp, port).stop)
        else:
            stack.enter_context(_two_sends_app(port))
        targets: dict[str, Target] = {"direct": (port, [], [])}
        progress("latency: starting every target")
        targets["meshgate"] = stack.enter_context(
            meshgate_pair(pki, certs, tmp / "mg1", port, access_log="stdout")
        )
        if args.baseline:
            root = stack.enter_context(baseline_tree(args.baseline))
            targets["meshgate_baseline"] = stack.enter_context(
                meshgate_pair(pki, certs, tmp / "mg0", port, root=root, access_log="stdout")
            )
        if args.baseline2:
            root2 = stack.enter_context(baseline_tree(args.baseline2))
            targets["meshgate_baseline2"] = stack.enter_context(
                meshgate_pair(pki, certs, tmp / "mg3", port, root=root2, access_log="stdout")
            )
        if args.compiled:
            ensure_compiled_build()
            targets["meshgate_compiled"] = stack.enter_context(
                meshgate_pair(pki, certs, tmp / "mg4", port, access_log="stdout", build="compiled")
            )
        targets["nginx"] = stack.enter_context(
            peer_pair(nginx_pair, "nginx", tmp, pki, certs, port)
        )
        targets["haproxy"] = stack.enter_context(
            peer_pair(haproxy_pair, "haproxy", tmp, pki, certs, port)
        )
        for entry, _, _ in targets.values():  # warm up: pools, caches, imports
            run_open_loop(entry, 100, 0.5, connections=args.concurrency)
        capacity = _capacity(targets["meshgate"][0])
        near = max(100, round(capacity * args.latency_capacity_fraction / 10) * 10)
        rates = sorted({100, 500, near})
        figures["meshgate_closed_loop_rps"] = round(capacity)
        figures["near_capacity_rate"] = near
        parts: dict[int, dict[str, list[OpenLoopResult]]] = {
            r: {name: [] for name in targets} for r in rates
        }
        cpu: dict[int, dict[str, float]] = {r: dict.fromkeys(targets, 0.0) for r in rates}
        for index in range(rounds):
            for rate in rates:
                progress(f"latency: round {index + 1}/{rounds}, {rate} req/s, {slice_seconds:g} s")
                for name, (entry, a_pids, b_pids) in targets.items():
                    cpu0 = cpu_seconds(a_pids + b_pids)
                    parts[rate][name].append(
                        run_open_loop(entry, rate, slice_seconds, connections=args.concurrency)
                    )
                    cpu[rate][name] += cpu_seconds(a_pids + b_pids) - cpu0
        for rate in rates:
            rows: Figures = {}
            for name in targets:
                merged = _merge(parts[rate][name])
                row = merged.figures()
                row["proxy_cpu_us_per_request"] = round(
                    cpu[rate][name] / max(1, merged.scheduled) * 1e6
                )
                rows[name] = row
            direct = rows["direct"]["latency_ms"]
            added = {
                name: {
                    p: round(row["latency_ms"][p] - direct[p], 3) for p in (*_PERCENTILES, "max")
                }
                for name, row in rows.items()
                if name != "direct"
            }
            figures[f"{rate}_rps"] = {"results": rows, "added_over_direct_ms": added}
    figures["load_average_after"] = os.getloadavg()[0]
    figures["targets"] = {"added_p99_ms_at_100": "<= 1", "added_p99_ms_at_500": "<= 2"}
    return figures
