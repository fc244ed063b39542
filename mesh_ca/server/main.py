"""``mesh-ca serve``: load the CA directory, issue the server's own SVID, serve until a signal.

Prints ``mesh-ca serving on HOST:PORT`` to stderr once listening (the real port when
``--listen`` asks for port 0), after ``mesh-ca admin on HOST:PORT`` when a plain-HTTP admin
listener is configured (``--admin-listen`` / ``server.admin_listen``: ``/metrics`` and
``/healthz``, loopback only unless allowed). Start-up failures are one line naming the
flag or key and exit with a code of `meshgate.exit_codes`: 2 a bad ``--listen``, 3 an unusable CA
directory, 4 the state store cannot be opened, 5 the listen address cannot be bound, 7 the
PKCS#11 key store (``[keys]``: module, token, PIN or key) cannot be used.
SIGINT/SIGTERM stop accepting, close idle keep-alive connections, give the others a few
seconds to finish their request, then exit 0. The server SVID is re-issued at half its
lifetime; a failed rotation is logged and retried while the current one still serves.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import trio

from mesh_ca.ca_dir import CaDirError, LoadedCa, load_ca_dir, read_passphrase
from mesh_ca.config import parse_admin_listen, parse_listen
from mesh_ca.control.plane import ControlPlane
from mesh_ca.control.setup import control_plane_for
from mesh_ca.federation.refresh import FederationLoop
from mesh_ca.rotation import RotationError
from mesh_ca.server.admin import open_admin_listeners, serve_admin
from mesh_ca.server.core import CaAuthority, CaService
from mesh_ca.server.http import CaHttpServer, ServerLimits
from mesh_ca.server.identity import issue_server_identity
from mesh_ca.server.metrics import CaMetrics
from mesh_ca.server.ratelimit import RateLimiter
from mesh_ca.server.trust_loop import TrustKeeper
from mesh_ca.store import StateStore, StoreError
from mesh_ca.store.trust import trust_store
from meshgate.clock import Clock, SystemClock
from meshgate.exit_codes import ExitCode, StartupError
from meshgate.identity import SpiffeId
from meshgate.version import installed_version

__all__ = ["authority_of", "serve_main"]


def _now() -> datetime:
    return datetime.now(UTC)


log = logging.getLogger("mesh_ca.server")
DRAIN_SECONDS: Final = 5.0
ROTATION_RETRY_SECONDS: Final = 30.0


def authority_of(ca: LoadedCa, replica: str = "") -> CaAuthority:
    config = ca.config
    min_ttl, max_ttl = config.issuance.ttl_bounds
    return CaAuthority(
        trust_domain=ca.trust_domain,
        signer=ca.signer,
        bundle=ca.bundle,
        leaf_ttl=timedelta(seconds=config.issuance.default_ttl_seconds),
        token_ttl=timedelta(seconds=config.issuance.token_ttl_seconds),
        admin_ids=frozenset(SpiffeId.parse(text) for text in config.server.admin_ids),
        replica=replica,
        min_leaf_ttl=min_ttl,
        max_leaf_ttl=max_ttl,
    )


def serve_main(args: argparse.Namespace) -> int:
    """Run the CA server for `args` (dir, listen, passphrase_file). Returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", "info")).upper(), logging.INFO),
        format="%(message)s",
        stream=sys.stderr,
    )
    # The log format is the message alone: skip what a LogRecord would otherwise collect
    # per line (caller frame, thread, process names); the Logging HOWTO's "Optimization".
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    try:
        passphrase = read_passphrase(getattr(args, "passphrase_file", None))
        ca = load_ca_dir(Path(args.dir), passphrase)
    except CaDirError as exc:
        sys.stderr.write(f"mesh-ca serve: --dir {args.dir}: {exc}\n")
        return ExitCode.FILE
    except StartupError as exc:  # the PKCS#11 key store ([keys]): module, token, PIN, key
        sys.stderr.write(f"mesh-ca serve: {exc}\n")
        return exc.code
    listen = getattr(args, "listen", None) or ca.config.server.listen
    listen_key = "--listen" if getattr(args, "listen", None) else "server.listen"
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        sys.stderr.write(f"mesh-ca serve: {listen_key}: {exc}\n")
        return ExitCode.USAGE
    admin_flag = getattr(args, "admin_listen", None)
    admin_text = admin_flag or ca.config.server.admin_listen
    admin_key = "--admin-listen" if admin_flag else "server.admin_listen"
    allow_remote = bool(getattr(args, "admin_allow_remote", False))
    admin: tuple[str, str, int] | None = None
    if admin_text:
        try:
            admin_host, admin_port = parse_admin_listen(
                admin_text, allow_remote=allow_remote or ca.config.server.admin_allow_remote
            )
        except ValueError as exc:
            sys.stderr.write(f"mesh-ca serve: {admin_key}: {exc}\n")
            return ExitCode.USAGE
        admin = (admin_key, admin_host, admin_port)
    try:
        store = ca.open_store()
    except StoreError as exc:
        sys.stderr.write(f"mesh-ca serve: store: {exc}\n")
        return ExitCode.STATE
    try:
        # SQLite calls are local and sub-millisecond: inline they skip a thread hop per
        # request; PostgreSQL round trips must not stall the event loop.
        threaded = ca.config.store.kind == "postgres"
        if getattr(args, "inline_handlers", False):
            threaded = False
        if getattr(args, "threaded_handlers", False):
            threaded = True
        authority = authority_of(ca, str(getattr(args, "replica", "") or ""))
        keeper = TrustKeeper.open(ca, trust_store(store), passphrase, authority.replica, _now())
        authority = keeper.authority(authority)
        trio.run(
            _serve,
            ca,
            authority,
            store,
            (listen_key, host, port),
            SystemClock(),
            threaded,
            admin,
            keeper,
        )
    except StartupError as exc:
        sys.stderr.write(f"mesh-ca serve: {exc}\n")
        return exc.code
    except StoreError as exc:
        sys.stderr.write(f"mesh-ca serve: store: {exc}\n")
        return ExitCode.STATE
    except RotationError as exc:
        sys.stderr.write(f"mesh-ca serve: trust state: {exc}\n")
        return ExitCode.FILE
    except KeyboardInterrupt:  # SIGINT before the signal handlers were installed
        return 130
    finally:
        store.close()
    return 0


async def _serve(
    ca: LoadedCa,
    authority: CaAuthority,
    store: StateStore,
    listen: tuple[str, str, int],
    clock: Clock,
    threaded: bool = True,
    admin: tuple[str, str, int] | None = None,
    keeper: TrustKeeper | None = None,
) -> None:
    key, host, port = listen
    try:  # first, outside any nursery: a taken port is one line naming the flag or key
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        address = f"{host}:{port}"
        problem = f"cannot listen: {exc.strerror or exc}"
        raise StartupError(key, address, problem, ExitCode.LISTEN) from exc
    admin_listeners = await open_admin_listeners(*admin) if admin else []
    metrics = CaMetrics()
    metrics.set_expiry("root", ca.root.not_valid_after_utc)
    metrics.set_expiry("intermediate", authority.signer.not_after)
    try:
        identity = await trio.to_thread.run_sync(
            issue_server_identity, authority, store, clock.now()
        )
    except Exception:
        metrics.issuances.labels("ca-server", "error").inc()
        raise
    metrics.issuances.labels("ca-server", "ok").inc()
    metrics.set_expiry("server", identity.not_after)
    limiter = RateLimiter(ca.config.server.rate_limit_per_second, ca.config.server.rate_limit_burst)
    service = CaService(authority, store, limiter, metrics)
    if keeper is not None:
        service.bundle_reporter = keeper.trust.report_bundle
    limits = ServerLimits(
        max_body_bytes=ca.config.server.max_body_bytes,
        max_connections=ca.config.server.max_connections,
        max_connections_per_source=ca.config.server.max_connections_per_source,
        threaded_handlers=threaded,
    )
    server = CaHttpServer(service, identity, clock, limits)
    control = control_plane_for(
        ca.path,
        ca.config.control,
        store,
        clock,
        # By whichever service serves now: a rotation step swaps in one with new slots.
        lambda request, now: server.service._client_svid(request, now),  # noqa: PLW0108
        metrics.registry,
    )
    server.control = control
    federation = FederationLoop(
        ca.path,
        authority.bundle,
        ca.config.federation,
        # Into whichever service serves now: a rotation step swaps in a new one.
        lambda document: server.service.publish_federated(document),  # noqa: PLW0108
        clock,
        metrics.registry,
    )
    try:
        async with trio.open_nursery() as background:
            # Not awaited before serving: a foreign endpoint that is down must not delay
            # this CA; sidecars get the federated bundles once they are fetched.
            background.start_soon(federation.run)
            await _serve_until_signal(
                server, store, clock, listeners, admin_listeners, keeper, control
            )
            background.cancel_scope.cancel()
    finally:
        server.access_log.flush()  # the lines still queued (drained connections' too)


async def _serve_until_signal(
    server: CaHttpServer,
    store: StateStore,
    clock: Clock,
    listeners: list[trio.SocketListener],
    admin_listeners: list[trio.SocketListener] | None = None,
    keeper: TrustKeeper | None = None,
    control: ControlPlane | None = None,
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            source = str(stream.socket.getpeername()[0])
        except OSError:
            source = "-"
        await server.handle_connection(stream, source)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                if control is not None:  # its registry and policy set, before any request
                    await accepting.start(control.run)
                await accepting.start(
                    functools.partial(
                        trio.serve_listeners, handler, listeners, handler_nursery=connections
                    )
                )
                if admin_listeners:
                    await accepting.start(
                        functools.partial(
                            serve_admin,
                            admin_listeners,
                            server.service.metrics,
                            control,
                            functools.partial(_mesh_json, server, clock, keeper),
                        )
                    )
                    sys.stderr.write(f"mesh-ca admin on {_shown(admin_listeners[0])}\n")
                sys.stderr.write(f"mesh-ca serving on {_shown(listeners[0])}\n")
                sys.stderr.flush()
                accepting.start_soon(_rotate, server, store, clock)
                if keeper is not None:
                    accepting.start_soon(keeper.run, server, clock)
                accepting.start_soon(server.access_log.run)
                async for signum in signals:
                    log.info(
                        json.dumps({"event": "shutdown", "signal": signal.Signals(signum).name})
                    )
                    accepting.cancel_scope.cancel()
                    server.close_idle()
                    if control is not None:
                        control.close()  # waiting watchers are answered now
                    break
            # Stop accepting; idle keep-alive connections close at once, the others finish
            # the request at hand within a short drain, then are cancelled.
            connections.cancel_scope.deadline = trio.current_time() + DRAIN_SECONDS


def _mesh_json(
    server: CaHttpServer, clock: Clock, keeper: TrustKeeper | None, window: str
) -> dict[str, Any]:
    """The admin listener's ``/v1/mesh``: the reports' window and this CA's own facts."""
    authority = server.service.authority
    now = clock.now()
    ca = {
        "trust_domain": str(authority.trust_domain),
        "replica": authority.replica or None,
        "version": installed_version(),
        "now": now.isoformat(),
        "root_not_after": min(r.not_valid_after_utc for r in authority.bundle.roots).isoformat(),
        "intermediate_not_after": authority.signer.not_after.isoformat(),
        "server_svid_not_after": server.identity.not_after.isoformat(),
        "store_up": server.service.metrics.store_is_up(),
        **(keeper.mesh_facts() if keeper is not None else {}),
    }
    return server.service.reports.view(window, now, ca)


def _shown(listener: trio.SocketListener) -> str:
    bound = listener.socket.getsockname()
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return f"{host}:{bound[1]}"


async def _rotate(server: CaHttpServer, store: StateStore, clock: Clock) -> None:
    """Re-issue the server SVID at half its lifetime; on failure keep the old one and retry."""
    while True:
        wait = (server.identity.renew_at() - clock.now()).total_seconds()
        await trio.sleep(max(1.0, wait))
        try:
            # The current authority: a rotation step may have changed the signer.
            authority = server.service.authority
            fresh = await trio.to_thread.run_sync(
                issue_server_identity, authority, store, clock.now()
            )
        except Exception as exc:  # noqa: BLE001 - a background loop logs and carries on
            server.service.metrics.issuances.labels("ca-server", "error").inc()
            log.error(json.dumps({"event": "server_svid_rotation_failed", "error": str(exc)}))
            await trio.sleep(ROTATION_RETRY_SECONDS)
            continue
        server.identity = fresh
        server.service.metrics.issuances.labels("ca-server", "ok").inc()
        server.service.metrics.set_expiry("server", fresh.not_after)
        log.info(
            json.dumps(
                {
                    "event": "server_svid_rotated",
                    "serial": format(fresh.leaf.serial_number, "x"),
                    "not_after": fresh.not_after.isoformat(),
                }
            )
        )
