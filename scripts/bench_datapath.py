#!/usr/bin/env python3
"""Data-path benchmark: the same small request/response load sent directly to an echo app
and through the two-sidecar chain (app → sidecar A → mTLS → sidecar B → app), in one run.

Two modes: keep-alive (one connection per client task, many requests) and a new
connection per request. Reports requests/s, p50/p99 latency and CPU per request (all
processes: load generator, app, sidecars), each chain figure also as a ratio to direct.
Bounded in time: ``--seconds`` per phase (4 phases). Usage:

    .venv/bin/python scripts/bench_datapath.py [--seconds 3] [--concurrency 8] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.mesh import sidecar_pair
from tests.pki import TestPki
from tests.procs import free_port, running_sidecar

APP = """
import functools, sys, trio
async def echo(stream):
    try:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
    except trio.BrokenResourceError:
        pass
trio.run(functools.partial(trio.serve_tcp, echo, int(sys.argv[1]), host="127.0.0.1"))
"""
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    own = resource.getrusage(resource.RUSAGE_SELF)
    return total + own.ru_utime + own.ru_stime


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1] * 1000

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6


async def _load(
    port: int, keepalive: bool, seconds: float, workers: int, size: int, pids: list[int]
) -> Result:
    payload = b"x" * size
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    async def roundtrip(stream: trio.SocketStream) -> None:
        await stream.send_all(payload)
        got = 0
        while got < size:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError("connection closed mid-response")
            got += len(data)

    async def worker() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port) if keepalive else None
        while trio.current_time() < deadline:
            start = time.perf_counter()
            if stream is None:
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    await roundtrip(s)
            else:
                await roundtrip(stream)
            latencies.append(time.perf_counter() - start)
        if stream is not None:
            await stream.aclose()

    cpu0, t0 = _cpu_seconds(pids), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
    elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(pids) - cpu0
    return Result(len(latencies), elapsed, latencies, cpu)


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="request and response bytes")
    args = parser.parse_args()
    app_port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        subprocess.Popen([sys.executable, "-c", APP, str(app_port)]) as app,
    ):
        _wait_port(app_port)
        pair = sidecar_pair(TestPki(), Path(tmp), app_port, idle_timeout_seconds=60)
        with (
            running_sidecar(pair.b_config, pair.b_admin) as b,
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            pids = [app.pid, a.process.pid, b.process.pid]
            rows = []
            for mode, keepalive in (("keep-alive", True), ("new connection", False)):
                results = {}
                for path, port in (("direct", app_port), ("chain", pair.a_outbound)):
                    results[path] = trio.run(
                        _load, port, keepalive, args.seconds, args.concurrency, args.size, pids
                    )
                rows.append((mode, results["direct"], results["chain"]))
        app.kill()
    print(
        f"data path: {args.concurrency} clients, {args.size} B request/response, "
        f"{args.seconds:g} s per phase, {os.cpu_count()} CPUs"
    )
    print(
        f"{'mode':<15}{'path':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}"
        f"{'rps x':>8}{'p50 x':>8}{'p99 x':>8}{'CPU x':>8}"
    )
    for mode, direct, chain in rows:
        for name, r in (("direct", direct), ("chain", chain)):
            ratios = (
                f"{r.rps / direct.rps:>8.2f}{r.pct(50) / direct.pct(50):>8.2f}"
                f"{r.pct(99) / direct.pct(99):>8.2f}"
                f"{r.cpu_us_per_request / direct.cpu_us_per_request:>8.2f}"
            )
            print(
                f"{mode:<15}{name:<8}{r.rps:>9.0f}{r.pct(50):>9.2f}{r.pct(99):>9.2f}"
                f"{r.cpu_us_per_request:>12.0f}{ratios}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
