"""``bench.py control-plane``: how fast one change reaches 1,000 watchers, and what the
control plane costs while 1,000 sidecars are registered.

One real ``mesh-ca serve`` (SQLite, `[control]` over a copy of policies/). The load:

- 1,000 registered sidecars: 50 services x 20 instances, each instance an endpoint; the
  instances of a service share its SPIFFE ID and one kept-alive mTLS connection, and renew
  every `renew_seconds` (10 s, lease TTL 30 s: 100 renewals/s in all);
- 1,000 watchers of one service (``s0``, the worst case: one change wakes them all), each
  on its own kept-alive mTLS connection, long-polling with the version it holds.

Each round adds an instance of ``s0`` (then removes it in the next) and measures, for each
watcher, the time from just before the change's request is sent to the moment that
watcher has read the new version; the figures are the p50/p99/max over every watcher and
round, the CA's CPU during each round (the change and its fan-out, plus the renewals meanwhile),
its CPU seconds per second over the rounds, and its RSS. The watchers run in
this one process on the same 2 cores, so their own scheduling is in the figures (they can
only make them worse).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization

from mesh_ca.config import ServerConfig
from mesh_ca.issuance import issue_leaf, make_csr
from meshgate.identity import BundleSet, SpiffeId
from meshgate.keys import generate_key, private_key_pem
from meshgate.transport.mtls import client_context
from tests.ca_server_process import CaServer, serving_ca_dir
from tests.control_helpers import control_ca

__all__ = ["bench_control_plane"]

Figures = dict[str, Any]
SERVICES = 50
INSTANCES = 20
WATCHERS = 1000
RENEW_SECONDS = 10
_JSON = b"application/json"


def _progress(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _context(server: CaServer, spiffe_id: SpiffeId) -> ssl.SSLContext:
    key = generate_key()
    cert = issue_leaf(make_csr(key), spiffe_id, server.ca.signer, datetime.now(UTC))
    chain = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (cert, server.ca.signer.cert)
    )
    return client_context(BundleSet.of(server.ca.bundle), chain, private_key_pem(key))


class _Conn:
    """One kept-alive mTLS connection to the CA; one request at a time."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, server: CaServer, context: ssl.SSLContext) -> _Conn:
        tcp = await trio.open_tcp_stream(server.host, server.port)
        stream = trio.SSLStream(tcp, context)
        await stream.do_handshake()
        return cls(stream)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: ca\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n\r\n"
        ).encode()
        await self.stream.send_all(head + data)
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the CA closed the connection")
            self.buffer += chunk
        end = self.buffer.index(b"\r\n\r\n") + 4
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        )
        while len(self.buffer) < end + length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the CA closed the connection")
            self.buffer += chunk
        reply = bytes(self.buffer[end : end + length])
        del self.buffer[: end + length]
        return status, reply


def _shop(service: str) -> SpiffeId:
    return SpiffeId.workload("example.org", "shop", service)


async def _run(server: CaServer, rounds: int) -> Figures:
    pid = server.process.pid
    contexts = {f"s{i}": _context(server, _shop(f"s{i}")) for i in range(SERVICES)}
    watcher_contexts = [_context(server, _shop(f"web{i}")) for i in range(10)]
    figures: Figures = {
        "services": SERVICES,
        "registered_sidecars": SERVICES * INSTANCES,
        "ca_rss_mb_idle": round(_rss_mb(pid), 1),
    }
    renewals = 0

    async with trio.open_nursery() as nursery:
        registrars = [await _Conn.open(server, contexts[f"s{i}"]) for i in range(SERVICES)]

        async def register_all(index: int) -> None:
            nonlocal renewals
            conn = registrars[index]
            for instance in range(INSTANCES):
                status, body = await conn.post(
                    "/v1/control/register",
                    {
                        "service": f"s{index}",
                        "address": f"10.1.{index}.{instance + 1}:8443",
                        "protocol": "http",
                    },
                )
                if status != 200:
                    raise RuntimeError(f"register s{index}: {status} {body[:200]!r}")
                renewals += 1

        started = time.perf_counter()
        async with trio.open_nursery() as registering:
            for index in range(SERVICES):
                registering.start_soon(register_all, index)
        _progress(
            f"{SERVICES * INSTANCES} sidecars registered in {time.perf_counter() - started:.1f} s"
        )

        async def renew_loop(index: int) -> None:
            due = trio.current_time()
            while True:  # on a fixed cadence, as a sidecar's lease timer
                due += RENEW_SECONDS
                await trio.sleep_until(due)
                await register_all(index)

        for index in range(SERVICES):
            nursery.start_soon(renew_loop, index)

        versions = [0] * WATCHERS
        arrived: list[float | None] = [None] * WATCHERS
        all_arrived = trio.Event()
        everyone_current = trio.Event()
        waiting_for = [0]

        async def watch(index: int) -> None:
            # Connect, then ask at once: an idle new connection meets the header timeout.
            conn = await _Conn.open(server, watcher_contexts[index % len(watcher_contexts)])
            while True:
                status, body = await conn.post(
                    "/v1/control/endpoints",
                    {"service": "s0", "after": versions[index], "wait_ms": 30_000},
                )
                now = time.perf_counter()
                if status != 200:
                    raise RuntimeError(f"watch: {status} {body[:200]!r}")
                version = json.loads(body)["version"]
                if version != versions[index]:
                    versions[index] = version
                    if min(versions) > 0:
                        everyone_current.set()
                    if arrived[index] is None and version >= waiting_for[0] > 0:
                        arrived[index] = now
                        if all(a is not None for a in arrived):
                            all_arrived.set()

        for index in range(WATCHERS):
            nursery.start_soon(watch, index)
        with trio.fail_after(120):
            await everyone_current.wait()
        _progress(f"{WATCHERS} watchers connected, each holding the current set")
        figures["ca_rss_mb_loaded"] = round(_rss_mb(pid), 1)

        changer = await _Conn.open(server, contexts["s0"])
        delays: list[float] = []
        per_round: list[Figures] = []
        cpu_start, wall_start, renew_start = _cpu_seconds(pid), time.perf_counter(), renewals
        for round_index in range(rounds):
            await trio.sleep(1.0)  # the watchers are all waiting again
            target = max(versions) + 1
            arrived[:] = [None] * WATCHERS
            all_arrived = trio.Event()
            waiting_for[0] = target
            path = "/v1/control/register" if round_index % 2 == 0 else "/v1/control/deregister"
            cpu_before = _cpu_seconds(pid)
            sent = time.perf_counter()
            status, body = await changer.post(
                path, {"service": "s0", "address": "10.2.0.1:8443", "protocol": "http"}
            )
            if status != 200:
                raise RuntimeError(f"change: {status} {body[:200]!r}")
            with trio.fail_after(60):
                await all_arrived.wait()
            cpu_round = _cpu_seconds(pid) - cpu_before
            mine = sorted((a - sent) for a in arrived if a is not None)
            delays += mine
            per_round.append(
                {
                    "p50_ms": round(mine[len(mine) // 2] * 1000, 1),
                    "p99_ms": round(mine[int(len(mine) * 0.99) - 1] * 1000, 1),
                    "max_ms": round(mine[-1] * 1000, 1),
                    "ca_cpu_ms": round(cpu_round * 1000),
                }
            )
            _progress(f"round {round_index + 1}: {per_round[-1]}")
        wall = time.perf_counter() - wall_start
        cpu = _cpu_seconds(pid) - cpu_start
        delays.sort()
        figures.update(
            {
                "watchers": WATCHERS,
                "rounds": per_round,
                "propagation_p50_ms": round(delays[len(delays) // 2] * 1000, 1),
                "propagation_p99_ms": round(delays[int(len(delays) * 0.99) - 1] * 1000, 1),
                "propagation_max_ms": round(delays[-1] * 1000, 1),
                "ca_cpu_per_second": round(cpu / wall, 3),
                "renewals_per_second": round((renewals - renew_start) / wall, 1),
                "ca_rss_mb_end": round(_rss_mb(pid), 1),
            }
        )
        nursery.cancel_scope.cancel()
    return figures


def bench_control_plane(args: argparse.Namespace) -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        directory = Path(tmp)
        ca = control_ca(
            directory,
            server=ServerConfig(
                rate_limit_per_second=1e9,
                rate_limit_burst=10**9,
                max_connections=4096,
                max_connections_per_source=4096,
            ),
            lease_ttl_seconds=3 * RENEW_SECONDS,
            renew_seconds=RENEW_SECONDS,
            max_registrations_per_id=INSTANCES + 2,
        )
        extra = ("--log-level", "warning")
        with serving_ca_dir(ca, directory / "server.log", extra=extra) as server:
            figures = trio.run(_run, server, max(2, args.rounds))
    return figures
