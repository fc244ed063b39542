"""Data-path sections of scripts/bench.py: ``http``, ``datapath`` (tcp) and ``memory``.

``http``: in one run, wrk against direct (nginx app), the meshgate pair in http mode
(Cedar decision per request at the inbound sidecar; workers = 1 and workers = 2), an
nginx pair and a haproxy pair (same mTLS hop, `scripts/benchlib/peers.py`). Two
scenarios: keep-alive clients, and a new client connection per request
(``Connection: close``). Figures: requests/s, p50/p99 latency (wrk), CPU per request of
the proxy processes (utime+stime from /proc before/after), proxy RSS, ratios to nginx
and to direct.

``datapath``: the tcp-mode chain against a trio echo app, keep-alive and new connection
per request (formerly scripts/bench_datapath.py).

``latency`` (open-loop, fixed rates) lives in `scripts/benchlib/latency.py`.

``memory``: the sidecars' RSS idle, with 1,000 open idle client connections (outbound) and
1,000 idle mTLS connections (inbound), and per idle pooled mTLS connection between them.

Why one module: the three data-path sections share the same process
set-up (certificates, the sidecar pair, wrk, CPU and RSS sampling); each section is one
function at the end. A benchmark script, not imported by the product.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import resource
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.benchlib.peers import Tls, haproxy_pair, nginx_app, nginx_pair, wait_port  # noqa: E402
from tests.integration.http_mesh import POLICIES  # noqa: E402
from tests.pki import Leaf, TestPki  # noqa: E402
from tests.procs import Sidecar, free_port, wait_ready, write_config  # noqa: E402

Figures = dict[str, Any]
_TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    """Direct children (worker processes of a `workers > 1` sidecar)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


# -- wrk -----------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / max(1, self.requests) * 1e6


def run_wrk(port: int, seconds: float, connections: int, close: bool, pids: list[int]) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}/")
    cpu0 = cpu_seconds(pids)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pids) - cpu0
    total = re.search(r"(\d+) requests in ([0-9.]+)(ms|s|m)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if total is None or p50 is None or p99 is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)) + sum(
        int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out)
    )
    return WrkResult(
        int(total.group(1)),
        _ms(total.group(2) + total.group(3)) / 1000,
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        errors,
        cpu,
    )


# -- the meshgate pair ---------------------------------------------------------------------


@contextlib.contextmanager
def _sidecar(
    config_path: Path,
    admin_port: int,
    root: Path,
    module: str = "sidecar.cli",
    build: str = "pure",
) -> Iterator[Sidecar]:
    """`python -m sidecar.cli run` from the source tree `root` (this checkout, or a baseline
    exported by `baseline_tree`); waits for /readyz, kills it afterwards. `module` may be a
    wrapper with the same command line (the ledger's sampler). `build`: which build of
    `meshgate.http` it loads (`MESHGATE_HTTP_BUILD`, meshgate/native.py): pure unless a
    target asks for the compiled one, so a leftover build never changes what a row
    measures (trees before the compiled build ignore it)."""
    log_path = config_path.with_suffix(".log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(config_path)],
            cwd=root,
            stdout=log,
            stderr=log,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
                "MESHGATE_HTTP_BUILD": build,
            },
        )
    sidecar = Sidecar(process, admin_port, log_path)
    try:
        wait_ready(sidecar)
        yield sidecar
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def ensure_compiled_build() -> None:
    """Build `meshgate/http/_compiled/` (scripts/build_compiled.py) unless it matches the
    sources already; the compiled targets then load it (`MESHGATE_HTTP_BUILD=compiled`)."""
    script = ROOT / "scripts" / "build_compiled.py"
    check = [sys.executable, str(script), "--check"]
    if subprocess.run(check, check=False, stdout=subprocess.DEVNULL).returncode:
        progress("compiling meshgate/http with mypyc (scripts/build_compiled.py)")
        subprocess.run([sys.executable, str(script)], check=True, stdout=sys.stderr)


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """The sources of git `ref` (`git archive`, nothing in the repository is touched), so
    an older sidecar can be measured in the same run as the current one."""
    with tempfile.TemporaryDirectory(prefix="meshgate-baseline-") as name:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", name], input=archive, check=True)
        yield Path(name)


@dataclass
class Certs:
    client: Leaf
    server: Leaf
    client_id: str
    server_id: str


def bench_certs(pki: TestPki) -> Certs:
    """SVIDs that also carry DNS `localhost` (nginx verifies its upstream by name)."""
    client_id = str(pki.spiffe_id("shop", "frontend"))
    server_id = str(pki.spiffe_id("shop", "catalog"))
    return Certs(
        pki.raw_leaf([client_id], dns_names=("localhost",)),
        pki.raw_leaf([server_id], dns_names=("localhost",)),
        client_id,
        server_id,
    )


def write_tls(pki: TestPki, leaf: Leaf, directory: Path) -> Tls:
    chain, key = leaf.write(directory)
    bundle = directory / "bundle.pem"
    bundle.write_bytes(pki.bundle_pem())
    return Tls(chain, key, bundle)


@contextlib.contextmanager
def meshgate_pair(
    pki: TestPki,
    certs: Certs,
    tmp: Path,
    app_port: int,
    *,
    protocol: str = "http",
    workers: int = 1,
    access_log: str = "off",
    root: Path = ROOT,
    module: str = "sidecar.cli",
    limits: dict[str, int] | None = None,
    build: str = "pure",
) -> Iterator[tuple[int, list[int], list[int]]]:
    """Start B (inbound) and A (outbound) from the sources in `root`; yields (entry port,
    A pids, B pids). `limits`: more `[limits]` keys (the baseline's config may not know
    them). `build`: "pure" or "compiled" `meshgate.http` (see `_sidecar`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    a_tls = write_tls(pki, certs.client, tmp / "a")
    b_tls = write_tls(pki, certs.server, tmp / "b")
    ports = {k: free_port() for k in ("a_admin", "b_admin", "a_out", "b_in")}
    common: dict[str, Any] = {
        "workers": workers,
        "log": {"access_log": access_log, "format": "json", "level": "warning"},
        "limits": {"max_connections": 8192, **(limits or {})},
        "timeouts": {"idle_timeout_seconds": 120},
    }
    inbound: dict[str, Any] = {
        "listen": f"127.0.0.1:{ports['b_in']}",
        "app": f"127.0.0.1:{app_port}",
        "service": "catalog",
        "protocol": protocol,
    }
    b: dict[str, Any] = {
        **common,
        "identity": _identity(certs.server_id, b_tls),
        "inbound": inbound,
        "admin": {"listen": f"127.0.0.1:{ports['b_admin']}"},
    }
    if protocol == "http":
        b["policy"] = {"dir": str(POLICIES)}
    else:
        inbound["allowed_ids"] = [certs.client_id]
    a = {
        **common,
        "identity": _identity(certs.client_id, a_tls),
        "outbound": [
            {
                "listen": f"127.0.0.1:{ports['a_out']}",
                "service": "catalog",
                "endpoints": [f"127.0.0.1:{ports['b_in']}"],
                "spiffe_ids": [certs.server_id],
                "protocol": protocol,
            }
        ],
        "admin": {"listen": f"127.0.0.1:{ports['a_admin']}"},
    }
    b_path = write_config(tmp / "b.toml", b)
    a_path = write_config(tmp / "a.toml", a)
    with (
        _sidecar(b_path, ports["b_admin"], root, module, build) as b_proc,
        _sidecar(a_path, ports["a_admin"], root, module, build) as a_proc,
    ):
        wait_port(ports["a_out"])

        def pids(parent: int) -> list[int]:
            return [parent, *children(parent)]

        yield ports["a_out"], pids(a_proc.process.pid), pids(b_proc.process.pid)


def _identity(spiffe_id: str, tls: Tls) -> dict[str, str]:
    return {
        "spiffe_id": spiffe_id,
        "cert_file": str(tls.chain),
        "key_file": str(tls.key),
        "bundle_file": str(tls.bundle),
    }


# -- section: http -------------------------------------------------------------------------

SCENARIOS = (("keep_alive", False), ("new_connection", True))
Target = tuple[int, list[int], list[int]]  # entry port, client-side pids, server-side pids


@dataclass
class _Totals:
    """One target in one scenario, summed over the interleaved rounds."""

    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    cpu_a: float = 0.0
    cpu_b: float = 0.0
    p50: list[float] | None = None
    p99: list[float] | None = None

    def add(self, result: WrkResult, cpu_a: float, cpu_b: float) -> None:
        self.requests += result.requests
        self.seconds += result.seconds
        self.errors += result.errors
        self.cpu_a += cpu_a
        self.cpu_b += cpu_b
        self.p50 = [*(self.p50 or []), result.p50_ms]
        self.p99 = [*(self.p99 or []), result.p99_ms]


def _row(totals: _Totals, pids: list[int]) -> Figures:
    per = 1e6 / max(1, totals.requests)
    return {
        "rps": round(totals.requests / max(totals.seconds, 1e-9)),
        "p50_ms": round(statistics.median(totals.p50 or [0.0]), 2),
        "p99_ms": round(statistics.median(totals.p99 or [0.0]), 2),
        "proxy_cpu_us_per_request": round((totals.cpu_a + totals.cpu_b) * per),
        "client_side_cpu_us_per_request": round(totals.cpu_a * per),
        "server_side_cpu_us_per_request": round(totals.cpu_b * per),
        "proxy_rss_mb": rss_mb(pids),
        "errors": totals.errors,
        "requests": totals.requests,
    }


def _ratios(rows: dict[str, Figures], base: str) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    ref = rows.get(base)
    if not ref:
        return out
    for name, row in rows.items():
        out[name] = {
            "rps": round(row["rps"] / ref["rps"], 2),
            "p50": round(row["p50_ms"] / ref["p50_ms"], 2) if ref["p50_ms"] else None,
            "p99": round(row["p99_ms"] / ref["p99_ms"], 2) if ref["p99_ms"] else None,
            "cpu_per_request": (
                round(row["proxy_cpu_us_per_request"] / ref["proxy_cpu_us_per_request"], 2)
                if ref["proxy_cpu_us_per_request"]
                else None
            ),
        }
    return out


def wrk_slices(args: argparse.Namespace) -> tuple[int, float]:
    """(rounds, seconds of each slice) for `--seconds` split into `--rounds`. wrk takes whole
    seconds only (`-d2.67s` is refused): 8 s in 3 rounds run 3 s each."""
    rounds = max(1, args.rounds)
    return rounds, float(max(1, round(args.seconds / rounds)))


def bench_http(args: argparse.Namespace) -> Figures:
    """Every target is started up front; then `--rounds` interleaved rounds, each running
    every target and scenario for `seconds / rounds`, so the shared machine's changing load
    falls on all targets alike. `--baseline REF` adds the meshgate pair of git REF."""
    connections = args.concurrency
    rounds, slice_seconds = wrk_slices(args)
    figures: Figures = {
        "connections": connections,
        "seconds_per_target_and_scenario": slice_seconds * rounds,
        "rounds": rounds,
        "baseline": args.baseline,
        "baseline2": args.baseline2,
        "load_average_before": os.getloadavg()[0],
        "access_log": args.http_access_log,
    }
    # Each proxy's default: the sidecar logs a JSON line a request to stdout (here its log
    # file, as a supervisor would capture it), nginx a line to its access.log; haproxy logs
    # nothing without a `log` line. `--http-access-log off` turns both off (older figures).
    logged = args.http_access_log == "default"
    sidecar_log = "stdout" if logged else "off"
    pki = TestPki()
    certs = bench_certs(pki)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgate-bench-")))
        app = nginx_app(tmp, free_port())
        stack.callback(app.stop)
        port = app.entry_port
        targets: dict[str, Target] = {"direct": (port, [], [])}
        progress("http: starting every target")
        targets["meshgate"] = stack.enter_context(
            meshgate_pair(pki, certs, tmp / "mg1", port, access_log=sidecar_log)
        )
        if args.baseline:
            root = stack.enter_context(baseline_tree(args.baseline))
            targets["meshgate_baseline"] = stack.enter_context(
                meshgate_pair(pki, certs, tmp / "mg0", port, root=root, access_log=sidecar_log)
            )
        if args.baseline2:
            root2 = stack.enter_context(baseline_tree(args.baseline2))
            targets["meshgate_baseline2"] = stack.enter_context(
                meshgate_pair(pki, certs, tmp / "mg3", port, root=root2, access_log=sidecar_log)
            )
        if args.compiled:
            ensure_compiled_build()
            targets["meshgate_compiled"] = stack.enter_context(
                meshgate_pair(
                    pki, certs, tmp / "mg4", port, access_log=sidecar_log, build="compiled"
                )
            )
        if args.http_workers2:
            targets["meshgate_workers2"] = stack.enter_context(
                meshgate_pair(pki, certs, tmp / "mg2", port, workers=2, access_log=sidecar_log)
            )
        nginx = functools.partial(nginx_pair, access_log=logged)
        targets["nginx"] = stack.enter_context(peer_pair(nginx, "nginx", tmp, pki, certs, port))
        targets["haproxy"] = stack.enter_context(
            peer_pair(haproxy_pair, "haproxy", tmp, pki, certs, port)
        )
        for entry, _, _ in targets.values():
            for _, close in SCENARIOS:  # warm up: pools, caches, imports
                run_wrk(entry, 1, connections, close=close, pids=[])
        totals = {s: {name: _Totals() for name in targets} for s, _ in SCENARIOS}
        for index in range(rounds):
            progress(f"http: round {index + 1}/{rounds}, {slice_seconds:g} s per run")
            for name, (entry, a_pids, b_pids) in targets.items():
                for scenario, close in SCENARIOS:
                    a0, b0 = cpu_seconds(a_pids), cpu_seconds(b_pids)
                    result = run_wrk(entry, slice_seconds, connections, close=close, pids=[])
                    totals[scenario][name].add(
                        result, cpu_seconds(a_pids) - a0, cpu_seconds(b_pids) - b0
                    )
        for scenario, _ in SCENARIOS:
            rows = {
                name: _row(totals[scenario][name], targets[name][1] + targets[name][2])
                for name in targets
            }
            figures[scenario] = {
                "results": rows,
                "ratio_to_nginx": _ratios(rows, "nginx"),
                "ratio_to_direct": _ratios(rows, "direct"),
            }
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


@contextlib.contextmanager
def peer_pair(
    factory: Callable[..., Any], name: str, tmp: Path, pki: TestPki, certs: Certs, app_port: int
) -> Iterator[Target]:
    """A reference pair; yields (entry port, client-side pids, server-side pids)."""
    client = write_tls(pki, certs.client, tmp / f"{name}-client")
    server = write_tls(pki, certs.server, tmp / f"{name}-server")
    entry = free_port()
    pair = factory(tmp / name, entry, free_port(), app_port, client, server)
    try:
        time.sleep(0.3)
        server_proc, client_proc = pair.pids()  # both factories start the server side first
        yield (
            entry,
            [client_proc, *children(client_proc)],  # nginx: master + worker
            [server_proc, *children(server_proc)],
        )
    finally:
        pair.stop()


# -- section: memory -----------------------------------------------------------------------


_SETTLE_SECONDS = 12.0
# Per-connection figures "beyond the first": the slope after this many connections are
# open, so a one-off cost of the first connections (or memory freed at start-up that they
# reuse without growing the RSS) is not spread over the per-connection figure.
_FIRST = 200
_POOLED_FIRST = 16


def bench_memory(args: argparse.Namespace) -> Figures:
    """The figures of `_memory_of` for this tree and, with `--baseline REF`, for the
    sidecars of git REF, one after the other in the same run (RSS does not move with the
    machine's load the way CPU does, so the two trees are not interleaved)."""
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )
    pki = TestPki()
    certs = bench_certs(pki)
    figures: Figures = {"baseline": args.baseline, "load_average_before": os.getloadavg()[0]}
    progress("memory: this tree")
    figures["now"] = _memory_of(pki, certs, ROOT)
    if args.baseline:
        with baseline_tree(args.baseline) as root:
            progress(f"memory: the baseline {args.baseline}")
            figures["baseline_tree"] = _memory_of(pki, certs, root)
        figures["ratio_to_baseline"] = {
            key: round(figures["now"][key] / figures["baseline_tree"][key], 2)
            for key in _COMPARED
            if figures["baseline_tree"].get(key)
        }
        figures["ratio_to_baseline"]["pooled"] = {
            key: round(figures["now"]["pooled"][key] / value, 2)
            for key, value in figures["baseline_tree"]["pooled"].items()
            if key.endswith("_mb") or "_kb_" in key
            if value
        }
    figures["load_average_after"] = os.getloadavg()[0]
    figures["targets"] = {"idle_mb": "<= 45", "kb_per_idle_mtls_connection": "<= 15"}
    return figures


_COMPARED = (
    "outbound_idle_mb",
    "inbound_idle_mb",
    "outbound_kb_per_client_connection",
    "inbound_kb_per_connection",
    "outbound_kb_per_client_connection_beyond_first",
    "inbound_kb_per_connection_beyond_first",
)


def smaps_mb(pids: list[int]) -> dict[str, float]:
    """RSS, PSS and USS summed over `pids` (smaps_rollup). RSS counts every resident page
    mapped, shared library pages included in full in every process that maps them; PSS
    divides each shared page by the number of processes mapping it; USS counts only the
    pages no other process maps (private clean + private dirty)."""
    total = {"rss": 0, "pss": 0, "uss": 0, "anonymous": 0}
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                kb = int(value.split()[0]) if value.strip() else 0
                if key == "Rss":
                    total["rss"] += kb
                elif key == "Pss":
                    total["pss"] += kb
                elif key in ("Private_Clean", "Private_Dirty"):
                    total["uss"] += kb
                elif key == "Anonymous":
                    total["anonymous"] += kb
    return {key: round(kb / 1024, 1) for key, kb in total.items()}


def _memory_of(pki: TestPki, certs: Certs, root: Path) -> Figures:
    """RSS of each sidecar of the tree at `root` idle (right after a warm-up and after
    12 s without traffic), then with 1,000 idle client connections open to A's outbound
    listener and 1,000 idle mTLS connections open to B's inbound listener; then, on a
    second pair, 64 idle pooled mTLS connections between A and B (the outbound side's and
    the inbound side's cost of one idle connection of the mesh itself)."""
    count = 1000
    figures: Figures = {"connections": count}
    with tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        app = nginx_app(tmp, free_port())
        try:
            # 1,000 mTLS connections from 127.0.0.1: above the per-source default of 256.
            many = {"max_connections_per_source": 8192}
            with meshgate_pair(pki, certs, tmp / "mg", app.entry_port, limits=many, root=root) as (
                port,
                a_pids,
                b_pids,
            ):
                run_wrk(port, 1, 8, close=False, pids=[])  # one warm request path (imports, pools)
                time.sleep(0.5)
                figures["inbound_after_warmup_mb"] = rss_mb(b_pids)
                progress(f"memory: {_SETTLE_SECONDS:.0f} s idle")
                time.sleep(_SETTLE_SECONDS)
                figures["outbound_idle_mb"] = rss_mb(a_pids)
                figures["inbound_idle_mb"] = rss_mb(b_pids)
                figures["outbound_idle_smaps_mb"] = smaps_mb(a_pids)
                figures["inbound_idle_smaps_mb"] = smaps_mb(b_pids)
                progress(f"memory: {count} idle client connections to the outbound sidecar")
                plain = [socket.create_connection(("127.0.0.1", port)) for _ in range(_FIRST)]
                time.sleep(1.0)
                first_a = rss_kb(a_pids)
                plain += [
                    socket.create_connection(("127.0.0.1", port)) for _ in range(count - _FIRST)
                ]
                time.sleep(1.0)
                figures["outbound_with_idle_connections_mb"] = rss_mb(a_pids)
                figures["outbound_kb_per_client_connection_beyond_first"] = round(
                    (rss_kb(a_pids) - first_a) / (count - _FIRST), 1
                )
                for sock in plain:
                    sock.close()
                progress(f"memory: {count} idle mTLS connections to the inbound sidecar")
                b_port = _inbound_port(tmp / "mg" / "b.toml")
                tls = _mtls_connections(pki, certs, b_port, _FIRST)
                time.sleep(1.0)
                first_b = rss_kb(b_pids)
                tls += _mtls_connections(pki, certs, b_port, count - _FIRST)
                time.sleep(1.0)
                figures["inbound_with_idle_mtls_connections_mb"] = rss_mb(b_pids)
                figures["inbound_kb_per_connection_beyond_first"] = round(
                    (rss_kb(b_pids) - first_b) / (count - _FIRST), 1
                )
                for conn in tls:
                    conn.close()
        finally:
            app.stop()
        figures["pooled"] = _pooled_mtls_memory(pki, certs, tmp / "pooled", root)
    figures["outbound_delta_mb"] = round(
        figures["outbound_with_idle_connections_mb"] - figures["outbound_idle_mb"], 1
    )
    figures["inbound_delta_mb"] = round(
        figures["inbound_with_idle_mtls_connections_mb"] - figures["inbound_idle_mb"], 1
    )
    figures["outbound_kb_per_client_connection"] = round(
        figures["outbound_delta_mb"] * 1024 / count, 1
    )
    figures["inbound_kb_per_connection"] = round(figures["inbound_delta_mb"] * 1024 / count, 1)
    return figures


_POOLED = 64  # the outbound's default pool_max_idle_per_endpoint: all stay pooled


def _pooled_mtls_memory(pki: TestPki, certs: Certs, tmp: Path, root: Path = ROOT) -> Figures:
    """`_POOLED` requests held at once by an app that answers only when all have arrived,
    so A must dial `_POOLED` mTLS connections to B; once answered they idle in A's pool and
    in B's keep-alive wait. RSS of A and B before and after (client connections closed)."""
    gate = {"barrier": threading.Barrier(_POOLED_FIRST, timeout=60)}

    class Held(socketserver.StreamRequestHandler):
        disable_nagle_algorithm = True

        def handle(self) -> None:
            while self.rfile.readline():
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                gate["barrier"].wait()
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    class App(socketserver.ThreadingTCPServer):
        daemon_threads = True

    app = App(("127.0.0.1", 0), Held)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    out: Figures = {"connections": _POOLED}
    try:
        with meshgate_pair(pki, certs, tmp, app.server_address[1], root=root) as (
            port,
            a_pids,
            b_pids,
        ):
            time.sleep(_SETTLE_SECONDS)
            a0, b0 = rss_kb(a_pids), rss_kb(b_pids)
            progress(f"memory: {_POOLED_FIRST}, then {_POOLED} requests at once (pooled mTLS)")
            _held_requests(port, _POOLED_FIRST)
            time.sleep(1.0)
            a_first, b_first = rss_kb(a_pids), rss_kb(b_pids)
            gate["barrier"] = threading.Barrier(_POOLED, timeout=60)
            _held_requests(port, _POOLED)
            time.sleep(1.0)
            a1, b1 = rss_kb(a_pids), rss_kb(b_pids)
            admin = f"http://127.0.0.1:{_admin_port(tmp / 'a.toml')}/upstreams"
            with urllib.request.urlopen(admin, timeout=5) as reply:
                pool = json.loads(reply.read())
    finally:
        app.shutdown()
        app.server_close()
    out.update(
        {
            "outbound_idle_mb": round(a0 / 1024, 1),
            "inbound_idle_mb": round(b0 / 1024, 1),
            "outbound_kb_per_pooled_mtls_connection": round((a1 - a0) / _POOLED, 1),
            "inbound_kb_per_idle_mtls_connection": round((b1 - b0) / _POOLED, 1),
            "outbound_kb_per_pooled_mtls_connection_beyond_first": round(
                (a1 - a_first) / (_POOLED - _POOLED_FIRST), 1
            ),
            "inbound_kb_per_idle_mtls_connection_beyond_first": round(
                (b1 - b_first) / (_POOLED - _POOLED_FIRST), 1
            ),
            "outbound_pool": pool,
        }
    )
    return out


def _held_requests(port: int, count: int) -> None:
    """`count` requests at once through A (the app answers when all have arrived), so A's
    pool holds at least `count` connections to B afterwards."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for sock in clients:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: catalog\r\n\r\n")
    for sock in clients:
        sock.settimeout(60)
        if not sock.recv(4096).startswith(b"HTTP/1.1 200 "):
            raise RuntimeError("pooled memory phase: a held request failed")
        sock.close()


def _admin_port(config: Path) -> int:
    m = re.search(r'\[admin\]\nlisten = "127\.0\.0\.1:(\d+)"', config.read_text())
    if m is None:
        raise RuntimeError("no admin listen in the bench config")
    return int(m.group(1))


def _inbound_port(config: Path) -> int:
    m = re.search(r'\[inbound\]\nlisten = "127\.0\.0\.1:(\d+)"', config.read_text())
    if m is None:
        raise RuntimeError("no inbound listen in the bench config")
    return int(m.group(1))


def _mtls_connections(pki: TestPki, certs: Certs, port: int, count: int) -> list[Any]:
    import ssl

    from meshgate.transport.mtls import mesh_context

    context = mesh_context("client", certs.client.chain_pem(), certs.client.key_pem(), pki.bundles)
    out = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port))
        out.append(context.wrap_socket(raw, server_side=False))
    del ssl
    return out


# -- section: datapath (tcp) ---------------------------------------------------------------

_ECHO_APP = """
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


@dataclass
class _Load:
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float


async def _echo_load(
    port: int, keepalive: bool, seconds: float, clients: int, size: int, pids: list[int]
) -> _Load:
    import trio

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

    async def client() -> None:
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

    cpu0, t0 = cpu_seconds(pids), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return _Load(len(latencies), time.perf_counter() - t0, latencies, cpu_seconds(pids) - cpu0)


def bench_datapath(args: argparse.Namespace) -> Figures:
    """tcp mode: a trio echo app directly and through the two-sidecar chain. CPU counts
    the two sidecars only (the load generator and app are the same in both paths)."""
    import trio

    size, clients = 64, min(args.concurrency, 8)
    pki = TestPki()
    certs = bench_certs(pki)
    app_port = free_port()
    figures: Figures = {"clients": clients, "bytes": size, "seconds_per_run": args.seconds}
    with (
        tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmp_name,
        subprocess.Popen([sys.executable, "-c", _ECHO_APP, str(app_port)]) as app,
    ):
        wait_port(app_port)
        with meshgate_pair(pki, certs, Path(tmp_name), app_port, protocol="tcp") as (
            port,
            a_pids,
            b_pids,
        ):
            pids = a_pids + b_pids
            for mode, keepalive in (("keep_alive", True), ("new_connection", False)):
                rows: Figures = {}
                for path, target in (("direct", app_port), ("chain", port)):
                    progress(f"datapath: {mode}, {path}, {args.seconds:g} s")
                    load = trio.run(
                        _echo_load, target, keepalive, args.seconds, clients, size, pids
                    )
                    q = statistics.quantiles(load.latencies, n=100)
                    rows[path] = {
                        "rps": round(load.requests / load.seconds),
                        "p50_ms": round(q[49] * 1000, 2),
                        "p99_ms": round(q[98] * 1000, 2),
                        "sidecar_cpu_us_per_request": round(
                            load.cpu_seconds / max(1, load.requests) * 1e6
                        ),
                    }
                rows["chain_rps_ratio_to_direct"] = round(
                    rows["chain"]["rps"] / rows["direct"]["rps"], 2
                )
                figures[mode] = rows
        app.kill()
    return figures


SECTIONS = {"http": bench_http, "datapath": bench_datapath, "memory": bench_memory}
