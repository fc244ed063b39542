"""``workers = N``: N processes serve the same listeners (SO_REUSEPORT) with one identity.

The parent runs the identity lifecycle (static files or CA bootstrap/rotation, exactly as
a single process would: one token redemption, one renewal schedule) and the admin
listener. It does not proxy. On every credential or revocation change it writes the SVID
chain, key (0600), the trust bundle and the revocations into a private runtime directory
(0700, removed on exit; files replaced atomically) and sends SIGHUP to the workers.

A worker (`python -m sidecar.workers CONFIG RUNTIME_DIR`) runs `sidecar.app.run` with a
static identity on those files (reloaded on SIGHUP and by mtime), follows the revocations
file, binds every inbound/outbound listener with SO_REUSEPORT, loads the policy directory
itself, and writes ``ready-<pid>`` once bound. A worker whose parent died drains and exits
(PR_SET_PDEATHSIG is not used: it fires when the forking *thread* exits, and trio forks
from a worker thread).

The parent restarts a worker that exits while it is not draining, forwards SIGTERM/SIGINT
(drain: each worker drains its own connections; the parent exits 0 when every worker
did) and SIGHUP (identity files and policies). Metrics: the parent's ``/metrics`` carries
the identity metrics (expiry, rotations); data-path metrics live in each worker's own
registry and are not aggregated yet (no worker exposes an admin port).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import final

import trio

from mesh_ca.clock import SystemClock
from mesh_ca.files import write_atomic, write_atomic_set
from mesh_ca.identity.bundle import pem_bundle
from mesh_ca.keys import private_key_pem
from sidecar.admin import AdminState, serve_admin
from sidecar.config import IdentityConfig, SidecarConfig, load_config
from sidecar.identity.credentials import CredentialStore, Revocations
from sidecar.identity.static_files import ReloadSignal
from sidecar.logs import event
from sidecar.metrics import SidecarMetrics

__all__ = ["Supervisor", "main", "supervise"]

log = logging.getLogger("sidecar.workers")
_RESTART_DELAY_SECONDS = 0.5
_READY_TIMEOUT_SECONDS = 30.0


def write_credentials(store: CredentialStore, directory: Path) -> bool:
    """Publish the parent's current credentials and revocations as files; False if none."""
    creds = store.current
    if creds is None:
        return False
    bundle = creds.bundles.get(creds.spiffe_id.trust_domain)
    anchors = (*bundle.roots, *bundle.intermediates) if bundle is not None else ()
    # One set: a worker that reloads between two renames at worst sees a pair that does
    # not match and keeps its current SVID; it never sees a half-written file.
    write_atomic_set(
        [
            (directory / "svid.key", private_key_pem(creds.key), 0o600),
            (directory / "bundle.pem", pem_bundle(anchors), 0o644),
            (directory / "svid.pem", pem_bundle(creds.chain), 0o644),
        ]
    )
    revoked = store.revocations
    write_atomic(
        directory / "revocations.json",
        json.dumps(
            {
                "spiffe_ids": sorted(str(s) for s in revoked.spiffe_ids),
                "serials": sorted(revoked.serials),
                "untrusted_domains": sorted(d.name for d in revoked.untrusted_domains),
            }
        ).encode(),
    )
    return True


@final
class Supervisor:
    """The parent: identity, admin, and N worker processes."""

    def __init__(self, config: SidecarConfig, config_path: Path, runtime_dir: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.runtime_dir = runtime_dir
        self.processes: dict[int, trio.Process] = {}  # slot → process
        self.draining = False
        self.restarts = 0
        self._store = CredentialStore()

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sidecar.workers",
            str(self.config_path),
            str(self.runtime_dir),
        ]

    async def _keep_worker(self, slot: int, started: trio.Event) -> None:
        while True:
            process = await trio.lowlevel.open_process(self._command())
            self.processes[slot] = process
            event(log, "worker started", worker=slot, pid=process.pid)
            started.set()
            code = await process.wait()
            if self.draining:
                event(log, "worker stopped", worker=slot, pid=process.pid, exit_code=code)
                return
            self.restarts += 1
            event(
                log,
                "worker exited; restarting",
                level=logging.ERROR,
                worker=slot,
                pid=process.pid,
                exit_code=code,
            )
            await trio.sleep(_RESTART_DELAY_SECONDS)

    def signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    def _publish(self) -> None:
        if write_credentials(self._store, self.runtime_dir):
            self.signal_all(signal.SIGHUP)

    async def _wait_ready(self, count: int) -> None:
        with trio.fail_after(_READY_TIMEOUT_SECONDS):
            while _ready_count(self.runtime_dir) < count:  # noqa: ASYNC110 - files of other processes
                await trio.sleep(0.05)

    async def run(self) -> int:
        from sidecar.app import _start_identity  # one identity lifecycle, as a single process

        clock = SystemClock()
        store = self._store
        metrics = SidecarMetrics()
        metrics.watch_credentials(store)
        reload = ReloadSignal()
        drain = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, drain, reload)
            stats = await _start_identity(self.config, store, clock, reload, nursery)
            metrics.watch_identity(stats)
            if not write_credentials(store, self.runtime_dir):
                raise RuntimeError("identity started without credentials")
            store.subscribe(self._publish)
            async with trio.open_nursery() as workers:
                for slot in range(self.config.workers):
                    started = trio.Event()
                    workers.start_soon(self._keep_worker, slot, started)
                    await started.wait()
                await self._wait_ready(self.config.workers)
                if self.config.admin is not None:
                    state = AdminState(
                        self.config,
                        store,
                        clock.now,
                        lambda: stats.next_rotation_at,
                        metrics=metrics,
                        identity_stats=stats,
                    )
                    await nursery.start(serve_admin, self.config.admin.listen, state)
                pids = [p.pid for p in self.processes.values()]
                event(log, "workers started", workers=self.config.workers, pids=pids)
                await drain.wait()
                self.draining = True
                self.signal_all(signal.SIGTERM)
            codes = [p.returncode for p in self.processes.values()]
            nursery.cancel_scope.cancel()
        event(log, "sidecar stopped", worker_exit_codes=codes)
        # -SIGTERM: a worker still starting when the drain began had nothing to drain.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1

    async def _signals(self, drain: trio.Event, reload: ReloadSignal) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    event(log, "SIGHUP: reloading identity; forwarding to workers")
                    reload.request()
                    self.signal_all(signal.SIGHUP)
                else:
                    event(log, "drain requested", signal=signal.Signals(signum).name)
                    drain.set()


async def supervise(config: SidecarConfig, config_path: Path | str) -> int:
    """Run `config.workers` worker processes under this one; returns the exit code."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="meshgate-workers-"))  # 0700
    try:
        return await Supervisor(config, _absolute(config_path), runtime_dir).run()
    finally:
        _remove_dir(runtime_dir)


def _absolute(path: Path | str) -> Path:
    return Path(path).resolve()


def _remove_dir(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink(missing_ok=True)
    directory.rmdir()


def _ready_count(directory: Path) -> int:
    return len(list(directory.glob("ready-*")))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


# -- the worker side ----------------------------------------------------------------------


def worker_config(config: SidecarConfig, runtime_dir: Path) -> SidecarConfig:
    """The worker's view: static identity on the parent's files, no admin listener."""
    identity = IdentityConfig(
        spiffe_id=config.identity.spiffe_id,
        bundle_file=runtime_dir / "bundle.pem",
        cert_file=runtime_dir / "svid.pem",
        key_file=runtime_dir / "svid.key",
        reload_interval_seconds=1.0,
    )
    return config.model_copy(update={"identity": identity, "admin": None})


def _read_revocations(path: Path) -> Revocations | None:
    from mesh_ca.identity import SpiffeId, TrustDomain

    try:
        data = json.loads(path.read_bytes())
        return Revocations(
            frozenset(SpiffeId.parse(s) for s in data["spiffe_ids"]),
            frozenset(int(n) for n in data["serials"]),
            frozenset(TrustDomain.parse(d) for d in data["untrusted_domains"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        event(
            log,
            "revocations file unreadable; keeping the last",
            level=logging.ERROR,
            error=str(exc),
        )
        return None


async def _follow_revocations(store: CredentialStore, path: Path) -> None:
    seen = -1.0
    while True:
        mtime = _mtime(path)
        if mtime != seen:
            seen = mtime
            revocations = _read_revocations(path)
            if revocations is not None and revocations != store.revocations:
                store.publish_revocations(revocations)
        await trio.sleep(0.5)


async def _drain_when_orphaned(parent: int, drain: trio.Event) -> None:
    while os.getppid() == parent:  # noqa: ASYNC110 - no event for "parent exited"
        await trio.sleep(1.0)
    event(log, "parent process gone: draining", level=logging.ERROR, parent=parent)
    drain.set()


async def run_worker(config: SidecarConfig, runtime_dir: Path) -> int:
    from sidecar.app import run

    store = CredentialStore()
    ready = runtime_dir / f"ready-{os.getpid()}"
    drain = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_follow_revocations, store, runtime_dir / "revocations.json")
        nursery.start_soon(_drain_when_orphaned, os.getppid(), drain)
        code = await run(
            worker_config(config, runtime_dir), store=store, on_started=ready.touch, drain=drain
        )
        nursery.cancel_scope.cancel()
    ready.unlink(missing_ok=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from sidecar.logs import setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write("usage: python -m sidecar.workers CONFIG.toml RUNTIME_DIR\n")
        return 2
    setup_logging()
    config = load_config(args[0])
    setup_logging(config.log)
    return trio.run(run_worker, config, Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
