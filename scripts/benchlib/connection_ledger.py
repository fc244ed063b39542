"""The ``connection-ledger`` section of scripts/bench.py: what a new client connection per
request adds to the outbound sidecar's CPU, step by step, next to keep-alive requests.

    python scripts/bench.py connection-ledger [--seconds 16] [--rounds 2] [--baseline REF]

The http pair runs under `scripts/benchlib/sampled_sidecar.py` (the `ledger` section's
SIGPROF sampler); wrk runs keep-alive and ``Connection: close`` rounds in turn (as
`bench.py http` does, ``--concurrency`` connections), and the samples of each scenario
are added up over its rounds; with ``--baseline REF`` the pair of git REF is measured in
the same rounds. Each sidecar's CPU per request comes from /proc around the
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
from collections import Counter
from pathlib import Path

from scripts.benchlib.datapath import (
    ROOT,
    Figures,
    baseline_tree,
    bench_certs,
    cpu_seconds,
    meshgate_pair,
    progress,
    run_wrk,
    wrk_slices,
)
from scripts.benchlib.ledger import wait_for_samples
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


def bench_connection_ledger(args: argparse.Namespace) -> Figures:
    rounds, slice_seconds = wrk_slices(args)
    figures: Figures = {
        "connections": args.concurrency,
        "seconds_per_scenario": slice_seconds * rounds,
        "baseline": args.baseline,
        "load_average_before": os.getloadavg()[0],
    }
    pki = TestPki()
    certs = bench_certs(pki)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgate-bench-")))
        app = nginx_app(tmp, free_port())
        stack.callback(app.stop)
        progress("connection-ledger: starting the sampled pairs")
        roots = {"meshgate": ROOT}
        if args.baseline:
            roots["meshgate_baseline"] = stack.enter_context(baseline_tree(args.baseline))
        pairs = {
            target: (
                stack.enter_context(
                    meshgate_pair(
                        pki,
                        certs,
                        tmp / target,
                        app.entry_port,
                        access_log="stdout",
                        root=root,
                        module="scripts.benchlib.sampled_sidecar",
                    )
                ),
                tmp / target,
            )
            for target, root in roots.items()
        }
        tallies = {target: _Tally() for target in pairs}
        for (port, _, _), _ in pairs.values():
            for _, close in SCENARIOS:
                run_wrk(port, 1, args.concurrency, close=close, pids=[])  # warm up
        for index in range(rounds):
            progress(f"connection-ledger: round {index + 1}/{rounds}, {slice_seconds:g} s each")
            for target, ((port, a_pids, b_pids), directory) in pairs.items():
                for name, close in SCENARIOS:
                    tallies[target].run(
                        name,
                        port,
                        {"a": a_pids, "b": b_pids},
                        directory,
                        close,
                        slice_seconds,
                        args.concurrency,
                    )
    for target, tally in tallies.items():
        figures[target] = tally.figures()
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


class _Tally:
    """One pair's samples, CPU and requests per scenario, added up over the rounds."""

    def __init__(self) -> None:
        self.counts = {name: {"a": Counter[str](), "b": Counter[str]()} for name, _ in SCENARIOS}
        self.cpu = {name: {"a": 0.0, "b": 0.0} for name, _ in SCENARIOS}
        self.requests = dict.fromkeys(self.cpu, 0)

    def run(
        self,
        name: str,
        port: int,
        pids: dict[str, list[int]],
        directory: Path,
        close: bool,
        seconds: float,
        connections: int,
    ) -> None:
        out = {side: directory / f"{side}.samples.json" for side in pids}
        for path in out.values():
            path.unlink(missing_ok=True)
        for side_pids in pids.values():
            os.kill(side_pids[0], signal.SIGUSR1)
        cpu0 = {side: cpu_seconds(p) for side, p in pids.items()}
        result = run_wrk(port, seconds, connections, close=close, pids=[])
        for side, p in pids.items():
            self.cpu[name][side] += cpu_seconds(p) - cpu0[side]
            os.kill(p[0], signal.SIGUSR2)
        self.requests[name] += result.requests
        for side, path in out.items():
            wait_for_samples(path)
            self.counts[name][side].update(_samples(path))

    def figures(self) -> Figures:
        figures: Figures = {}
        for name, _ in SCENARIOS:
            n = max(1, self.requests[name])
            row: Figures = {"requests": self.requests[name]}
            for side, label in (("a", "outbound"), ("b", "inbound")):
                per_request = self.cpu[name][side] / n * 1e6
                row[f"{label}_cpu_us_per_request"] = round(per_request)
            counts = self.counts[name]["a"]
            total = max(1, sum(counts.values()))
            per_request = self.cpu[name]["a"] / n * 1e6
            row["outbound_steps_us"] = {
                step: round(counts[step] / total * per_request, 1)
                for step in [*(s for s, _ in STEPS), REST]
            }
            figures[name] = row
        return figures


SECTIONS = {"connection-ledger": bench_connection_ledger}
