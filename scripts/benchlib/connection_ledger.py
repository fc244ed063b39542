"""The ``connection-ledger`` section of scripts/bench.py: what a new client connection per
request adds to the outbound sidecar's CPU, step by step, next to keep-alive requests.

    python scripts/bench.py connection-ledger [--seconds 16] [--rounds 2] [--concurrency 16]

The http pair runs under `scripts/benchlib/sampled_sidecar.py` (the `ledger` section's
SIGPROF sampler); wrk runs keep-alive and ``Connection: close`` rounds in turn (as
`bench.py http` does, ``--concurrency`` connections), and the samples of each scenario
are added up over its rounds. Each sidecar's CPU per request comes from /proc around the
runs; a step's share of the samples times that is its µs. A sample belongs to the
innermost frame on its stack that names a step (`STEPS`: file and function), so the
system call inside `LeanSocketStream.close` is "close", and everything under the
outbound's `_serve` is "the request itself".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from scripts.benchlib.datapath import (
    Figures,
    bench_certs,
    cpu_seconds,
    meshgate_pair,
    progress,
    run_wrk,
)
from scripts.benchlib.peers import nginx_app
from tests.pki import TestPki
from tests.procs import free_port

__all__ = ["STEPS", "bench_connection_ledger", "step_of"]

# (step, "file:function" endings), matched innermost frame first.
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "wrap the socket (trio socket, SocketStream, detach, LeanSocketStream)",
        (
            "socket_stream.py:__init__",
            "socket_stream.py:take",
            "socket_stream.py:lean",
            "_highlevel_socket.py:__init__",
            "_socket.py:from_stdlib_socket",
            "_socket.py:__init__",
        ),
    ),
    ("spawn the connection's task", ("_run.py:start_soon", "_run.py:spawn_impl")),
    (
        "accept (system call, loop, trio's checkpoint)",
        (
            "_highlevel_socket.py:accept",
            "acceptor.py:_accept_forever",
            "acceptor.py:loop",
            "app.py:loop",
        ),
    ),
    ("admission (slot, cancel scope, connection metrics)", ("admission.py:admitted",)),
    ("peer address", ("socket_stream.py:peer_address",)),
    (
        "close (aclose_forcefully / close)",
        (
            "_highlevel_generic.py:aclose_forcefully",
            "socket_stream.py:close",
            "socket_stream.py:aclose",
            "relay.py:abort",
        ),
    ),
    ("the request itself (read, forward, relay, access line)", ("outbound/http.py:_serve",)),
    (
        "the handler's shell (handle, guarded)",
        ("outbound/http.py:handle", "app.py:guarded", "acceptor.py:guarded"),
    ),
)
REST = "trio's run loop and the rest"
SCENARIOS = (("keep_alive", False), ("new_connection", True))


def step_of(stack: list[tuple[str, str]]) -> str:
    """The step of a sampled stack (leaf first): the innermost frame that names one."""
    for filename, function in stack:
        frame = f"{filename}:{function}"
        for step, endings in STEPS:
            if frame.endswith(endings):
                return step
    return REST


def _samples(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for stack, n in json.loads(path.read_text())["stacks"]:
        counts[step_of([(f, fn) for f, fn in stack])] += n
    return counts


def _wait_for(path: Path, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no samples in {path}")
        time.sleep(0.05)


def bench_connection_ledger(args: argparse.Namespace) -> Figures:
    rounds = max(1, args.rounds)
    slice_seconds = float(max(1, round(args.seconds / rounds)))
    figures: Figures = {
        "connections": args.concurrency,
        "seconds_per_scenario": slice_seconds * rounds,
        "load_average_before": os.getloadavg()[0],
    }
    pki = TestPki()
    certs = bench_certs(pki)
    counts = {name: {"a": Counter[str](), "b": Counter[str]()} for name, _ in SCENARIOS}
    cpu = {name: {"a": 0.0, "b": 0.0} for name, _ in SCENARIOS}
    requests = dict.fromkeys(cpu, 0)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgate-bench-")))
        app = nginx_app(tmp, free_port())
        stack.callback(app.stop)
        progress("connection-ledger: starting the sampled pair")
        port, a_pids, b_pids = stack.enter_context(
            meshgate_pair(
                pki,
                certs,
                tmp / "mg",
                app.entry_port,
                access_log="stdout",
                module="scripts.benchlib.sampled_sidecar",
            )
        )
        pids = {"a": a_pids, "b": b_pids}
        out = {"a": tmp / "mg" / "a.samples.json", "b": tmp / "mg" / "b.samples.json"}
        for _, close in SCENARIOS:
            run_wrk(port, 1, args.concurrency, close=close, pids=[])  # warm up
        for index in range(rounds):
            progress(f"connection-ledger: round {index + 1}/{rounds}, {slice_seconds:g} s each")
            for name, close in SCENARIOS:
                for path in out.values():
                    path.unlink(missing_ok=True)
                for side in pids:
                    os.kill(pids[side][0], signal.SIGUSR1)
                cpu0 = {side: cpu_seconds(p) for side, p in pids.items()}
                result = run_wrk(port, slice_seconds, args.concurrency, close=close, pids=[])
                for side, p in pids.items():
                    cpu[name][side] += cpu_seconds(p) - cpu0[side]
                    os.kill(p[0], signal.SIGUSR2)
                requests[name] += result.requests
                for side, path in out.items():
                    _wait_for(path)
                    counts[name][side].update(_samples(path))
    for name, _ in SCENARIOS:
        n = max(1, requests[name])
        row: Figures = {"requests": requests[name]}
        for side, label in (("a", "outbound"), ("b", "inbound")):
            per_request = cpu[name][side] / n * 1e6
            total = max(1, sum(counts[name][side].values()))
            row[f"{label}_cpu_us_per_request"] = round(per_request)
            if side == "a":
                row["outbound_steps_us"] = {
                    step: round(counts[name][side][step] / total * per_request, 1)
                    for step in [*(s for s, _ in STEPS), REST]
                }
        figures[name] = row
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


SECTIONS = {"connection-ledger": bench_connection_ledger}
