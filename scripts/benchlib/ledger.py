"""The ``ledger`` section of scripts/bench.py: where one keep-alive request's CPU goes, in
µs per step, for each sidecar of the http pair.

The pair runs under `scripts/benchlib/sampled_sidecar.py` (a SIGPROF sampler on the
process's CPU time); wrk sends keep-alive requests over one connection (`-c1`: one request
in flight, so every step is the request's own and not contention's) for ``--seconds``.
Each sidecar's CPU per request comes from /proc (utime + stime) around the run; each
sample is put in the first step that one of its frames belongs to, leaf first (so
`ssl.py` called from `meshgate/transport/tls_stream.py` is TLS, and a `socket.send` made by
`meshgate/transport/socket_stream.py` is a socket call); the step's share of the samples times the
CPU per request is its µs. The decision is also measured alone, cached and uncached
(`decide(cache=False)`), on the same policy set with the same request.
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
from datetime import UTC, datetime
from pathlib import Path

from meshgate.identity import SpiffeId
from scripts.benchlib.datapath import (
    Figures,
    bench_certs,
    cpu_seconds,
    meshgate_pair,
    progress,
    run_wrk,
)
from scripts.benchlib.peers import nginx_app
from sidecar.policy.decision import AccessRequest, decide
from sidecar.policy.loader import load_snapshot
from tests.integration.http_mesh import POLICIES
from tests.pki import TestPki
from tests.procs import free_port

__all__ = ["STEPS", "bench_ledger", "step_of", "wait_for_samples"]

# (step, path fragments of the files that belong to it), in the order a stack is matched.
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TLS read and write (ssl record layer)", ("meshgate/transport/tls_stream.py", "/ssl.py")),
    (
        "socket calls and trio waits",
        (
            "meshgate/transport/socket_stream.py",
            "trio/_core/_io_epoll.py",
            "trio/_socket.py",
            "trio/_highlevel_socket.py",
            "meshgate/transport/one_at_a_time.py",
            "meshgate/transport/deadlines.py",
        ),
    ),
    (
        "request and response head parsing",
        ("meshgate/http/reader.py", "meshgate/http/head.py", "meshgate/http/events.py"),
    ),
    ("path and Host normalization", ("meshgate/http/path.py",)),
    (
        "header filtering and rebuilding",
        ("meshgate/http/forwarding.py", "meshgate/http/serialize.py", "/uuid.py"),
    ),
    (
        "the decision (cached here)",
        ("sidecar/policy/", "sidecar/authz/cedar.py", "sidecar/authz/allow_list.py", "cedarpy"),
    ),
    ("metrics (prometheus_client)", ("sidecar/observe/metrics.py", "prometheus_client")),
    (
        "the access log and the observer (observe.py, logging)",
        (
            "sidecar/observe/logs.py",
            "sidecar/observe/access.py",
            "sidecar/observe/access_sink.py",
            "/logging/",
        ),
    ),
    ("pool bookkeeping", ("sidecar/outbound/mesh_pool.py", "sidecar/inbound/app_pool.py")),
    (
        "the handlers' own code (http_inbound/outbound, admission)",
        (
            "sidecar/inbound/http.py",
            "sidecar/inbound/session.py",
            "sidecar/inbound/client.py",
            "sidecar/inbound/decide.py",
            "sidecar/inbound/forward.py",
            "sidecar/inbound/report.py",
            "sidecar/inbound/outcome.py",
            "sidecar/transport/body_pump.py",
            "sidecar/outbound/http.py",
            "meshgate/http/replies.py",
            "sidecar/admission.py",
            "sidecar/connections.py",
        ),
    ),
    ("trio's scheduler and run loop", ("/trio/",)),  # only when no frame above is a step's
)
OTHER = "other sidecar code"


def step_of(stack: list[tuple[str, str]]) -> str:
    """The step a sampled stack (leaf first) belongs to: the innermost frame of a step's
    files decides; one in trio's own code, or in the sidecar's but of no step, before any
    such frame makes it the scheduler or `OTHER` (not what trio ran it for)."""
    for filename, _ in stack:
        for step, fragments in STEPS:
            if any(fragment in filename for fragment in fragments):
                return step
        if "/sidecar/" in filename or "/mesh_ca/" in filename or "/meshgate/" in filename:
            return OTHER
    return OTHER


def _other_file(stack: list[tuple[str, str]]) -> str:
    for filename, name in stack:
        if "/sidecar/" in filename or "/mesh_ca/" in filename or "/meshgate/" in filename:
            return f"{filename.rsplit('/', 2)[-2]}/{filename.rsplit('/', 1)[-1]}:{name}"
    return f"{stack[0][0].rsplit('/', 1)[-1]}:{stack[0][1]}" if stack else "?"


def _samples(path: Path) -> tuple[Counter[str], Counter[str], dict[str, Counter[str]]]:
    """Samples per step; the `OTHER` ones per innermost sidecar function; and per step,
    the leaf functions (where inside a step the time went)."""
    data = json.loads(path.read_text())
    steps: Counter[str] = Counter()
    other: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = {}
    for frames, count in data["stacks"]:
        stack = [(f, n) for f, n in frames]
        step = step_of(stack)
        steps[step] += count
        if step == OTHER:
            other[_other_file(stack)] += count
        if stack:
            leaf = f"{stack[0][0].rsplit('/', 1)[-1]}:{stack[0][1]}"
            leaves.setdefault(step, Counter())[leaf] += count
    return steps, other, leaves


def wait_for_samples(path: Path, seconds: float = 20.0) -> None:
    """Until a sampled sidecar has written its samples to `path` (it does on SIGTERM)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no samples written to {path}")
        time.sleep(0.05)


def _decision_us(iterations: int = 2000) -> dict[str, float]:
    """`decide` on the bench's policy set for the request the bench sends, cached (after a
    first call fills the cache) and uncached, in CPU µs a call."""
    snapshot = load_snapshot(POLICIES, datetime.now(UTC))
    pki = TestPki()
    request = AccessRequest(
        principal=SpiffeId.parse(str(pki.spiffe_id("shop", "frontend"))),
        action="GET",
        service="catalog",
        source_address="127.0.0.1",
        now=datetime.now(UTC),
        path="/",
        host="127.0.0.1",
        headers=(("host", "127.0.0.1"),),
    )
    if not decide(snapshot, request).allowed:
        raise RuntimeError("ledger: the bench request is not allowed by the bench policies")
    out: dict[str, float] = {}
    for name, cache in (("cached", True), ("uncached", False)):
        start = time.process_time()
        for _ in range(iterations):
            decide(snapshot, request, cache=cache)
        out[name] = round((time.process_time() - start) / iterations * 1e6, 1)
    return out


def bench_ledger(args: argparse.Namespace) -> Figures:
    seconds = max(2.0, args.seconds)
    figures: Figures = {"seconds": seconds, "load_average_before": os.getloadavg()[0]}
    pki = TestPki()
    certs = bench_certs(pki)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgate-bench-")))
        app = nginx_app(tmp, free_port())
        stack.callback(app.stop)
        progress("ledger: starting the sampled pair")
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
        run_wrk(port, 2, 1, close=False, pids=[])  # warm: imports, pools, the decision cache
        out = {"outbound": tmp / "mg" / "a.samples.json", "inbound": tmp / "mg" / "b.samples.json"}
        pids = {"outbound": a_pids, "inbound": b_pids}
        for side in pids:
            os.kill(pids[side][0], signal.SIGUSR1)
        cpu0 = {side: cpu_seconds(p) for side, p in pids.items()}
        progress(f"ledger: wrk -c1 for {seconds:g} s")
        result = run_wrk(port, seconds, 1, close=False, pids=[])
        cpu = {side: cpu_seconds(p) - cpu0[side] for side, p in pids.items()}
        for side in pids:
            os.kill(pids[side][0], signal.SIGUSR2)
        for path in out.values():
            wait_for_samples(path)
        figures["requests"] = result.requests
        figures["rps"] = round(result.rps)
        figures["errors"] = result.errors
        for side, path in out.items():
            counts, other, leaves = _samples(path)
            total = sum(counts.values())
            per_request = cpu[side] / max(1, result.requests) * 1e6
            figures[side] = {
                "cpu_us_per_request": round(per_request),
                "samples": total,
                "steps_us": {
                    step: round(counts[step] / max(1, total) * per_request, 1)
                    for step in [*(s for s, _ in STEPS), OTHER]
                },
                "other_top": {
                    name: round(n / max(1, total) * per_request, 1)
                    for name, n in other.most_common(6)
                },
                "leaves_top": {
                    step: {
                        name: round(n / max(1, total) * per_request, 1)
                        for name, n in counter.most_common(4)
                    }
                    for step, counter in leaves.items()
                },
            }
    figures["decision_alone_us"] = _decision_us()
    figures["load_average_after"] = os.getloadavg()[0]
    return figures
