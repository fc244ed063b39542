"""Pooled mTLS connections from an outbound sidecar to one service's endpoints.

A new client connection must not cost a new mTLS handshake when a pooled one is free, so
`acquire` looks for an idle connection on every healthy endpoint (round robin start)
before it dials, except that an endpoint picked by the round robin with no connection at
all is dialled (else sequential requests would all reuse the first endpoint's connection).
A connection goes back to the pool only after a complete exchange that
both sides meant to keep alive (`release(..., reusable=True)`), and is reused only while:
- the SVID we presented on it is still our current one: after a rotation no new request
  goes on a connection made with the superseded SVID (it finishes what it carries, then
  closes), so a rotation never fails a request;
- it is more than ``retire_margin_seconds`` from the first notAfter of the two SVIDs of
  its handshake (where a ``strict`` peer cuts it; `sidecar.transport.lifetime`), and from its
  maximum age in ``until_revoked`` mode;
- neither the peer's SPIFFE ID nor its serial is revoked (revocations also close idle
  connections at once);
- the peer still chains to the current bundles (`PeerTrust`; else in-flight exchanges are
  cut, ``upstream_untrusted``);
- it was idle less than ``pool_idle_timeout_seconds`` and the socket shows no EOF or
  stray bytes (one `poll` with timeout 0);
and at most ``pool_max_idle_per_endpoint`` idle connections are kept per endpoint.

Endpoint health: a failed connect or handshake takes an endpoint out for
``endpoint_backoff_seconds`` while other endpoints are healthy. When none is (a service
with one endpoint, or all backing off), `acquire` does not refuse: it dials them anyway,
soonest-back first, and retries refused connects with a short jittered backoff for up to
a second, so a request succeeds as soon as a peer is back. Fails closed: without usable
own credentials `acquire` raises `PoolError` (503), and nothing is sent in plaintext.
Which endpoints exist, which IDs each must present and which are ejected is the
`EndpointTable`'s (`sidecar/outbound/endpoints.py`, static or kept by discovery).

Why one module: what may carry a request (the list above) is one invariant over one
pool's state (idle lists, endpoint health, lent connections); split, each rule would
need that state passed around, and the rules would drift apart. The endpoint choice is
already apart (`endpoints.py`).
"""

from __future__ import annotations

import random
import select
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, final

import trio

from meshgate.errors import TransportError
from meshgate.http import HttpLimits, ResponseReader
from meshgate.identity import SpiffeId
from meshgate.transport.socket_stream import TimedStream, lean
from sidecar.config import Address, OutboundConfig
from sidecar.outbound.endpoints import EndpointTable, static_table
from sidecar.runtime import Runtime
from sidecar.transport.mesh_tls import HandshakeFailure, MeshTlsError, connect_mesh
from sidecar.transport.peer_trust import PeerTrust

__all__ = [
    "EndpointState",
    "MeshPool",
    "PoolError",
    "PooledConnection",
    "TransportConnector",
]

TransportConnector = Callable[[Address], Awaitable[trio.abc.Stream]]
_RESPONSE_LIMITS = HttpLimits(max_body_bytes=None)
# Redialling an endpoint that refused: first pause, longest pause, and how long in all.
_REDIAL_FIRST_SECONDS = 0.05
_REDIAL_MAX_SECONDS = 0.25
_REDIAL_BUDGET_SECONDS = 1.0
_REDIALLED = frozenset({"connect_failed", "peer_closed"})  # the peer is (re)starting


class PoolError(TransportError):
    """No usable upstream connection. `status` is what the client is told (502/503/504);
    `reason` a short stable code for logs and metrics."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


@final
class PooledConnection:
    """One verified mTLS connection to an endpoint and the reader of its responses."""

    __slots__ = (
        "cut",
        "cut_reason",
        "endpoint",
        "expires_at",
        "idle_since",
        "own_serial",
        "peer_id",
        "peer_id_text",
        "peer_serial",
        "reader",
        "retire_at",
        "reused",
        "stream",
        "transport",
        "trust",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        endpoint: Address,
        peer_id: SpiffeId,
        peer_serial: int,
        expires_at: datetime,
        transport: TimedStream,
        *,
        own_serial: int = 0,
        retire_at: datetime | None = None,
        trust: PeerTrust | None = None,
    ) -> None:
        self.stream = stream
        self.transport = transport  # under the TLS stream: its deadlines bound our reads
        self.endpoint = endpoint
        self.peer_id = peer_id
        self.peer_id_text = str(peer_id)  # for each request's metrics and access line
        self.peer_serial = peer_serial
        self.expires_at = expires_at  # the hard end (`sidecar.transport.lifetime`)
        self.retire_at = retire_at or expires_at  # no new request from then on
        self.own_serial = own_serial  # of the SVID we presented: superseded → retire
        self.reader = ResponseReader(_RESPONSE_LIMITS)
        self.reused = False  # served a request before: may be a stale keep-alive
        # The exchange in progress runs inside `cut` (a fresh scope per acquire), which the
        # pool cancels when the upstream is revoked: a revoked peer is never served on.
        self.cut = trio.CancelScope()
        self.cut_reason: str | None = None
        self.idle_since = 0.0
        self.trust = trust  # re-checked when the bundles change


@final
@dataclass
class EndpointState:
    """Health and pool bookkeeping of one endpoint. `down_until` is trio time."""

    endpoint: Address
    idle: list[PooledConnection] = field(default_factory=list)
    active: int = 0
    down_until: float = 0.0
    last_error: str | None = None
    connects: int = 0  # mTLS handshakes completed to this endpoint

    def healthy(self, now: float) -> bool:
        return now >= self.down_until

    def view(self, now: float) -> dict[str, Any]:
        return {
            "endpoint": str(self.endpoint),
            "healthy": self.healthy(now),
            "down_for_seconds": round(max(0.0, self.down_until - now), 3),
            "idle": len(self.idle),
            "active": self.active,
            "handshakes": self.connects,
            "last_error": self.last_error,
        }


async def _tcp_connect(endpoint: Address) -> trio.abc.Stream:
    return await trio.open_tcp_stream(endpoint.host, endpoint.port)


def _socket_quiet(stream: trio.abc.Stream) -> bool:
    """False when an idle connection's socket is readable: EOF, reset or stray records.
    Streams without a socket (in-memory tests) count as quiet."""
    transport = getattr(stream, "transport", stream)
    sock = getattr(transport, "socket", None)
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


async def _close(conn: PooledConnection) -> None:
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(conn.stream)


@final
class MeshPool:
    """The outbound pool of one ``[[outbound]]`` service. Run `run` in a nursery for
    eviction; `acquire`/`release` from request handlers."""

    def __init__(
        self,
        config: OutboundConfig,
        runtime: Runtime,
        connect: TransportConnector = _tcp_connect,
        table: EndpointTable | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self._connect = connect
        # Static endpoints, or the set discovery keeps up to date (`sidecar.control`).
        self.table = table or static_table(config)
        self._states = {endpoint: EndpointState(endpoint) for endpoint in self.table.endpoints}
        self._wake = trio.Event()
        self._active: set[PooledConnection] = set()
        self.handshakes = 0
        self.reuses = 0
        runtime.store.subscribe(self._store_changed)
        self.table.subscribe(self._endpoints_changed)

    def _endpoints_changed(self) -> None:
        """A new endpoint set: track its endpoints; idle connections to those that left
        (or whose registered ID changed) are closed by `run` (woken now)."""
        self._states = {
            endpoint: self._states.get(endpoint) or EndpointState(endpoint)
            for endpoint in self.table.endpoints
        } | {e: s for e, s in self._states.items() if s.active or s.idle}
        self._wake.set()

    def _state(self, endpoint: Address) -> EndpointState:
        state = self._states.get(endpoint)
        if state is None:  # an endpoint that came back while it had no state
            state = self._states[endpoint] = EndpointState(endpoint)
        return state

    def _store_changed(self) -> None:
        self._wake.set()  # the current event: `run` replaces it after each wake-up
        revocations = self.runtime.store.revocations
        for conn in self._active:
            if revocations.refuses(conn.peer_id, conn.peer_serial):
                conn.cut_reason = "upstream_revoked"
                conn.cut.cancel()
            elif not self._trusted(conn):
                conn.cut_reason = "upstream_untrusted"
                conn.cut.cancel()

    def _trusted(self, conn: PooledConnection) -> bool:
        own = self.runtime.store.current  # None: `_current` refuses the connection anyway
        return (
            own is None or conn.trust is None or conn.trust.holds(own.bundles, self.runtime.now())
        )

    def _lend(self, conn: PooledConnection) -> PooledConnection:
        self._state(conn.endpoint).active += 1
        conn.cut, conn.cut_reason = trio.CancelScope(), None
        self._active.add(conn)
        return conn

    # -- views -------------------------------------------------------------------------

    def upstreams(self) -> list[dict[str, Any]]:
        """One row per endpoint (for the admin ``/upstreams`` view)."""
        now = trio.current_time()
        return [
            {
                "service": self.config.service,
                **state.view(now),
                "ejected": self.table.ejected(state.endpoint, now),
            }
            for state in self._states.values()
        ]

    # -- acquire / release ---------------------------------------------------------------

    def _current(self, conn: PooledConnection, now: datetime) -> bool:
        """May `conn` take a new request? Not once the SVID we presented on it was
        superseded, nor within the retire margin of its end."""
        own = self.runtime.store.current
        return own is not None and own.serial == conn.own_serial and now < conn.retire_at

    def _usable(self, conn: PooledConnection, now: datetime, tnow: float) -> bool:
        return (
            self._current(conn, now)
            and conn.peer_id in self.table.expected(conn.endpoint)
            and not self.runtime.store.revocations.refuses(conn.peer_id, conn.peer_serial)
            and self._trusted(conn)
            and tnow - conn.idle_since < self.config.pool_idle_timeout_seconds
            and _socket_quiet(conn.stream)
        )

    def _healthy(self, state: EndpointState, tnow: float) -> bool:
        return state.healthy(tnow) and not self.table.ejected(state.endpoint, tnow)

    def report(self, endpoint: Address, *, ok: bool, error: str = "") -> None:
        """Passive health: an exchange on `endpoint` succeeded or failed before a response."""
        if ok:
            self.table.succeeded(endpoint)
        elif self.table.failed(endpoint, trio.current_time(), error):
            self._state(endpoint).last_error = error

    async def acquire(
        self, *, fresh: bool = False, avoid: frozenset[Address] = frozenset()
    ) -> PooledConnection:
        """An idle pooled connection (unless `fresh`), else a new verified one; endpoints
        in `avoid` (where this request just failed) are tried last.

        Raises `PoolError`: 503 when no credentials or no endpoint is known, 504 when
        every attempt timed out, 502 otherwise (refused, closed, identity mismatch).
        """
        tnow, now = trio.current_time(), self.runtime.now()
        order = [self._state(e) for e in self.table.order(tnow, avoid=avoid)]
        if not order:
            source = "registered with the control plane" if self.table.discovered else "known"
            raise PoolError(
                503, "no_endpoints", f"no endpoint of {self.config.service} is {source}"
            )
        if not fresh:
            picked = False
            for state in order:
                if not self._healthy(state, tnow) or state.endpoint in avoid:
                    continue
                if not picked and not state.idle and not state.active:
                    break  # the round robin's pick has no connection yet: dial it, so
                    # sequential requests spread over every endpoint, not the first warm one
                picked = True
                while state.idle:
                    conn = state.idle.pop()  # most recent: the others stay evictable
                    if self._usable(conn, now, tnow):
                        self.reuses += 1
                        return self._lend(conn)
                    await _close(conn)
        give_up = trio.current_time() + _REDIAL_BUDGET_SECONDS
        pause = _REDIAL_FIRST_SECONDS
        while True:
            tnow = trio.current_time()
            # Backing off only steers requests to the other endpoints: with none healthy,
            # refusing would keep failing requests after the peer is back.
            candidates = [
                s for s in order if self._healthy(s, tnow) and s.endpoint not in avoid
            ] or sorted(order, key=lambda s: (s.endpoint in avoid, s.down_until))
            failures: list[PoolError] = []
            for state in candidates:
                try:
                    conn = await self._dial(state)
                except PoolError as exc:
                    if exc.reason == "no_credentials":
                        raise
                    state.down_until = trio.current_time() + self.config.endpoint_backoff_seconds
                    state.last_error = exc.detail
                    self.table.failed(state.endpoint, trio.current_time(), exc.detail)
                    failures.append(exc)
                    continue
                return self._lend(conn)
            if (
                any(f.reason not in _REDIALLED for f in failures)
                or trio.current_time() + pause > give_up
            ):
                raise self._failed(failures)
            await trio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 (jitter only)
            pause = min(pause * 2, _REDIAL_MAX_SECONDS)

    @staticmethod
    def _failed(failures: list[PoolError]) -> PoolError:
        if all(f.status == 504 for f in failures):
            return PoolError(504, failures[-1].reason, failures[-1].detail)
        worst = next((f for f in failures if f.reason == "identity_mismatch"), failures[-1])
        return PoolError(502, worst.reason, worst.detail)

    async def _dial(self, state: EndpointState) -> PooledConnection:
        rt, endpoint = self.runtime, state.endpoint
        if rt.store.usable(rt.now()) is None:
            raise PoolError(503, "no_credentials", "this sidecar has no usable SVID")
        transport: TimedStream | None = None
        with trio.move_on_after(rt.timeouts.connect_timeout_seconds):
            try:
                transport = lean(await self._connect(endpoint))
            except OSError as exc:
                raise PoolError(
                    502, "connect_failed", f"{endpoint} refused the connection ({exc})"
                ) from exc
        if transport is None:
            raise PoolError(504, "connect_timeout", f"{endpoint}: no connection within timeout")
        try:
            conn = await connect_mesh(
                transport,
                rt.store,
                rt.now,
                expected=self.table.expected(endpoint),
                timeout_seconds=rt.timeouts.handshake_timeout_seconds,
            )
        except MeshTlsError as exc:
            rt.observer.handshake(
                "outbound", ok=False, reason=str(exc.reason), service=self.config.service
            )
            if exc.reason is HandshakeFailure.NO_CREDENTIALS:
                raise PoolError(503, "no_credentials", exc.detail) from exc
            status = 504 if exc.reason is HandshakeFailure.HANDSHAKE_TIMEOUT else 502
            raise PoolError(status, str(exc.reason), f"{endpoint}: {exc.detail}") from exc
        rt.observer.handshake("outbound", ok=True)
        self.handshakes += 1
        state.connects += 1
        state.last_error = None
        state.down_until = 0.0  # it answered: healthy again for everyone
        lifetime = rt.tracker.lifetime
        hard_end = lifetime.hard_end(rt.now(), conn.peer.not_after, conn.credentials.not_after)
        # Requests go only where both SVIDs are valid, whatever our mode: the peer may be
        # strict and cut the connection at the first notAfter.
        retire_at = lifetime.retire_at(min(hard_end, conn.expires_at))
        return PooledConnection(
            conn.stream,
            endpoint,
            conn.peer_id,
            conn.peer_serial,
            hard_end,
            transport,
            own_serial=conn.credentials.serial,
            retire_at=retire_at,
            trust=PeerTrust(conn.peer, conn.credentials.bundles),
        )

    async def release(self, conn: PooledConnection, *, reusable: bool) -> None:
        """Give a connection back after an exchange; anything not clean is closed."""
        state = self._state(conn.endpoint)
        state.active -= 1
        self._active.discard(conn)
        if reusable:
            self.table.succeeded(conn.endpoint)
        if (
            reusable
            and conn.peer_id in self.table.expected(conn.endpoint)
            and conn.reader.buffered_bytes == 0
            and len(state.idle) < self.config.pool_max_idle_per_endpoint
            and self._current(conn, self.runtime.now())
        ):
            conn.reused = True
            conn.idle_since = trio.current_time()
            state.idle.append(conn)
            return
        await _close(conn)

    def mark_failed(self, conn: PooledConnection, error: str) -> None:
        """Record a failure seen on an established connection (not a health verdict)."""
        self._state(conn.endpoint).last_error = error

    # -- background ------------------------------------------------------------------------

    async def evict_once(self) -> int:
        """Close idle connections that expired, were revoked or idled too long."""
        tnow, now = trio.current_time(), self.runtime.now()
        closed = 0
        for endpoint, state in list(self._states.items()):
            if not state.idle and not state.active and not self.table.expected(endpoint):
                self._states.pop(endpoint, None)  # left the set: nothing of it remains
                continue
            keep = []
            for conn in state.idle:
                if self._usable(conn, now, tnow):
                    keep.append(conn)
                else:
                    closed += 1
                    await _close(conn)
            state.idle[:] = keep
        return closed

    async def aclose(self) -> None:
        for state in self._states.values():
            idle, state.idle = state.idle, []
            for conn in idle:
                await _close(conn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Evict every second, and at once when credentials or revocations change."""
        task_status.started()
        period = min(1.0, self.config.pool_idle_timeout_seconds / 2)
        try:
            while True:
                with trio.move_on_after(period):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.evict_once()
        finally:
            await self.aclose()
