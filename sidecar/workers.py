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

The parent's admin listener answers from start (``/readyz`` also waits for every worker's
ready file: ``workers_starting``), and SIGTERM/SIGINT stop it in every phase, also before
the first SVID. Before starting workers it binds and closes every data listener, so a
taken port is one line naming its key. It restarts a worker that exits while it is not
draining, unless the worker failed to start with a start-up exit code
(`meshgate.exit_codes`): then the sidecar stops with that code. It forwards SIGTERM/SIGINT
(drain: each worker drains its own connections; the parent exits 0 when every worker
did) and SIGHUP (identity files and policies).

Metrics: the workers run prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
set to ``RUNTIME_DIR/metrics`` in their environment only): each value lives in an mmap'ed
file per worker pid, and the parent's ``/metrics`` reads them all at scrape time and shows
the sum over workers, beside its own identity metrics (expiry, rotations). Chosen over
workers pushing snapshots to the parent because a scrape is exact (no push interval to
wait out), a killed worker's counts stay in its files (the sum never goes backwards, so
``rate()`` sees no false counter reset), and no channel between the processes is needed.
Gauges say how they combine (`sidecar.observe.metrics`: ``livesum`` open connections...); the
parent drops a dead worker's live gauges (`mark_process_dead`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import final

import trio
from prometheus_client.multiprocess import mark_process_dead

from meshgate.clock import SystemClock
from meshgate.exit_codes import ExitCode
from meshgate.files import write_atomic, write_atomic_set
from meshgate.identity.bundle import pem_bundle
from meshgate.keys import private_key_pem
from sidecar.config import IdentityConfig, SidecarConfig, load_config
from sidecar.identity.credentials import CredentialStore, Revocations
from sidecar.identity.static_files import ReloadSignal
from sidecar.identity.stats import IdentityStats
from sidecar.observe.admin import AdminState, serve_admin
from sidecar.observe.logs import event
from sidecar.observe.metrics import SidecarMetrics
from sidecar.observe.reporter import start_reporter, wants_reporter

__all__ = ["Supervisor", "main", "supervise"]

log = logging.getLogger("sidecar.workers")
_RESTART_DELAY_SECONDS = 0.5
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client at import
# Exit codes of a worker that cannot start (`meshgate.exit_codes`): restarting cannot help.
_STARTUP_FAILURES = frozenset(
    {ExitCode.FAILED, ExitCode.FILE, ExitCode.STATE, ExitCode.LISTEN, ExitCode.POLICY}
)


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
        self.failed = 0  # a worker's start-up exit code: the parent exits with it
        self._store = CredentialStore()
        self._ever_ready: set[int] = set()  # pids that wrote their ready file
        self.metrics_dir = runtime_dir / "metrics"  # the workers' multiprocess files
        self.metrics_dir.mkdir(mode=0o700, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sidecar.workers",
            str(self.config_path),
            str(self.runtime_dir),
        ]

    async def _keep_worker(self, slot: int, started: trio.Event, drain: trio.Event) -> None:
        while True:
            env = {**os.environ, _MULTIPROC_ENV: str(self.metrics_dir)}
            process = await trio.lowlevel.open_process(self._command(), env=env)
            self.processes[slot] = process
            event(log, "worker started", worker=slot, pid=process.pid)
            started.set()
            code = await process.wait()
            mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            if self.draining:
                event(log, "worker stopped", worker=slot, pid=process.pid, exit_code=code)
                return
            if code in _STARTUP_FAILURES and not self._was_ready(process.pid):
                # It said why on stderr (one line); a restart would only say it again.
                event(
                    log,
                    "worker failed to start; stopping",
                    level=logging.ERROR,
                    worker=slot,
                    pid=process.pid,
                    exit_code=code,
                )
                self.failed = self.failed or code
                drain.set()
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

    def _was_ready(self, pid: int) -> bool:
        return pid in self._ever_ready or (self.runtime_dir / f"ready-{pid}").exists()

    def _not_serving(self) -> str | None:
        """For /readyz: None once every worker has bound its listeners."""
        ready = _ready_pids(self.runtime_dir)
        self._ever_ready |= ready
        if len(ready) >= self.config.workers:
            return None
        return f"{len(ready)} of {self.config.workers} workers ready"

    async def _probe_listeners(self) -> None:
        """Bind (SO_REUSEPORT) and close every data listener, so a taken port is one line
        naming its key now, not a worker that fails again and again."""
        from sidecar.app import listen_on

        keys = [("inbound.listen", self.config.inbound.listen)] if self.config.inbound else []
        keys += [(f"outbound[{i}].listen", o.listen) for i, o in enumerate(self.config.outbound)]
        for key, address in keys:
            for listener in await listen_on(key, address, reuse_port=True):
                listener.socket.close()

    async def run(self) -> int:
        from sidecar.app import _cancel_when, _start_identity, listen_on

        clock = SystemClock()
        store = self._store
        metrics = SidecarMetrics()
        metrics.watch_credentials(store)
        metrics.aggregate_workers(self.metrics_dir)
        stats = IdentityStats()
        metrics.watch_identity(stats)
        reload = ReloadSignal()
        drain = trio.Event()
        admin = self.config.admin
        admin_listeners = await listen_on("admin.listen", admin.listen) if admin else []
        try:
            await self._probe_listeners()
        except BaseException:
            for listener in admin_listeners:
                listener.socket.close()
            raise
        codes: list[int | None] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, drain, reload)
            if admin is not None:  # from the start: /readyz says why the parent is not ready
                state = AdminState(
                    self.config,
                    store,
                    clock.now,
                    lambda: stats.next_rotation_at,
                    metrics=metrics,
                    identity_stats=stats,
                    serving=self._not_serving,
                )
                await nursery.start(serve_admin, admin_listeners, state)
            with trio.CancelScope() as starting:  # one identity lifecycle, as a single process
                nursery.start_soon(_cancel_when, drain, starting)
                await _start_identity(self.config, store, clock, reload, nursery, stats)
            if starting.cancelled_caught:
                event(log, "drained during start-up: stopping before the first SVID")
                nursery.cancel_scope.cancel()
            else:
                if not write_credentials(store, self.runtime_dir):
                    raise RuntimeError("identity started without credentials")
                store.subscribe(self._publish)
                # The workers' summed metrics; their denial samples come as files.
                reporting = (nursery, self.config, store, clock, metrics, stats)
                start_reporter(*reporting, samples_dir=self.runtime_dir, serving=self._not_serving)
                async with trio.open_nursery() as workers:
                    for slot in range(self.config.workers):
                        started = trio.Event()
                        workers.start_soon(self._keep_worker, slot, started, drain)
                        await started.wait()
                    pids = [p.pid for p in self.processes.values()]
                    event(log, "workers started", workers=self.config.workers, pids=pids)
                    await drain.wait()
                    self.draining = True
                    self.signal_all(signal.SIGTERM)
                codes = [p.returncode for p in self.processes.values()]
                nursery.cancel_scope.cancel()
        event(log, "sidecar stopped", worker_exit_codes=codes)
        if self.failed:
            return self.failed
        # -SIGTERM: a worker still starting when the drain began had nothing to drain.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1

    async def _signals(self, drain: trio.Event, reload: ReloadSignal) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    event(log, "SIGHUP: reloading identity; forwarding to workers")
                    reload.request()
                    self.signal_all(signal.SIGHUP)
                elif drain.is_set():  # a second one: the workers stop draining at once
                    event(log, "second stop signal: forwarding", signal=signal.Signals(signum).name)
                    self.signal_all(signal.SIGTERM)
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
    shutil.rmtree(directory)


def _ready_pids(directory: Path) -> set[int]:
    return {int(path.name.removeprefix("ready-")) for path in directory.glob("ready-*")}


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
    from meshgate.identity import SpiffeId, TrustDomain

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
        relay = runtime_dir if wants_reporter(config) else None  # the parent reads them
        worker = worker_config(config, runtime_dir)
        code = await run(worker, store=store, on_started=ready.touch, drain=drain, relay=relay)
        nursery.cancel_scope.cancel()
    ready.unlink(missing_ok=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from sidecar.observe.logs import setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write("usage: python -m sidecar.workers CONFIG.toml RUNTIME_DIR\n")
        return 2
    from sidecar.cli import run_reporting_startup_errors

    setup_logging()
    config = load_config(args[0])
    setup_logging(config.log)
    return run_reporting_startup_errors(
        lambda: trio.run(run_worker, config, Path(args[1])), args[0]
    )


if __name__ == "__main__":
    sys.exit(main())
