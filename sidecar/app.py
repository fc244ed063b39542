"""Runs the sidecar: identity, admin, inbound and outbound listeners, signals, drain.

Every socket is bound first (a taken port is a `StartupError` naming its key); the admin
listener answers from then on, in every state. SIGTERM/SIGINT before the first SVID stop
at once (exit 0); after it they drain: listeners close at once (no new connections),
open connections may finish for up to ``drain_timeout_seconds`` (a second SIGTERM/SIGINT
ends that wait at once), the rest are cancelled, and `run` returns 0. SIGHUP reloads
static identity files and the policy directory.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from meshgate import native
from meshgate.clock import Clock, SystemClock
from meshgate.exit_codes import ExitCode, StartupError
from sidecar.acceptor import BATCH, Handler, accept_loop
from sidecar.authz.allow_list import AllowList, Authorizer
from sidecar.authz.cedar import CedarAuthorizer
from sidecar.config import Address, SidecarConfig
from sidecar.connections import AdmissionLimits, ConnectionTracker
from sidecar.identity.credentials import CredentialStore
from sidecar.identity.run import run_identity
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.static_files import ReloadSignal
from sidecar.identity.stats import IdentityStats
from sidecar.inbound.http import HttpInbound
from sidecar.inbound.tcp import Inbound
from sidecar.observe.access import Observer
from sidecar.observe.admin import AdminState, serve_admin
from sidecar.observe.logs import event
from sidecar.observe.metrics import SidecarMetrics
from sidecar.observe.report_status import wants_reporter
from sidecar.observe.tracing import Tracer, default_service_name
from sidecar.outbound.http import HttpOutbound
from sidecar.outbound.mesh_pool import MeshPool
from sidecar.outbound.tcp import Outbound
from sidecar.policy.live import LivePolicies
from sidecar.runtime import Runtime

__all__ = ["listen_on", "run"]

log = logging.getLogger("sidecar.app")
_SPAN_FLUSH_SECONDS = 2.0  # after the drain, how long queued spans may take to leave


async def listen_on(
    key: str, address: Address, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """Listening sockets for `address`; with `reuse_port` (workers > 1) every worker binds
    its own socket on the same port and the kernel spreads connections (SO_REUSEPORT).
    A bind failure is a `StartupError` naming the config `key` and the address."""
    try:
        return await _bind(address, reuse_port=reuse_port)
    except OSError as exc:
        raise StartupError(
            key, address, f"cannot listen: {exc.strerror or exc}", ExitCode.LISTEN
        ) from exc


async def _bind(address: Address, *, reuse_port: bool) -> list[trio.SocketListener]:
    if not reuse_port:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    listeners: list[trio.SocketListener] = []
    for family, type_, proto, _, sockaddr in await trio.socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            await sock.bind(sockaddr)
            sock.listen(4096)
        except OSError:
            sock.close()
            for listener in listeners:
                listener.socket.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


def _pool_rows(pools: list[MeshPool]) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [row for pool in pools for row in pool.upstreams()]


async def _signals(
    drain: trio.Event,
    reload: ReloadSignal,
    policies: LivePolicies | None = None,
    force: trio.Event | None = None,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                event(log, "SIGHUP: reloading identity files and policies")
                reload.request()
                if policies is not None:
                    policies.request_reload()
            elif drain.is_set() and force is not None:
                event(log, "second stop signal: closing open connections now", signal=name)
                force.set()
            else:
                event(log, "drain requested", signal=name)
                drain.set()


async def _cancel_when(drain: trio.Event, scope: trio.CancelScope) -> None:
    await drain.wait()
    scope.cancel()  # a no-op once start-up is over: the drain path takes it from there


async def _start_identity(
    config: SidecarConfig,
    store: CredentialStore,
    clock: Clock,
    reload: ReloadSignal,
    nursery: trio.Nursery,
    stats: IdentityStats | None = None,
) -> IdentityStats:
    """Publish the first SVID (static files or CA bootstrap), keep it fresh in the background.

    Waits (forever, if need be) for the first SVID; `stats` says meanwhile why it has none.
    """
    stats = stats if stats is not None else IdentityStats()
    settings = IdentitySettings.from_config(config.identity)
    await nursery.start(
        functools.partial(run_identity, settings, store, clock, stats=stats, reload=reload)
    )
    return stats


def _tracer(config: SidecarConfig) -> Tracer | None:
    """The span exporter of ``[tracing]``; None (and no SDK import) without it."""
    if config.tracing is None:
        return None
    from sidecar.observe.tracing_otel import OtelTracer

    name = config.tracing.service_name or default_service_name(config.identity.spiffe_id)
    return OtelTracer(config.tracing, name)


async def _stop_tracer(tracer: Tracer, config: SidecarConfig) -> None:
    """Send the spans still queued, waiting at most `_SPAN_FLUSH_SECONDS` (or the export
    timeout, if shorter): a hung collector must not hold up a stop. The exporting thread is
    left behind after that; it is a daemon and the process is exiting."""
    assert config.tracing is not None
    with trio.move_on_after(min(_SPAN_FLUSH_SECONDS, config.tracing.export_timeout_seconds)):
        await trio.to_thread.run_sync(tracer.shutdown, abandon_on_cancel=True)


async def run(
    config: SidecarConfig,
    *,
    clock: Clock | None = None,
    handle_signals: bool = True,
    drain: trio.Event | None = None,
    store: CredentialStore | None = None,
    on_started: Callable[[], None] | None = None,
    relay: Path | None = None,
) -> int:
    """Serve until drained; returns the process exit code (0 after a graceful drain).

    Every socket is bound first (a taken port is a `StartupError` naming its key), and the
    admin listener answers from then on, so ``/readyz`` can say why the sidecar is not
    ready while it waits for its first SVID. The data listeners accept from the start too
    and fail closed until then (no SVID: no mTLS either way, outbound answers 503). A drain
    (SIGTERM/SIGINT) during start-up stops at once and returns 0.

    `store` and `on_started` (called once the first SVID is live and the listeners serve)
    are for worker processes (`sidecar.workers`), which are fed credentials by their parent;
    `relay` is where a worker leaves its denial samples for the parent's report.
    """
    clock = clock or SystemClock()
    drain = drain if drain is not None else trio.Event()
    force = trio.Event()  # a second SIGTERM/SIGINT: stop draining, close what is open
    reload = ReloadSignal()
    store = store if store is not None else CredentialStore()
    tracker = ConnectionTracker(
        config.limits.max_connections,
        store,
        AdmissionLimits(
            max_per_source=config.limits.max_connections_per_source,
            # Never above the overall cap (a default of 128 with max_connections = 64).
            max_handshaking=min(
                config.limits.max_handshaking_connections, config.limits.max_connections
            ),
            max_handshaking_per_source=min(
                config.limits.max_handshaking_per_source,
                config.limits.max_handshaking_connections,
                config.limits.max_connections,
            ),
        ),
        now=clock.now,
        lifetime=config.connection_lifetime.policy(),
    )
    metrics = SidecarMetrics()
    metrics.watch_credentials(store)
    inbound_service = config.inbound.service if config.inbound else ""
    observer = Observer(metrics, str(config.identity.spiffe_id), inbound_service)
    tracer = _tracer(config)
    runtime = Runtime(store, clock.now, config.timeouts, tracker, observer, tracer=tracer)
    policies = LivePolicies(config.policy, clock, observer) if config.policy else None
    control = None
    if config.control_plane:  # its CA client and wire models: only loaded with one
        from sidecar.control.plane import ControlPlane

        control = ControlPlane(config, store, clock, policies, metrics)
    stats = IdentityStats()
    metrics.watch_identity(stats)
    reuse = config.workers > 1  # sidecar.workers: each worker binds the same ports
    admin_listeners = (
        await listen_on("admin.listen", config.admin.listen) if config.admin is not None else []
    )
    bound: list[tuple[str, list[trio.SocketListener]]] = []
    try:
        if config.inbound is not None:
            bound.append(
                (
                    "inbound",
                    await listen_on("inbound.listen", config.inbound.listen, reuse_port=reuse),
                )
            )
        for index, out in enumerate(config.outbound):
            key = f"outbound[{index}].listen"
            bound.append((f"outbound[{index}]", await listen_on(key, out.listen, reuse_port=reuse)))
    except BaseException:
        for listener in (*admin_listeners, *(ls for _, group in bound for ls in group)):
            listener.socket.close()
        raise
    pools: list[MeshPool] = []
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_signals, drain, reload, policies, force)
        if config.admin is not None:  # from the start: /healthz answers, /readyz says why not
            state = AdminState(
                config,
                store,
                clock.now,
                lambda: stats.next_rotation_at,
                metrics=metrics,
                identity_stats=stats,
                upstreams=(
                    _pool_rows(pools)  # filled below as each pool starts
                    if any(out.protocol == "http" for out in config.outbound)
                    else None
                ),
                policies=policies.store if policies else None,
                control=control.view if control else None,
            )
            await nursery.start(serve_admin, admin_listeners, state)
        async with trio.open_nursery() as handlers:
            # (name, listeners, handler, lean: the http handlers take a LeanSocketStream)
            serving: list[tuple[str, list[trio.SocketListener], Handler, bool]] = []
            http_inbound: HttpInbound | None = None
            if config.inbound is not None:
                handler: Handler
                audit = config.policy is not None and config.policy.audit
                if config.inbound.protocol == "http":
                    assert policies is not None  # the config requires [policy] for http
                    http_inbound = HttpInbound(config.inbound, runtime, policies.store, audit=audit)
                    handler = http_inbound.handle
                else:
                    authorizer: Authorizer = (
                        CedarAuthorizer(policies.store, clock.now, audit=audit)
                        if policies is not None
                        else AllowList(config.inbound.allowed_ids)
                    )
                    handler = Inbound(config.inbound, runtime, authorizer).handle
                http = config.inbound.protocol == "http"
                serving.append(("inbound", bound.pop(0)[1], handler, http))
            for index, out in enumerate(config.outbound):
                table = control.table(index) if control else None  # None: static endpoints
                if out.protocol == "http":
                    pool = MeshPool(out, runtime, table=table)
                    await nursery.start(pool.run)
                    pools.append(pool)
                    out_handler: Handler = HttpOutbound(out, runtime, pool).handle
                else:
                    out_handler = Outbound(out, runtime, table).handle
                http = out.protocol == "http"
                serving.append((f"outbound[{index}]", bound.pop(0)[1], out_handler, http))
            with trio.CancelScope() as accepting:
                async with trio.open_nursery() as acceptors:
                    # Accept at once: before the first SVID every handshake fails closed.
                    for name, listeners, handler, http in serving:
                        # the inbound one connection at a time (pending handshakes)
                        batch = 1 if name == "inbound" else BATCH
                        acceptors.start_soon(
                            functools.partial(accept_loop, lean=http, batch=batch),
                            listeners,
                            handler,
                            handlers,
                            name,
                        )
                    with trio.CancelScope() as starting:
                        nursery.start_soon(_cancel_when, drain, starting)
                        if policies is not None:  # an invalid set refuses to start at once
                            await policies.start(nursery)
                        if control is not None:  # a persisted central set: enforced at once
                            await control.load_persisted()
                        await _start_identity(config, store, clock, reload, nursery, stats)
                        if control is not None:  # every call authenticates with the SVID
                            await control.start(nursery)
                    if not starting.cancelled_caught:
                        view = policies.store if policies else None
                        take = observer.take_denial_samples
                        report = (nursery, config, store, clock, metrics, stats)
                        if wants_reporter(config):  # the CA client only with a CA
                            from sidecar.observe.reporter import start_reporter

                            start_reporter(*report, policies=view, samples=take)
                        listening: dict[str, Any] = {
                            name: [str(ls.socket.getsockname()[:2]) for ls in listeners]
                            for name, listeners, _, _ in serving
                        }
                        event(
                            log,
                            "sidecar started",
                            listeners=listening,
                            spiffe_id=str(config.identity.spiffe_id),
                            http_core=native.describe(),
                        )
                        if relay is not None:  # a worker: its parent sends the samples
                            from sidecar.observe.reporter import write_samples_forever

                            nursery.start_soon(write_samples_forever, take, relay)
                        if on_started is not None:
                            on_started()
                    else:
                        event(log, "drained during start-up: stopping before the first SVID")
                    await drain.wait()
                    if control is not None and not starting.cancelled_caught:
                        await control.drain()  # peers stop picking us before we stop accepting
                    accepting.cancel()  # stop accepting: listening sockets close now
                    if http_inbound is not None:
                        http_inbound.drain()  # idle keep-alive connections close now
            event(
                log,
                "draining",
                open_connections=tracker.active,
                drain_timeout_seconds=config.timeouts.drain_timeout_seconds,
            )
            with trio.move_on_after(config.timeouts.drain_timeout_seconds) as waited:
                nursery.start_soon(_cancel_when, force, waited)
                await tracker.wait_idle()
            if waited.cancelled_caught:
                event(
                    log,
                    "second stop signal: closing remaining connections"
                    if force.is_set()
                    else "drain timeout: closing remaining connections",
                    level=logging.WARNING,
                    open_connections=tracker.active,
                )
                tracker.cancel_all("drain_timeout")  # their access records say so
            handlers.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    if control is not None:
        await control.aclose()
    if tracer is not None:
        await _stop_tracer(tracer, config)
    event(log, "sidecar stopped")
    return 0
