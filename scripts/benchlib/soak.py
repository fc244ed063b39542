"""The ``soak`` section of scripts/bench.py: a three-service chain under rotation for N minutes.

    web (this driver) → sidecar web ══ http ══▶ sidecar orders → orders app
                                                 orders app → sidecar orders ══ http ══▶
                                                 sidecar payments → payments app
    web (this driver) → sidecar web ══ tcp ══▶ sidecar files → files app (long downloads)

A real `mesh-ca serve` issues short SVIDs (``--leaf-ttl``, 30 s by default) and every
sidecar bootstraps with a join token; the policy file of orders and payments is rewritten
every ``policy_every`` seconds. The driver runs, all at once: keep-alive clients and
new-connection clients paced to ``rate`` requests/s in all (each goes web → orders →
payments), responses streamed by the orders app over ``stream_seconds``, and tcp-mode
downloads through the web and files sidecars (both ``[connection_lifetime] mode =
"until_revoked"``; orders and payments stay ``strict``) that last ``download_seconds``.
Every body is checked byte for byte.

Reported: requests by kind, failures by kind, rotations of each sidecar, access-log lines
of each sidecar against the requests that crossed it, RSS and open fds of every process
per minute. `tests/integration/test_a_soak_across_rotations_fails_no_request_and_logs_every_one.py`
runs a short version.

Why one module: the soak is one scenario (apps, mesh, clients, accounting)
whose parts share one `Tally` and one running mesh; it has no other users.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from meshgate.http import (
    NEED_DATA,
    Data,
    EndOfMessage,
    HttpError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
)
from meshgate.identity import SpiffeId
from tests.ca_server_process import TRUST_DOMAIN
from tests.integration.ca_mesh import bootstrap_identity, init_ca, serving
from tests.integration.http_mesh import POLICIES
from tests.procs import Sidecar, free_port, running_sidecar, write_config

Figures = dict[str, Any]

SERVICES = ("web", "orders", "payments", "files")
IDS = {name: SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/svc/{name}") for name in SERVICES}
_POLICY = """// rewrite {n}: the soak rewrites this file to exercise reloads under load
@id("web-reads-orders")
permit (
  principal == Workload::"{web}",
  action in Action::"read",
  resource == Service::"orders"
);
@id("orders-reads-payments")
permit (
  principal == Workload::"{orders}",
  action in Action::"read",
  resource == Service::"payments"
);
"""
_CHUNK = 4096


def pattern(n: int, seed: int) -> bytes:
    """`n` deterministic bytes (what the apps send and the clients check)."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * (_CHUNK // 32)
    return (block * (n // len(block) + 1))[:n]


@dataclass(frozen=True)
class SoakSettings:
    workdir: Path
    minutes: float = 10.0
    leaf_ttl: str = "30s"
    rate: float = 100.0  # requests/s through the chain, keep-alive and new-connection
    keepalive_clients: int = 8
    new_connection_share: float = 0.25  # of `rate`
    stream_seconds: float = 8.0
    stream_every: float | None = 2.0  # a new streamed response every N s (None: none)
    download_seconds: float = 40.0
    download_bytes: int = 8 * 1024 * 1024
    downloads: int = 2  # running at once, back to back
    downloads_each: int | None = None  # how many each of those makes (None: until the end)
    download_lifetime: str = "until_revoked"  # of the web and files sidecars
    policy_every: float = 5.0
    retire_margin_seconds: float = 10.0
    min_rotations: int = 0  # also run until every sidecar rotated this often
    max_minutes: float | None = None  # hard stop when waiting for rotations


@dataclass
class Tally:
    """What the driver saw; `failures` by kind ("status_502", "reset", "corrupt"...)."""

    ok: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    payments_calls: int = 0  # requests the orders app sent on to payments
    samples: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {detail}")


# -- tiny HTTP/1.1 plumbing over the project's own sans-IO reader --------------------------


async def read_response(
    stream: trio.abc.Stream, reader: ResponseReader, method: str = "GET"
) -> tuple[ResponseHead, bytes, bool]:
    """(head, body, complete): one response; `complete` False when cut before its end."""
    reader.expect(method)
    head: ResponseHead | None = None
    body = bytearray()
    while True:
        try:
            ev = reader.next_event()
        except HttpError:  # e.g. closed inside the body: a cut response
            if head is None:
                raise trio.BrokenResourceError("invalid response") from None
            return head, bytes(body), False
        if ev is NEED_DATA:
            data = await stream.receive_some(65536)
            if data:
                reader.feed(bytes(data))
            else:
                reader.feed_eof()
            continue
        if isinstance(ev, ResponseHead):
            head = ev
        elif isinstance(ev, Data):
            body += ev.data
        elif isinstance(ev, EndOfMessage):
            assert head is not None
            return head, bytes(body), True
        else:
            if head is None:
                raise trio.BrokenResourceError("closed before a response")
            return head, bytes(body), False


def _response(status: int, body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} OK\r\ncontent-length: {len(body)}\r\n"
    return (head + ("connection: close\r\n" if close else "") + "\r\n").encode() + body


async def serve_http(
    stream: trio.SocketStream, answer: Callable[[RequestHead, trio.SocketStream], Awaitable[bool]]
) -> None:
    """Requests on one connection until the client closes; `answer` returns keep-alive."""
    reader = RequestReader()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async with stream:
            while True:
                ev = reader.next_event()
                if ev is NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    reader.feed(bytes(data))
                elif isinstance(ev, RequestHead):
                    while not isinstance(reader.next_event(), EndOfMessage):
                        pass  # GETs only: no body to read
                    if not await answer(ev, stream) or not ev.keep_alive:
                        return
                else:
                    return


# -- the apps ------------------------------------------------------------------------------


@dataclass
class Apps:
    """Payments, orders (calls payments through its sidecar) and files (tcp downloads)."""

    tally: Tally
    stream_seconds: float
    orders_outbound: int = 0  # set once the orders sidecar's ports are known
    ports: dict[str, int] = field(default_factory=dict)

    async def start(self, nursery: trio.Nursery) -> None:
        for name, handler in (
            ("payments", self._payments),
            ("orders", self._orders),
            ("files", self._files),
        ):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.ports[name] = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, handler, listeners)

    async def _payments(self, stream: trio.SocketStream) -> None:
        async def answer(head: RequestHead, s: trio.SocketStream) -> bool:
            await s.send_all(_response(200, f"paid {head.target}".encode()))
            return True

        await serve_http(stream, answer)

    async def _orders(self, stream: trio.SocketStream) -> None:
        upstream: list[tuple[trio.SocketStream, ResponseReader]] = []  # one kept-alive conn

        async def answer(head: RequestHead, s: trio.SocketStream) -> bool:
            if head.target.startswith("/stream/"):
                await self._stream(head, s)
                return True
            body = await self._call_payments(upstream, head.target)
            if body is None:
                await s.send_all(_response(502, b"payments failed", close=True))
                return False
            await s.send_all(_response(200, b"order ok; " + body))
            return True

        try:
            await serve_http(stream, answer)
        finally:
            for conn, _ in upstream:
                await trio.aclose_forcefully(conn)

    async def _call_payments(
        self, upstream: list[tuple[trio.SocketStream, ResponseReader]], target: str
    ) -> bytes | None:
        request = f"GET {target} HTTP/1.1\r\nhost: payments\r\n\r\n".encode()
        for attempt in range(2):
            if not upstream:
                s = await trio.open_tcp_stream("127.0.0.1", self.orders_outbound)
                upstream.append((s, ResponseReader()))
            conn, reader = upstream[0]
            try:
                await conn.send_all(request)
                head, body, complete = await read_response(conn, reader)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                upstream.clear()
                await trio.aclose_forcefully(conn)
                if attempt == 0:
                    continue  # our kept-alive connection to our sidecar idled out
                self.tally.fail("orders_to_payments_reset", str(exc))
                return None
            self.tally.payments_calls += 1
            if not head.keep_alive:
                upstream.clear()
                await trio.aclose_forcefully(conn)
            if head.status != 200 or not complete or body != f"paid {target}".encode():
                self.tally.fail(f"payments_status_{head.status}", body[:200].decode("latin-1"))
                return None
            return body
        return None

    async def _stream(self, head: RequestHead, s: trio.SocketStream) -> None:
        """A chunked response over `stream_seconds`: 16 pieces of a known pattern."""
        seed = int(head.target.rsplit("/", 1)[1])
        data = pattern(64 * 1024, seed)
        pieces = 16
        await s.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        step = len(data) // pieces
        for i in range(pieces):
            chunk = data[i * step : (i + 1) * step]
            await s.send_all(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await trio.sleep(self.stream_seconds / pieces)
        await s.send_all(b"0\r\n\r\n")

    async def _files(self, stream: trio.SocketStream) -> None:
        """``<bytes> <seconds> <seed>\\n`` → that many pattern bytes, evenly over `seconds`."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                line = b""
                while not line.endswith(b"\n"):
                    data = await stream.receive_some(64)
                    if not data:
                        return
                    line += data
                size, seconds, seed = line.split()
                data = pattern(int(size), int(seed))
                steps = max(1, int(float(seconds) * 4))
                step = -(-len(data) // steps)
                for i in range(steps):
                    await stream.send_all(data[i * step : (i + 1) * step])
                    await trio.sleep(float(seconds) / steps)
                await stream.send_eof()


# -- the sidecars --------------------------------------------------------------------------


@dataclass
class Mesh:
    sidecars: dict[str, Sidecar]
    ports: dict[str, int]  # web_http, web_tcp, orders_out
    access_logs: dict[str, Path]
    policy_dirs: list[Path]
    ca_pid: int


def _policy_dir(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in ("mesh.cedarschema", "entities.json"):
        shutil.copy(POLICIES / name, directory / name)
    write_policy(directory, 0)
    return directory


def write_policy(directory: Path, n: int) -> None:
    text = _POLICY.format(n=n, web=IDS["web"], orders=IDS["orders"])
    tmp = directory / ".mesh.cedar.tmp"
    tmp.write_text(text)
    tmp.replace(directory / "mesh.cedar")  # atomic: the watcher never sees half a file


@contextlib.contextmanager
def running_mesh(settings: SoakSettings, apps: Apps) -> Iterator[Mesh]:
    work = settings.workdir
    ca = init_ca(work / "ca", leaf_ttl=settings.leaf_ttl)
    ports = {
        key: free_port()
        for key in ("web_http", "web_tcp", "orders_in", "orders_out", "payments_in", "files_in")
    }
    admin = {name: free_port() for name in SERVICES}
    until_revoked = {"mode": settings.download_lifetime, "max_age_seconds": 3600}
    margin = {"retire_margin_seconds": settings.retire_margin_seconds}
    policy_dirs = [_policy_dir(work / "orders-policies"), _policy_dir(work / "payments-policies")]
    logs = {name: work / f"{name}.access.log" for name in SERVICES}
    with serving(ca, work / "ca.log") as server:

        def config(name: str, body: dict[str, Any]) -> Path:
            identity = bootstrap_identity(ca, server, IDS[name], work / name)
            return write_config(
                work / f"{name}.toml",
                {
                    "identity": {"spiffe_id": str(IDS[name]), **identity},
                    "admin": {"listen": f"127.0.0.1:{admin[name]}"},
                    "log": {"access_log": str(logs[name]), "format": "json"},
                    **body,
                },
            )

        def outbound(listen: str, service: str, endpoint: str, protocol: str) -> dict[str, Any]:
            return {
                "listen": f"127.0.0.1:{ports[listen]}",
                "service": service,
                "endpoints": [f"127.0.0.1:{ports[endpoint]}"],
                "spiffe_ids": [str(IDS[service])],
                "protocol": protocol,
            }

        def inbound(listen: str, service: str, protocol: str) -> dict[str, Any]:
            return {
                "listen": f"127.0.0.1:{ports[listen]}",
                "app": f"127.0.0.1:{apps.ports[service]}",
                "service": service,
                "protocol": protocol,
            }

        configs = {
            "payments": config(
                "payments",
                {
                    "inbound": inbound("payments_in", "payments", "http"),
                    "policy": {"dir": str(policy_dirs[1])},
                    "connection_lifetime": margin,
                },
            ),
            "orders": config(
                "orders",
                {
                    "inbound": inbound("orders_in", "orders", "http"),
                    "outbound": [outbound("orders_out", "payments", "payments_in", "http")],
                    "policy": {"dir": str(policy_dirs[0])},
                    "connection_lifetime": margin,
                },
            ),
            "files": config(
                "files",
                {
                    "inbound": {
                        **inbound("files_in", "files", "tcp"),
                        "allowed_ids": [str(IDS["web"])],
                    },
                    "connection_lifetime": {**until_revoked, **margin},
                },
            ),
            "web": config(
                "web",
                {
                    "outbound": [
                        outbound("web_http", "orders", "orders_in", "http"),
                        outbound("web_tcp", "files", "files_in", "tcp"),
                    ],
                    "connection_lifetime": {**until_revoked, **margin},
                },
            ),
        }
        apps.orders_outbound = ports["orders_out"]
        with contextlib.ExitStack() as stack:
            sidecars = {
                name: stack.enter_context(running_sidecar(configs[name], admin[name]))
                for name in ("payments", "orders", "files", "web")
            }
            yield Mesh(sidecars, ports, logs, policy_dirs, server.process.pid)


# -- the load ------------------------------------------------------------------------------


class Pacer:
    """Hands out request slots at `rate` per second to any number of workers."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = trio.current_time()

    async def slot(self) -> None:
        self.next = max(self.next + self.interval, trio.current_time() - 1.0)
        await trio.sleep_until(self.next)


def _check(
    tally: Tally, kind: str, head: ResponseHead, body: bytes, complete: bool, n: int
) -> None:
    if head.status != 200:
        tally.fail(f"{kind}_status_{head.status}", body[:200].decode("latin-1"))
    elif not complete:
        tally.fail(f"{kind}_incomplete", f"{len(body)} bytes")
    elif kind == "stream" and body != pattern(64 * 1024, n):
        tally.fail("stream_corrupt", f"{len(body)} bytes")
    elif kind != "stream" and body != f"order ok; paid /order/{n}".encode():
        tally.fail(f"{kind}_corrupt", body[:200].decode("latin-1"))
    else:
        tally.ok[kind] += 1


async def keepalive_client(
    port: int, pacer: Pacer, tally: Tally, ids: Iterator[int], stop: trio.Event
) -> None:
    conn: tuple[trio.SocketStream, ResponseReader] | None = None
    while True:
        await pacer.slot()
        if stop.is_set():
            break
        n = next(ids)
        if conn is None:
            conn = (await trio.open_tcp_stream("127.0.0.1", port), ResponseReader())
        stream, reader = conn
        try:
            await stream.send_all(f"GET /order/{n} HTTP/1.1\r\nhost: orders\r\n\r\n".encode())
            head, body, complete = await read_response(stream, reader)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            tally.fail("keepalive_reset", repr(exc))
            await trio.aclose_forcefully(stream)
            conn = None
            continue
        _check(tally, "keepalive", head, body, complete, n)
        if not head.keep_alive or not complete:
            await trio.aclose_forcefully(stream)
            conn = None
    if conn is not None:
        await trio.aclose_forcefully(conn[0])


async def one_request(port: int, tally: Tally, kind: str, target: str, n: int) -> None:
    try:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            request = f"GET {target} HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n"
            await stream.send_all(request.encode())
            head, body, complete = await read_response(stream, ResponseReader())
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        tally.fail(f"{kind}_reset", repr(exc))
        return
    _check(tally, kind, head, body, complete, n)


async def download(port: int, settings: SoakSettings, tally: Tally, seed: int) -> None:
    size = settings.download_bytes
    try:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(f"{size} {settings.download_seconds} {seed}\n".encode())
            received = bytearray()
            while data := await stream.receive_some(65536):
                received += data
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        tally.fail("download_reset", repr(exc))
        return
    if bytes(received) != pattern(size, seed):
        tally.fail("download_cut", f"{len(received)} of {size} bytes")
    else:
        tally.ok["download"] += 1


# -- measurements --------------------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MB) and open fds of a live process, from /proc."""
    rss = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd")) if Path(f"/proc/{pid}/fd").exists() else 0
    return {"rss_mb": round(rss, 1), "fds": fds}


def access_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def rotations(sidecar: Sidecar) -> int:
    """Rotations done so far (0 when the admin listener does not answer in time)."""
    try:
        status, view = await trio.to_thread.run_sync(sidecar.get, "/certificate")
    except OSError:
        return 0
    return int(view.get("rotations", {}).get("ok", 0)) if status == 200 else 0


def log_accounting(mesh: Mesh, tally: Tally) -> Figures:
    """Access-log lines of each hop against the requests the driver knows crossed it."""
    http = tally.ok["keepalive"] + tally.ok["new_connection"] + tally.ok["stream"]
    http += sum(n for kind, n in tally.failures.items() if not kind.startswith("download"))
    downloads = tally.ok["download"] + sum(
        n for kind, n in tally.failures.items() if kind.startswith("download")
    )
    lines = {name: access_lines(path) for name, path in mesh.access_logs.items()}

    def hop(name: str, direction: str, protocol: str) -> list[dict[str, Any]]:
        return [
            line
            for line in lines[name]
            if line.get("direction") == direction and line.get("protocol", "http") == protocol
        ]

    rows = {
        "web outbound http": (hop("web", "outbound", "http"), http),
        "orders inbound http": (hop("orders", "inbound", "http"), http),
        "orders outbound http": (hop("orders", "outbound", "http"), tally.payments_calls),
        "payments inbound http": (hop("payments", "inbound", "http"), tally.payments_calls),
        "web outbound tcp": (hop("web", "outbound", "tcp"), downloads),
        "files inbound tcp": (hop("files", "inbound", "tcp"), downloads),
    }
    figures: Figures = {}
    for name, (logged, expected) in rows.items():
        not_ok = Counter(
            f"{line.get('status')} {line.get('reason')}"
            for line in logged
            if line.get("reason") or (line.get("status") not in (200, None))
        )
        figures[name] = {"requests": expected, "log_lines": len(logged), "not_ok": dict(not_ok)}
    return figures


# -- the run -------------------------------------------------------------------------------


async def _soak(settings: SoakSettings, progress: Callable[[str], None]) -> Figures:
    tally = Tally()
    apps = Apps(tally, settings.stream_seconds)
    async with trio.open_nursery() as nursery:
        await apps.start(nursery)
        with running_mesh(settings, apps) as mesh:
            figures = await _drive(settings, mesh, tally, progress)
            figures["accounting"] = log_accounting(mesh, tally)
        nursery.cancel_scope.cancel()
    return figures


async def _drive(
    settings: SoakSettings, mesh: Mesh, tally: Tally, progress: Callable[[str], None]
) -> Figures:
    pids = {name: s.process.pid for name, s in mesh.sidecars.items()} | {"ca": mesh.ca_pid}
    started = trio.current_time()
    ids = iter(range(10**12))
    new_rate = settings.rate * settings.new_connection_share
    keep_pacer, new_pacer = Pacer(settings.rate - new_rate), Pacer(new_rate)
    http_port = mesh.ports["web_http"]

    stop = trio.Event()

    async def new_connections(nursery: trio.Nursery) -> None:
        while True:
            await new_pacer.slot()
            if stop.is_set():
                return
            n = next(ids)
            nursery.start_soon(one_request, http_port, tally, "new_connection", f"/order/{n}", n)

    async def streams(nursery: trio.Nursery) -> None:
        if settings.stream_every is None:
            return
        while not stop.is_set():
            n = next(ids)
            nursery.start_soon(one_request, http_port, tally, "stream", f"/stream/{n}", n)
            with trio.move_on_after(settings.stream_every):
                await stop.wait()

    async def downloads() -> None:
        made = 0
        while not stop.is_set() and made != settings.downloads_each:
            await download(mesh.ports["web_tcp"], settings, tally, next(ids))
            made += 1

    async def policies() -> None:
        n = 0
        while True:
            await trio.sleep(settings.policy_every)
            n += 1
            for directory in mesh.policy_dirs:
                write_policy(directory, n)

    async def sample() -> None:
        minute = 0
        while True:
            row: dict[str, Any] = {
                "minute": minute,
                "requests_ok": sum(tally.ok.values()),
                "failures": sum(tally.failures.values()),
            }
            row |= {name: proc_figures(pid) for name, pid in pids.items()}
            tally.samples.append(row)
            progress(json.dumps(row))
            minute += 1
            await trio.sleep(60)

    async def enough() -> None:
        end = started + settings.minutes * 60
        hard = started + (settings.max_minutes or settings.minutes) * 60
        while trio.current_time() < hard:
            seen = [await rotations(s) for s in mesh.sidecars.values()]
            if trio.current_time() >= end and min(seen) >= settings.min_rotations:
                break
            await trio.sleep(1)
        stop.set()  # nothing new starts; what is in flight finishes

    async with trio.open_nursery() as background:
        background.start_soon(sample)
        background.start_soon(policies)
        async with trio.open_nursery() as load:
            for _ in range(settings.keepalive_clients):
                load.start_soon(keepalive_client, http_port, keep_pacer, tally, ids, stop)
            load.start_soon(new_connections, load)
            load.start_soon(streams, load)
            for _ in range(settings.downloads):
                load.start_soon(downloads)
            await enough()
        background.cancel_scope.cancel()
    return await _finish(settings, mesh, tally, pids, started)


async def _finish(
    settings: SoakSettings, mesh: Mesh, tally: Tally, pids: dict[str, int], started: float
) -> Figures:
    minutes = (trio.current_time() - started) / 60
    await trio.sleep(1.0)  # the last access lines reach their files
    rotated = {name: await rotations(s) for name, s in mesh.sidecars.items()}
    final = {name: proc_figures(pid) for name, pid in pids.items()}
    return {
        "settings": {
            "leaf_ttl": settings.leaf_ttl,
            "rate": settings.rate,
            "stream_seconds": settings.stream_seconds,
            "download_seconds": settings.download_seconds,
            "policy_every": settings.policy_every,
            "retire_margin_seconds": settings.retire_margin_seconds,
        },
        "minutes": round(minutes, 2),
        "requests_ok": dict(tally.ok),
        "requests_per_second": round(sum(tally.ok.values()) / (minutes * 60), 1),
        "failures": dict(tally.failures),
        "failure_examples": tally.examples,
        "payments_calls": tally.payments_calls,
        "rotations": rotated,
        "per_minute": tally.samples,
        "final": final,
    }


def run_soak(settings: SoakSettings, progress: Callable[[str], None] = print) -> Figures:
    settings.workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    figures = trio.run(_soak, settings, progress)
    figures["wall_seconds"] = round(time.monotonic() - began, 1)
    return figures


def bench_soak(args: argparse.Namespace) -> Figures:
    """``bench.py soak --minutes N [--leaf-ttl 30s] [--rate 100] [--workdir DIR]``."""

    def progress(message: str) -> None:
        sys.stderr.write(f"[soak] {message}\n")
        sys.stderr.flush()

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgate-soak-"))
        )
        settings = SoakSettings(
            workdir=Path(workdir), minutes=args.minutes, leaf_ttl=args.leaf_ttl, rate=args.rate
        )
        progress(f"{settings.minutes:g} min, leaf TTL {settings.leaf_ttl}, in {workdir}")
        return run_soak(settings, progress)


SECTIONS = {"soak": bench_soak}
