#!/usr/bin/env python3
"""meshgate benchmarks, one section per component; every figure is compared within one run.

    python scripts/bench.py ca [--seconds 3] [--concurrency 16] [--only-default] [--baseline REF]
                               [--baseline2 REF]
                               [--client-processes N]
    python scripts/bench.py ca-instructions [--seconds 3] [--concurrency 16]   (needs valgrind)
    python scripts/bench.py ca-hsm [--seconds 6] [--rounds 3]   (CA keys in SoftHSM2 vs files)
    python scripts/bench.py control-plane [--rounds 6]   (one change to 1,000 watchers)
    python scripts/bench.py replicas [--seconds 3] [--concurrency 16] [--client-processes N]
    python scripts/bench.py http [--seconds 6] [--rounds 3] [--baseline REF] [--baseline2 REF]
        [--http-workers2] [--compiled]
    python scripts/bench.py latency [--seconds 20] [--rounds 2] [--baseline REF] [--baseline2 REF]
                                    [--compiled]
                                    [--latency-capacity-fraction 0.75]
                                    [--latency-app nginx|two-sends]
    python scripts/bench.py ledger [--seconds 10]       (CPU µs per step of one request)
    python scripts/bench.py http-core [--rounds 3] [--instructions]   (pure vs mypyc build)
    python scripts/bench.py datapath [--seconds 3]
    python scripts/bench.py accept-floor [--seconds 12] [--rounds 4]   (CPU per new connection)
    python scripts/bench.py connection-ledger [--seconds 16] [--rounds 2]   (its steps)
    python scripts/bench.py memory
    python scripts/bench.py soak [--minutes 10] [--leaf-ttl 30s] [--rate 100] [--workdir DIR]
    python scripts/bench.py tracing [--seconds 3]       (CPU µs per span, needs [tracing] extra)

Sections register themselves in `SECTIONS` (name -> function taking the parsed args and
returning a dict of figures, which is printed as JSON at the end). Runs are bounded in
seconds and print progress to stderr.

Why one module: the command line and the CA sections of the benchmark; the
data-path, latency, soak and other sections are already in `scripts/benchlib/`. It is a
script, read top to bottom by whoever runs a benchmark, not imported by the product.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mesh_ca.ca_dir import LoadedCa, init_ca_dir, load_ca_dir
from mesh_ca.config import CaConfig, ServerConfig, StoreConfig
from meshgate.identity import BundleSet
from meshgate.transport.mtls import client_context

Figures = dict[str, Any]


def progress(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


# Section: ca


@dataclass
class CaProcess:
    ca: LoadedCa
    process: subprocess.Popen[bytes]
    address: tuple[str, int]


def bench_config(store: StoreConfig | None = None) -> CaConfig:
    return CaConfig(
        trust_domain="bench.example",
        server=ServerConfig(rate_limit_per_second=1e9, rate_limit_burst=10**9),
        store=store or StoreConfig(),
    )


@contextlib.contextmanager
def ca_server(
    directory: Path, log_level: str, extra: list[str], root: Path | None = None
) -> Iterator[CaProcess]:
    """A fresh SQLite CA in `directory`, served (from the source tree `root` if given)."""
    if root is None:
        ca = init_ca_dir(
            directory / "ca", "bench.example", datetime.now(UTC), config=bench_config()
        )
    else:
        ca = baseline_ca(directory / "ca", root)
    with serve_ca(ca, directory / "server.log", log_level, extra, root=root) as server:
        yield server


_CLI = (sys.executable, "-m", "mesh_ca.cli")


def baseline_ca(directory: Path, root: Path) -> LoadedCa:
    """A CA made by the baseline tree's own `mesh-ca init` (its ca.toml must hold only the
    keys that version knows), with the rate limit lifted as in `bench_config`."""
    subprocess.run(
        [*_CLI, "init", "--trust-domain", "bench.example", "--dir", str(directory)],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    config = directory / "ca.toml"
    text = config.read_text()
    text = re.sub(r"(?m)^rate_limit_per_second = .*$", "rate_limit_per_second = 1e9", text)
    text = re.sub(r"(?m)^rate_limit_burst = .*$", "rate_limit_burst = 1000000000", text)
    config.write_text(text)
    return load_ca_dir(directory)


@contextlib.contextmanager
def serve_ca(
    ca: LoadedCa,
    log_path: Path,
    log_level: str,
    extra: list[str],
    env: dict[str, str] | None = None,
    root: Path | None = None,
    prefix: Sequence[str] = (),
    start_seconds: float = 30.0,
) -> Iterator[CaProcess]:
    """``mesh-ca serve`` on an existing CA directory, on 127.0.0.1:0; from the source tree
    `root` (a baseline exported by `baseline_tree`) when given, else from this checkout;
    under `prefix` (e.g. valgrind) if given."""
    if root is not None:
        path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
        env = {**(env or {}), "PYTHONPATH": path}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "mesh_ca.server",
                "--dir",
                str(ca.path),
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                log_level,
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **(env or {})},
            cwd=root,
        )
    try:
        deadline = time.monotonic() + start_seconds
        while not (match := re.search(r"serving on (\S+):(\d+)", log_path.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"CA server did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield CaProcess(ca, process, (match.group(1), int(match.group(2))))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15 if not prefix else 120)


def raw_signing_rate(ca: LoadedCa, seconds: float) -> float:
    """The in-run baseline: leaves per CPU second. Per CPU second, not per wall second: the
    machine is shared, and the API figure it is compared with is also per CPU second of the
    CA server process."""
    count, cpu = raw_signing(ca, seconds)
    return count / cpu


def api_phase(
    server: CaProcess,
    path: str,
    contexts: list[Any],
    bodies: Iterator[bytes],
    seconds: float,
    *,
    client_processes: int = 1,
) -> Figures:
    return spread_phase(
        [server], path, contexts, bodies, seconds, client_processes=client_processes
    )


def spread_phase(
    servers: list[CaProcess],
    path: str,
    contexts: list[Any],
    bodies: Iterator[bytes],
    seconds: float,
    *,
    client_processes: int = 1,
) -> Figures:
    """Connections spread round-robin over `servers`; server CPU summed over all of them,
    client CPU over every load process (`scripts/benchlib/ca_load.py`)."""
    targets = [Target(servers[i % len(servers)].address, c) for i, c in enumerate(contexts)]
    sys_before = sum(cpu_split(s.process.pid)[1] for s in servers)
    cpu_before = sum(cpu_seconds(s.process.pid) for s in servers)
    load = run_load(targets, path, bodies, seconds, processes=client_processes)
    cpu = sum(cpu_seconds(s.process.pid) for s in servers) - cpu_before
    system = sum(cpu_split(s.process.pid)[1] for s in servers) - sys_before
    return {
        "issued": load.ok,
        "failed": load.failed,
        "seconds": round(load.seconds, 2),
        "per_second": round(load.ok / load.seconds, 1),
        "server_cpu_seconds": round(cpu, 2),
        "server_system_cpu_seconds": round(system, 2),
        "client_cpu_seconds": round(load.client_cpu_seconds, 2),
        "per_server_cpu_second": round(load.ok / cpu, 1) if cpu else None,
    }


def server_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--inline-handlers"] if args.inline_handlers or args.server_profile else []
    if args.threaded_handlers:
        flags = ["--threaded-handlers"]
    return flags + (["--profile", str(args.server_profile)] if args.server_profile else [])


def _own_profile(flags: list[str], server: str) -> list[str]:
    """`flags` with ``--profile FILE`` made ``FILE.SERVER`` for the baselines, so that each
    server of one run writes its own cProfile (`--server-profile` with `--baseline`)."""
    if "--profile" not in flags or server == "as_flagged":
        return flags
    at = flags.index("--profile") + 1
    return [*flags[:at], f"{flags[at]}.{server}", *flags[at + 1 :]]


# The CA server configurations `bench ca` compares in one run. The old h11 shell
# ("before_h11_threads") was removed after its comparison (docs/benchmarks.md).
CA_SHELLS: dict[str, list[str]] = {
    "now_default": [],
    # The same without the access log (one JSON line and one write(2) per request).
    "now_no_access_log": ["--log-level", "warning"],
}


def merge_phases(parts: list[Figures]) -> Figures:
    """Sum the rounds of one phase; rates from the sums."""
    total = {
        key: round(sum(p[key] for p in parts), 2)
        for key in (
            "issued",
            "failed",
            "seconds",
            "server_cpu_seconds",
            "server_system_cpu_seconds",
            "client_cpu_seconds",
        )
    }
    total["per_second"] = round(total["issued"] / total["seconds"], 1)
    cpu = total["server_cpu_seconds"]
    total["per_server_cpu_second"] = round(total["issued"] / cpu, 1) if cpu else None
    return total


def cost_breakdown(raw: float, server: Figures, shell: Figures) -> Figures:
    """Server CPU µs: per SVID (bootstrap, renew), per request of the bare shell, and the
    raw unit. 0.5x the raw rate means a whole API request may cost two raw units."""
    requests = shell["issued"] + shell["failed"]
    figures: Figures = {
        "raw_unit": round(1e6 / raw),
        "budget_at_half_raw": round(2e6 / raw),
        "shell_request": round(shell["server_cpu_seconds"] / requests * 1e6) if requests else None,
    }
    for kind in ("bootstrap", "renew"):
        rate = server[kind]["per_server_cpu_second"]
        figures[f"{kind}_svid"] = round(1e6 / rate) if rate else None
    return figures


def bench_ca(args: argparse.Namespace) -> Figures:
    """Raw signing, then the servers in `CA_SHELLS` (or only the flags given), all started
    up front and measured in interleaved rounds, so a change in the machine's load between
    minutes hits every server alike."""
    seconds, concurrency, rounds = args.seconds, args.concurrency, args.rounds
    own_flags = server_flags(args)
    shells = {"as_flagged": own_flags} if own_flags or args.only_default else dict(CA_SHELLS)
    roots: dict[str, Path | None] = dict.fromkeys(shells)
    figures: Figures = {
        "machine": machine(),
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "concurrency": concurrency,
        "server_log_level": args.log_level,
        "baseline": args.baseline,
        "baseline2": args.baseline2,
        "client_processes": args.client_processes,
    }
    csrs = csr_pems()
    with (
        tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        if args.baseline:
            # The default server of git REF next to this checkout's, in the same rounds.
            shells["baseline"] = own_flags
            roots["baseline"] = stack.enter_context(baseline_tree(args.baseline))
        if args.baseline2:
            # A second ref in the same rounds (e.g. a diagnostic branch between the two).
            shells["baseline2"] = own_flags
            roots["baseline2"] = stack.enter_context(baseline_tree(args.baseline2))
        servers = {
            name: stack.enter_context(
                ca_server(Path(tmp) / name, args.log_level, _own_profile(flags, name), roots[name])
            )
            for name, flags in shells.items()
        }
        first = next(iter(servers.values())).ca
        # A first estimate sizes the join tokens; the baseline itself is measured in every
        # round, next to the servers, so a change of the machine's load hits both alike.
        estimate = raw_signing_rate(first, 1.0)
        n_tokens = int(estimate * seconds * 1.2) + 100
        bodies: dict[str, Iterator[bytes]] = {}
        contexts: dict[str, list[Any]] = {}
        for name, server in servers.items():
            progress(f"[{name}] creating {n_tokens} join tokens ...")
            bodies[name] = bootstrap_bodies(add_tokens(server.ca, n_tokens))
            contexts[name] = renew_contexts(server.ca, concurrency)
        renewals = renew_bodies(csrs)
        shell_bodies = itertools.repeat(b"{}")
        parts: dict[tuple[str, str], list[Figures]] = {}
        share = seconds / rounds
        spans = {"bootstrap": share, "renew": share, "shell": share / 2}
        if args.only_phase:  # the others only a token: a profile of (almost) one phase
            spans = {
                phase: span if phase == args.only_phase else 0.05 for phase, span in spans.items()
            }
        load = {"client_processes": args.client_processes}
        raw_rounds: list[tuple[int, float]] = []
        for round_index in range(rounds):
            raw_rounds.append(raw_signing(first, share))
            progress(
                f"round {round_index + 1}/{rounds} raw signing: "
                f"{raw_rounds[-1][0] / raw_rounds[-1][1]:.0f} leaves per CPU second"
            )
            for name, server in servers.items():
                progress(f"round {round_index + 1}/{rounds} [{name}] bootstrap, renew")
                anonymous = [client_context(BundleSet.of(server.ca.bundle))] * concurrency
                parts.setdefault((name, "bootstrap"), []).append(
                    api_phase(
                        server, "/v1/bootstrap", anonymous, bodies[name], spans["bootstrap"], **load
                    )
                )
                parts.setdefault((name, "renew"), []).append(
                    api_phase(server, "/v1/renew", contexts[name], renewals, spans["renew"], **load)
                )
                # The shell alone: POST /healthz is answered 405 by the same TLS, HTTP,
                # routing, metrics and access-log path, with no store, CSR or signing.
                parts.setdefault((name, "shell"), []).append(
                    api_phase(server, "/healthz", anonymous, shell_bodies, spans["shell"], **load)
                )
    raw = sum(count for count, _ in raw_rounds) / sum(cpu for _, cpu in raw_rounds)
    figures["raw_signing_per_cpu_second"] = round(raw, 1)
    figures["raw_signing_per_round"] = [round(count / cpu) for count, cpu in raw_rounds]
    for name, flags in shells.items():
        figures[name] = {"server_flags": " ".join(flags)}
        for kind in ("bootstrap", "renew"):
            phase = merge_phases(parts[(name, kind)])
            if phase["per_server_cpu_second"]:
                phase["ratio_to_raw"] = round(phase["per_server_cpu_second"] / raw, 3)
            # Each round against its own raw rate: how far the ratio moves with the load.
            phase["ratio_to_raw_per_round"] = [
                round(part["issued"] / part["server_cpu_seconds"] / (count / cpu), 3)
                if part["server_cpu_seconds"]
                else None
                for part, (count, cpu) in zip(parts[(name, kind)], raw_rounds, strict=True)
            ]
            figures[name][kind] = phase
        figures[name]["cost_us"] = cost_breakdown(
            raw, figures[name], merge_phases(parts[(name, "shell")])
        )
    now_name = next(iter(shells))
    for base in ("baseline", "baseline2"):
        if base not in shells:
            continue
        figures[f"now_vs_{base}_per_server_cpu_second"] = {
            kind: round(
                figures[now_name][kind]["per_server_cpu_second"]
                / figures[base][kind]["per_server_cpu_second"],
                2,
            )
            for kind in ("bootstrap", "renew")
            if figures[base][kind]["per_server_cpu_second"]
            and figures[now_name][kind]["per_server_cpu_second"]
        }
    figures["load_average"] = os.getloadavg()[0]
    return figures


# Section: ca-instructions


def bench_ca_instructions(args: argparse.Namespace) -> Figures:
    """Instructions (callgrind) per request through the CA server and per raw unit: a
    figure that does not move with the machine's load, as seconds here do by ±10-15 %.

    The server runs under valgrind, ~50x slower: `--seconds` is each counted phase in
    valgrind's time (renewal, bootstrap, the bare shell), after a warm-up half as long.
    The raw unit is the `issue_leaf` loop of `bench ca`, counted at two lengths."""
    try:
        require_valgrind()
    except CallgrindError as exc:
        raise SystemExit(f"bench.py ca-instructions: {exc}") from None
    seconds, concurrency = args.seconds, args.concurrency
    figures: Figures = {"machine": machine(), "seconds_per_phase": seconds}
    csrs = csr_pems()
    for kind, label in (("raw", "raw_unit"), ("parse", "parse_csr"), ("sign", "sign_leaf")):
        progress(f"counting the {kind} loop under callgrind (two runs) ...")
        figures[f"{label}_instructions"] = loop_instructions(kind, 20, 100)
    raw = figures["raw_unit_instructions"]
    with tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmp:
        ca = init_ca_dir(
            Path(tmp) / "ca", "bench.example", datetime.now(UTC), config=bench_config()
        )
        tokens = add_tokens(ca, int(seconds * 200) + 100)  # well above valgrind's rate
        prefix = valgrind_prefix(Path(tmp) / "server.%p")
        progress("starting the CA server under callgrind (a minute or so) ...")
        with serve_ca(
            ca, Path(tmp) / "server.log", "info", [], prefix=prefix, start_seconds=600
        ) as server:
            anonymous = [client_context(BundleSet.of(ca.bundle))] * concurrency
            bodies = {
                "/v1/renew": renew_bodies(csrs),
                "/v1/bootstrap": bootstrap_bodies(tokens),
                "/healthz": itertools.repeat(b"{}"),
            }
            phases = (
                ("renew", "/v1/renew", renew_contexts(ca, concurrency)),
                ("bootstrap", "/v1/bootstrap", anonymous),
                ("shell", "/healthz", anonymous),
            )
            pid = server.process.pid
            for name, path, contexts in phases:
                targets = [Target(server.address, c) for c in contexts]
                run_load(targets, path, bodies[path], seconds / 2)  # warm-up, not counted
                zero(pid)
                load = run_load(targets, path, bodies[path], seconds)
                dump(pid)
                requests = load.ok + load.failed
                per_request = round(latest_total(Path(tmp), pid) / requests) if requests else None
                figures[name] = {
                    "requests": requests,
                    "issued": load.ok,
                    "failed": load.failed,
                    "instructions_per_request": per_request,
                    "raw_units_per_request": round(per_request / raw, 2) if per_request else None,
                }
    figures["ratio_to_raw_in_instructions"] = {
        kind: round(raw / figures[kind]["instructions_per_request"], 3)
        for kind in ("bootstrap", "renew")
        if figures[kind]["instructions_per_request"] and not figures[kind]["failed"]
    }
    return figures


# Section: replicas


def bench_replicas(args: argparse.Namespace) -> Figures:
    """Bootstrap issuance: one SQLite process; one and two replicas on one PostgreSQL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pg_server import running_postgres  # the tests' throwaway server

    seconds, concurrency, flags = args.seconds, args.concurrency, server_flags(args)
    load = {"client_processes": args.client_processes}
    tokens_per_phase = int(1000 * seconds)
    password_env = "MESH_BENCH_PG_PASSWORD"
    figures: Figures = {
        "machine": machine(),
        "seconds_per_phase": seconds,
        "client_processes": args.client_processes,
    }
    with (
        tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmp,
        running_postgres() as pg,
    ):
        base = Path(tmp)
        env = {password_env: pg.password}
        os.environ[password_env] = pg.password  # for this process's own store handles
        store = StoreConfig(
            kind="postgres", url=pg.url(pg.create_database()), password_env=password_env
        )
        pg_ca = init_ca_dir(
            base / "pg-a", "bench.example", datetime.now(UTC), config=bench_config(store)
        )
        shutil.copytree(pg_ca.path, base / "pg-b")
        pg_ca_b = load_ca_dir(base / "pg-b")
        progress(f"raw signing for {seconds} s ...")
        raw = raw_signing_rate(pg_ca, seconds)
        figures["raw_signing_per_cpu_second"] = round(raw, 1)
        anonymous = client_context(BundleSet.of(pg_ca.bundle))
        contexts = [anonymous] * concurrency
        with ca_server(base / "sqlite", args.log_level, flags) as sqlite_server:
            tokens = add_tokens(sqlite_server.ca, tokens_per_phase, "sqlite")
            bodies = bootstrap_bodies(tokens)
            progress(f"SQLite, one process: {concurrency} connections, {seconds} s")
            own = [client_context(BundleSet.of(sqlite_server.ca.bundle))] * concurrency
            figures["sqlite_one"] = spread_phase(
                [sqlite_server], "/v1/bootstrap", own, bodies, seconds, **load
            )
        with serve_ca(pg_ca, base / "a.log", args.log_level, [*flags, "--replica", "a"], env) as a:
            bodies = bootstrap_bodies(add_tokens(pg_ca, tokens_per_phase, "one"))
            progress(f"PostgreSQL, one replica: {concurrency} connections, {seconds} s")
            figures["postgres_one"] = spread_phase(
                [a], "/v1/bootstrap", contexts, bodies, seconds, **load
            )
            with serve_ca(
                pg_ca_b, base / "b.log", args.log_level, [*flags, "--replica", "b"], env
            ) as b:
                bodies = bootstrap_bodies(add_tokens(pg_ca, tokens_per_phase * 2, "two"))
                progress(
                    f"PostgreSQL, two replicas: {concurrency} connections over both, {seconds} s"
                )
                figures["postgres_two"] = spread_phase(
                    [a, b], "/v1/bootstrap", contexts, bodies, seconds, **load
                )
    for name in ("sqlite_one", "postgres_one", "postgres_two"):
        phase = figures[name]
        if phase["per_server_cpu_second"]:
            phase["ratio_to_raw"] = round(phase["per_server_cpu_second"] / raw, 3)
    sqlite_rate = figures["sqlite_one"]["per_second"]
    figures["wall_rate_relative_to_sqlite"] = {
        name: round(figures[name]["per_second"] / sqlite_rate, 2) if sqlite_rate else None
        for name in ("postgres_one", "postgres_two")
    }
    figures["load_average"] = os.getloadavg()[0]
    return figures


SECTIONS: dict[str, Callable[[argparse.Namespace], Figures]] = {
    "ca": bench_ca,
    "replicas": bench_replicas,
    "ca-instructions": bench_ca_instructions,
}

# Data-path sections (http, datapath, memory) live in scripts/benchlib/datapath.py, latency
# in scripts/benchlib/latency.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.benchlib.accept_floor import SECTIONS as ACCEPT_FLOOR_SECTIONS  # noqa: E402
from scripts.benchlib.ca_hsm import bench_ca_hsm  # noqa: E402
from scripts.benchlib.ca_load import Target, run_load  # noqa: E402
from scripts.benchlib.ca_requests import (  # noqa: E402
    add_tokens,
    bootstrap_bodies,
    csr_pems,
    raw_signing,
    renew_bodies,
    renew_contexts,
)
from scripts.benchlib.callgrind import (  # noqa: E402
    CallgrindError,
    dump,
    latest_total,
    loop_instructions,
    require_valgrind,
    valgrind_prefix,
    zero,
)
from scripts.benchlib.connection_ledger import SECTIONS as CONNECTION_SECTIONS  # noqa: E402
from scripts.benchlib.control_plane import bench_control_plane  # noqa: E402
from scripts.benchlib.datapath import SECTIONS as DATA_PATH_SECTIONS  # noqa: E402
from scripts.benchlib.datapath import baseline_tree  # noqa: E402
from scripts.benchlib.http_core import bench_http_core  # noqa: E402
from scripts.benchlib.latency import bench_latency  # noqa: E402
from scripts.benchlib.ledger import bench_ledger  # noqa: E402
from scripts.benchlib.reports import bench_reports  # noqa: E402
from scripts.benchlib.soak import SECTIONS as SOAK_SECTIONS  # noqa: E402

SECTIONS.update(DATA_PATH_SECTIONS)
SECTIONS.update(SOAK_SECTIONS)
SECTIONS.update(ACCEPT_FLOOR_SECTIONS)
SECTIONS.update(CONNECTION_SECTIONS)
SECTIONS["latency"] = bench_latency
SECTIONS["ledger"] = bench_ledger
SECTIONS["http-core"] = bench_http_core
SECTIONS["ca-hsm"] = bench_ca_hsm
SECTIONS["control-plane"] = bench_control_plane
SECTIONS["reports"] = bench_reports


def bench_tracing(args: argparse.Namespace) -> Figures:
    from scripts.benchlib.tracing import bench_tracing as run  # the SDK only for this section

    return run(args)


SECTIONS["tracing"] = bench_tracing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=sorted(SECTIONS), help="what to measure")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed phase")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent connections")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["info", "warning"],
        help="CA server log level (info writes one access-log line a request)",
    )
    parser.add_argument(
        "--inline-handlers",
        action="store_true",
        help="CA server runs store and signing on its event loop, not threads",
    )
    parser.add_argument(
        "--threaded-handlers",
        action="store_true",
        help="CA server runs store and signing in worker threads",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="ca, http, latency: interleaved rounds (each phase or run gets seconds/rounds a "
        "round)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="ca: also serve the CA of this git ref (e.g. HEAD~3); http: also measure its "
        "meshgate pair (http, latency); in the same run",
    )
    parser.add_argument(
        "--baseline2",
        metavar="REF",
        help="ca: also serve the CA of a second git ref; http, latency: also measure the "
        "meshgate pair of a second git ref (e.g. the start of a change next to an older "
        "baseline), in the same run",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="http-core: also count the instructions of both hops' work under callgrind",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="http, latency: also measure the meshgate pair with meshgate/http compiled by "
        "mypyc (built first when missing or stale); the `meshgate` row stays pure Python",
    )
    parser.add_argument(
        "--http-workers2",
        action="store_true",
        help="http: also measure the meshgate pair with workers = 2",
    )
    parser.add_argument(
        "--http-access-log",
        choices=("default", "off"),
        default="default",
        help="http: each proxy's default access log (sidecar: stdout, a JSON line a request; "
        "nginx: access.log) or none",
    )
    parser.add_argument(
        "--latency-capacity-fraction",
        type=float,
        default=0.75,
        metavar="F",
        help="latency: the third rate is F x the meshgate pair's closed-loop req/s",
    )
    parser.add_argument(
        "--latency-app",
        choices=("nginx", "two-sends"),
        default="nginx",
        help="latency: the app behind every target (two-sends: head and body in two sends, "
        "Nagle on)",
    )
    parser.add_argument(
        "--only-default",
        action="store_true",
        help="ca: measure only the default server, not the previous shell next to it",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        metavar="N",
        help="ca, replicas: run the load generator in N forked processes (client CPU summed)",
    )
    parser.add_argument(
        "--server-profile",
        type=Path,
        help="cProfile the CA server (inline handlers) into this file (FILE.baseline, "
        "FILE.baseline2 for the baselines; compare them with scripts/compare_profiles.py)",
    )
    parser.add_argument(
        "--only-phase",
        choices=("bootstrap", "renew", "shell"),
        help="ca: give the other phases a token 0.05 s a round, so that a --server-profile "
        "holds (almost) only this phase's requests",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: minutes of load")
    parser.add_argument(
        "--leaf-ttl", default="30s", help="soak: the CA's leaf TTL (mesh-ca init --leaf-ttl)"
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="soak: requests/s through the chain"
    )
    parser.add_argument(
        "--workdir", type=Path, help="soak: keep the CA, configs and logs here (default: temp)"
    )
    args = parser.parse_args(argv)
    if args.client_processes < 1:
        parser.error(f"--client-processes: must be at least 1, not {args.client_processes}")
    figures = SECTIONS[args.section](args)
    print(json.dumps({args.section: figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
