"""The inbound pipeline over in-memory TLS and a mock clock: authorize first, close on
revocation, on SVID expiry and when idle; the connection cap refuses the excess."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from meshgate.clock import TrioWallClock
from meshgate.transport.mtls import mesh_context
from meshgate.transport.tls_stream import TlsError, TlsStream
from sidecar.authz.allow_list import AllowList
from sidecar.config import InboundConfig, TimeoutsConfig
from sidecar.connections import ConnectionTracker
from sidecar.identity.credentials import Credentials, CredentialStore, Revocations
from sidecar.inbound.tcp import Inbound
from sidecar.runtime import Runtime
from sidecar.transport.lifetime import LifetimeMode, LifetimePolicy
from tests.pki import Leaf
from tests.pki import TestPki as Pki
from tests.sidecar_helpers import bundle_with_intermediates, store_for

NOW = datetime.now(UTC)


class MemoryApp:
    """An in-memory echo app; counts the connections the sidecar opened to it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.connections = 0

    async def connect(self) -> trio.abc.HalfCloseableStream:
        self.connections += 1
        sidecar_end, app_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._echo, app_end)
        return sidecar_end

    async def _echo(self, stream: trio.abc.HalfCloseableStream) -> None:
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Harness:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        peer_ttl: timedelta = timedelta(hours=1),
        idle_seconds: float = 3600,
        max_connections: int = 10,
        lifetime: LifetimePolicy | None = None,
    ) -> None:
        self.pki = Pki(now=NOW)
        self.clock = TrioWallClock(NOW)
        self.peer_id = self.pki.spiffe_id("shop", "frontend")
        own = self.pki.leaf(self.pki.spiffe_id("shop", "orders"))
        self.store: CredentialStore = store_for(own, bundle_with_intermediates(self.pki), NOW)
        self.tracker = ConnectionTracker(
            max_connections, self.store, now=self.clock.now, lifetime=lifetime
        )
        self.app = MemoryApp(nursery)
        config = InboundConfig.model_validate(
            {
                "listen": "127.0.0.1:1",
                "app": "127.0.0.1:2",
                "service": "orders",
                "allowed_ids": [str(self.peer_id)],
            }
        )
        timeouts = TimeoutsConfig(idle_timeout_seconds=idle_seconds)
        runtime = Runtime(self.store, self.clock.now, timeouts, self.tracker)
        self.inbound = Inbound(config, runtime, AllowList(config.allowed_ids), self.app.connect)
        self.nursery = nursery
        self.peer_ttl = peer_ttl

    async def connect(self, leaf: Leaf | None = None) -> TlsStream:
        leaf = leaf or self.pki.leaf(self.peer_id, ttl=self.peer_ttl, now=self.clock.now())
        client_end, server_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.inbound.handle, server_end)
        context = mesh_context("client", leaf.chain_pem(), leaf.key_pem(), self.pki.bundles)
        stream = TlsStream(client_end, context, server_side=False)
        await stream.do_handshake()
        return stream


async def _closed(stream: TlsStream) -> bool:
    """True once the sidecar has dropped the connection (EOF, truncation or reset)."""
    try:
        return await stream.receive_some() == b""
    except trio.BrokenResourceError:
        return True


async def test_an_allowed_peer_reaches_the_app_and_gets_echoes(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        stream = await h.connect()
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await stream.send_eof()
        assert await stream.receive_some() == b""  # the app's half-close came back
        await stream.aclose()
        assert h.app.connections == 1
        nursery.cancel_scope.cancel()


async def test_an_unlisted_peer_never_causes_an_app_connection(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        stranger = h.pki.leaf(h.pki.spiffe_id("shop", "intruder"))
        stream = await h.connect(stranger)
        await stream.send_all(b"secret")
        assert await _closed(stream)
        assert h.app.connections == 0
        nursery.cancel_scope.cancel()


async def test_revocation_closes_a_live_connection(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        stream = await h.connect()
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        h.store.publish_revocations(Revocations(spiffe_ids=frozenset({h.peer_id})))
        with trio.fail_after(1):
            assert await _closed(stream)
        assert h.tracker.closed_by_revocation == 1
        nursery.cancel_scope.cancel()


async def test_a_connection_ends_no_later_than_the_peer_svid(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, peer_ttl=timedelta(minutes=10))
        stream = await h.connect()
        started = trio.current_time()
        assert await _closed(stream)
        lived = trio.current_time() - started
        assert 9 * 60 < lived <= 10 * 60  # notAfter = issue time + 10 min (backdated 10 s)
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_is_closed(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, idle_seconds=30)
        stream = await h.connect()
        started = trio.current_time()
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        assert await _closed(stream)
        assert 29 < trio.current_time() - started < 31
        nursery.cancel_scope.cancel()


async def test_the_connection_cap_refuses_the_excess(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, max_connections=1)
        first = await h.connect()
        with pytest.raises((trio.BrokenResourceError, TlsError)):
            await h.connect()  # refused before any TLS: reset or EOF mid-handshake
        assert h.tracker.refused_over_capacity == 1
        await first.send_all(b"still here")
        assert await first.receive_some() == b"still here"
        nursery.cancel_scope.cancel()


UNTIL_REVOKED = LifetimePolicy(LifetimeMode.UNTIL_REVOKED, max_age_seconds=30 * 60)


async def _lifetime(stream: TlsStream) -> float:
    """Seconds until the sidecar drops `stream`, echoing a byte now and then."""
    started = trio.current_time()
    while True:
        with trio.move_on_after(60):
            if await _closed(stream):
                return trio.current_time() - started
        try:
            await stream.send_all(b"x")
        except trio.BrokenResourceError:
            return trio.current_time() - started
        if await stream.receive_some() != b"x":
            return trio.current_time() - started


async def test_until_revoked_outlives_the_peer_svid_up_to_the_max_age(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, peer_ttl=timedelta(minutes=10), lifetime=UNTIL_REVOKED)
        lived = await _lifetime(await h.connect())
        assert 29 * 60 < lived <= 30 * 60 + 1  # max age, far past the peer's 10 min SVID
        nursery.cancel_scope.cancel()


async def test_until_revoked_ends_with_our_own_svid_unless_a_successor_arrives(
    autojump_clock: object,
) -> None:
    policy = LifetimePolicy(LifetimeMode.UNTIL_REVOKED, max_age_seconds=3 * 3600)
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, lifetime=policy)
        lived = await _lifetime(await h.connect())
        assert 59 * 60 < lived <= 60 * 60 + 1  # our 1 h SVID expired: fail closed
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, lifetime=policy)
        stream = await h.connect()

        async def rotate() -> None:
            await trio.sleep(45 * 60)
            own = h.pki.leaf(h.pki.spiffe_id("shop", "orders"), ttl=timedelta(hours=4))
            bundles = bundle_with_intermediates(h.pki)
            h.store.publish(
                Credentials.build((own.cert, *own.chain), own.key, bundles, h.clock.now())
            )

        nursery.start_soon(rotate)
        lived = await _lifetime(stream)
        assert 3 * 3600 - 60 < lived <= 3 * 3600 + 1  # the successor carried it to max age
        nursery.cancel_scope.cancel()


async def test_a_peer_outside_the_new_trust_bundle_is_cut_at_once(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, lifetime=UNTIL_REVOKED)
        stream = await h.connect()
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        other = Pki(now=NOW)  # the trust domain's CA was replaced: the peer's CA is gone
        own = other.leaf(other.spiffe_id("shop", "orders"))
        h.store.publish(
            Credentials.build(
                (own.cert, *own.chain), own.key, bundle_with_intermediates(other), h.clock.now()
            )
        )
        with trio.fail_after(1):
            assert await _closed(stream)
        assert h.tracker.closed_as_untrusted == 1
        nursery.cancel_scope.cancel()
