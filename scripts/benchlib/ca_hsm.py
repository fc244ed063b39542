"""``bench.py ca-hsm``: issuance with the CA keys in a PKCS#11 token (SoftHSM2) next to
file keys, in one run.

Two CAs, identical but for ``[keys]``: one with key files, one whose keys were generated in
a throwaway SoftHSM2 token (`tests/softhsm.py`). Each round measures, for both:

- raw: `issue_leaf` from pre-made CSRs in this process, leaves per CPU second (with the
  token, every leaf's ECDSA signature is a C_Sign call into libsofthsm2 in this process);
- bootstrap: ``/v1/bootstrap`` through a real ``mesh-ca serve`` of each, issued per second
  and per server CPU second (SoftHSM2 runs inside the server process, so its CPU counts).

The rounds interleave the two, so a change in the machine's load hits both alike; the
ratios token/file are what to read. A hardware HSM adds a round trip per signature that
SoftHSM2 does not: this measures the cost of the PKCS#11 path, not of a device.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mesh_ca.ca_dir import init_ca_dir
from mesh_ca.config import CaConfig, ServerConfig
from mesh_ca.keys_config import KeysConfig
from meshgate.identity import BundleSet
from meshgate.transport.mtls import client_context
from scripts.benchlib.ca_load import Target, run_load
from scripts.benchlib.ca_requests import add_tokens, bootstrap_bodies, raw_signing
from tests.ca_server_process import CaServer, serving_ca_dir
from tests.softhsm import PIN_ENV, softhsm_token

__all__ = ["bench_ca_hsm"]

Figures = dict[str, Any]
_BACKENDS = ("file", "pkcs11")


def _progress(message: str) -> None:
    import sys

    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _config(keys: KeysConfig) -> CaConfig:
    return CaConfig(
        trust_domain="bench.example",
        server=ServerConfig(rate_limit_per_second=1e9, rate_limit_burst=10**9),
        keys=keys,
    )


def _bootstrap(
    server: CaServer, bodies: Iterator[bytes], seconds: float, concurrency: int, processes: int
) -> Figures:
    context = client_context(BundleSet.of(server.ca.bundle))
    targets = [Target((server.host, server.port), context)] * concurrency
    cpu_before = _cpu_seconds(server.process.pid)
    load = run_load(targets, "/v1/bootstrap", bodies, seconds, processes=processes)
    cpu = _cpu_seconds(server.process.pid) - cpu_before
    return {
        "issued": load.ok,
        "failed": load.failed,
        "seconds": load.seconds,
        "server_cpu_seconds": cpu,
    }


def _rates(raw: list[tuple[int, float]], api: list[Figures]) -> Figures:
    leaves, cpu = sum(n for n, _ in raw), sum(c for _, c in raw)
    issued = sum(p["issued"] for p in api)
    wall = sum(p["seconds"] for p in api)
    server_cpu = sum(p["server_cpu_seconds"] for p in api)
    return {
        "raw_leaves_per_cpu_second": round(leaves / cpu, 1),
        "raw_per_round": [round(n / c) for n, c in raw],
        "bootstrap": {
            "issued": issued,
            "failed": sum(p["failed"] for p in api),
            "per_second": round(issued / wall, 1),
            "per_server_cpu_second": round(issued / server_cpu, 1) if server_cpu else None,
            "per_second_per_round": [round(p["issued"] / p["seconds"], 1) for p in api],
        },
    }


def bench_ca_hsm(args: argparse.Namespace) -> Figures:
    seconds, rounds, concurrency = args.seconds, args.rounds, args.concurrency
    share = seconds / rounds
    figures: Figures = {
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "concurrency": concurrency,
        "client_processes": args.client_processes,
    }
    with (
        tempfile.TemporaryDirectory(prefix="meshgate-bench-hsm-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        base = Path(tmp)
        token = stack.enter_context(softhsm_token(base / "softhsm", "bench-ca"))
        os.environ[PIN_ENV] = token.pin  # this process signs through the token too
        stack.callback(os.environ.pop, PIN_ENV, None)
        figures["token"] = f"SoftHSM2 via {token.module}"
        keys = {
            "file": KeysConfig(),
            "pkcs11": KeysConfig(
                backend="pkcs11",
                module=token.module,
                token_label=token.label,
                pin_env=PIN_ENV,
                root_key_label="bench-root",
                intermediate_key_label="bench-intermediate",
            ),
        }
        now = datetime.now(UTC)
        cas = {
            name: init_ca_dir(base / name, "bench.example", now, config=_config(keys[name]))
            for name in _BACKENDS
        }
        servers = {
            name: stack.enter_context(
                serving_ca_dir(
                    cas[name],
                    base / f"{name}.log",
                    extra=("--log-level", args.log_level),
                    env=token.env(),
                )
            )
            for name in _BACKENDS
        }
        estimate = raw_signing(cas["file"], 0.5, csr_count=32)
        n_tokens = int(estimate[0] / estimate[1] * share * 1.5) + 200
        raw: dict[str, list[tuple[int, float]]] = {name: [] for name in _BACKENDS}
        api: dict[str, list[Figures]] = {name: [] for name in _BACKENDS}
        for index in range(rounds):
            for name in _BACKENDS:
                _progress(f"round {index + 1}/{rounds} [{name} keys] raw signing, bootstrap")
                raw[name].append(raw_signing(cas[name], share, csr_count=32))
                bodies = bootstrap_bodies(add_tokens(cas[name], n_tokens, f"r{index}"))
                api[name].append(
                    _bootstrap(servers[name], bodies, share, concurrency, args.client_processes)
                )
    for name in _BACKENDS:
        figures[f"{name}_keys"] = _rates(raw[name], api[name])
    file_keys, token_keys = figures["file_keys"], figures["pkcs11_keys"]
    figures["token_over_file"] = {
        "raw": round(
            token_keys["raw_leaves_per_cpu_second"] / file_keys["raw_leaves_per_cpu_second"], 3
        ),
        "bootstrap_per_second": round(
            token_keys["bootstrap"]["per_second"] / file_keys["bootstrap"]["per_second"], 3
        ),
    }
    if (
        file_keys["bootstrap"]["per_server_cpu_second"]
        and (token_keys["bootstrap"]["per_server_cpu_second"])
    ):
        figures["token_over_file"]["bootstrap_per_server_cpu_second"] = round(
            token_keys["bootstrap"]["per_server_cpu_second"]
            / file_keys["bootstrap"]["per_server_cpu_second"],
            3,
        )
    figures["load_average"] = os.getloadavg()[0]
    return figures
