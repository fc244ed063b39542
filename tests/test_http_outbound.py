"""Outbound http over in-memory TLS and a mock clock: pooled mTLS reused across client
connections, stale keep-alives retried only for idempotent requests, secure naming, and
502/503/504 with clear bodies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from meshgate.clock import TrioWallClock
from meshgate.http import (
    NEED_DATA,
    Data,
    EndOfMessage,
    Event,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
)
from sidecar.config import Address, OutboundConfig, TimeoutsConfig
from sidecar.connections import ConnectionTracker
from sidecar.identity.credentials import Credentials, CredentialStore, Revocations
from sidecar.outbound.http import HttpOutbound
from sidecar.outbound.mesh_pool import MeshPool
from sidecar.runtime import Runtime
from sidecar.transport.mesh_tls import accept_mesh
from tests.pki import TestPki as Pki
from tests.sidecar_helpers import bundle_with_intermediates, store_for

ENDPOINT = Address("127.0.0.1", 9001)
Behaviour = Callable[[RequestHead, int], "Reply | None"]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    close_after: bool = False  # close the connection after this response (no header)
    hang: bool = False  # never answer


@dataclass
class Destination:
    """An in-memory destination sidecar: mTLS with its own SVID, then a tiny HTTP server."""

    store: CredentialStore
    clock: TrioWallClock
    nursery: trio.Nursery
    behaviour: Behaviour = lambda head, n: Reply(body=head.target.encode())
    refuse: bool = False
    handshakes: int = 0
    requests: list[RequestHead] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def connect(self, endpoint: Address) -> trio.abc.Stream:
        if self.refuse:
            raise OSError(111, "Connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, theirs)
        return ours

    async def _serve(self, transport: trio.abc.Stream) -> None:
        try:
            conn = await accept_mesh(transport, self.store, self.clock.now, timeout_seconds=5)
        except Exception:
            return
        self.handshakes += 1
        reader = RequestReader()
        stream = conn.stream
        body = bytearray()
        try:
            while True:
                ev = reader.next_event()
                if ev is NEED_DATA:
                    data = await stream.receive_some()
                    if not data:
                        return
                    reader.feed(data)
                    continue
                if isinstance(ev, RequestHead):
                    self.requests.append(ev)
                    head = ev
                    body = bytearray()
                elif isinstance(ev, Data):
                    body += ev.data
                elif isinstance(ev, EndOfMessage):
                    self.bodies.append(bytes(body))
                    reply = self.behaviour(head, len(self.requests))
                    if reply is None or reply.hang:
                        await trio.sleep_forever()
                    assert reply is not None
                    rid = dict(head.headers).get("x-request-id", "")
                    await stream.send_all(
                        b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-seen-request-id: %s\r\n\r\n%s"
                        % (reply.status, len(reply.body), rid.encode(), reply.body)
                    )
                    if reply.close_after:
                        await stream.aclose()
                        return
                else:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


class Harness:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        destination_service: str = "orders",
        store: CredentialStore | None = None,
        response_timeout: float = 30.0,
    ) -> None:
        # The wall time now, not at import: OpenSSL checks validity against the real clock,
        # so a short-lived leaf made from an import-time `now` expires as the run goes on.
        self.now = datetime.now(UTC)
        self.pki = Pki(now=self.now)
        self.clock = TrioWallClock(self.now)
        bundles = bundle_with_intermediates(self.pki)
        self.own_id = self.pki.spiffe_id("shop", "frontend")
        self.orders_id = self.pki.spiffe_id("shop", "orders")
        self.store = store or store_for(self.pki.leaf(self.own_id), bundles, self.now)
        dest_leaf = self.pki.leaf(self.pki.spiffe_id("shop", destination_service))
        self.destination = Destination(store_for(dest_leaf, bundles, self.now), self.clock, nursery)
        self.config = OutboundConfig.model_validate(
            {
                "listen": "127.0.0.1:1",
                "service": "orders",
                "endpoints": [str(ENDPOINT)],
                "spiffe_ids": [str(self.orders_id)],
                "protocol": "http",
            }
        )
        timeouts = TimeoutsConfig(response_timeout_seconds=response_timeout)
        self.runtime = Runtime(
            self.store,
            self.clock.now,
            timeouts,
            ConnectionTracker(100, self.store, now=self.clock.now),
        )
        self.pool = MeshPool(self.config, self.runtime, self.destination.connect)
        self.outbound = HttpOutbound(self.config, self.runtime, self.pool)
        self.nursery = nursery
        nursery.start_soon(self.pool.run)

    async def client(self) -> trio.abc.Stream:
        ours, sidecar_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.outbound.handle, sidecar_end)
        return ours


async def roundtrip(stream: trio.abc.Stream, request: bytes, method: str = "GET") -> list[Event]:
    """Send one request, read events up to the end of its response."""
    await stream.send_all(request)
    reader = ResponseReader()
    reader.expect(method)
    events: list[Event] = []
    with trio.fail_after(60):
        while True:
            ev = reader.next_event()
            if ev is NEED_DATA:
                data = await stream.receive_some()
                if not data:
                    reader.feed_eof()
                else:
                    reader.feed(bytes(data))
                continue
            events.append(ev)
            if isinstance(ev, EndOfMessage):
                return events


def status_and_body(events: list[Event]) -> tuple[int, bytes, dict[str, str]]:
    head = events[0]
    assert isinstance(head, ResponseHead)
    body = b"".join(e.data for e in events if isinstance(e, Data))
    return head.status, body, dict(head.headers)


GET = b"GET /items/1 HTTP/1.1\r\nhost: orders\r\n\r\n"


async def test_a_second_client_connection_reuses_the_pooled_mtls_connection(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        for _ in range(3):
            client = await h.client()
            status, body, headers = status_and_body(await roundtrip(client, GET))
            assert (status, body) == (200, b"/items/1")
            assert headers["x-seen-request-id"]  # outbound added one
            await client.aclose()
        assert h.destination.handshakes == 1
        assert (h.pool.handshakes, h.pool.reuses) == (1, 2)
        assert h.pool.upstreams()[0]["idle"] == 1
        nursery.cancel_scope.cancel()


async def test_request_id_and_traceparent_are_kept(autojump_clock: object) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        client = await h.client()
        request = (
            b"GET /a HTTP/1.1\r\nhost: orders\r\nx-request-id: abc-1\r\n"
            b"traceparent: " + tp.encode() + b"\r\nx-forwarded-client-cert: spoof\r\n\r\n"
        )
        status, _, headers = status_and_body(await roundtrip(client, request))
        assert status == 200
        assert headers["x-seen-request-id"] == "abc-1"
        sent = dict(h.destination.requests[0].headers)
        assert sent["traceparent"] == tp
        assert "x-forwarded-client-cert" not in sent
        nursery.cancel_scope.cancel()


async def test_an_idempotent_request_is_retried_after_a_stale_pooled_connection(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        # The destination closes after each answer without saying so: a stale keep-alive.
        h.destination.behaviour = lambda head, n: Reply(body=b"n%d" % n, close_after=True)
        client = await h.client()
        assert status_and_body(await roundtrip(client, GET))[:2] == (200, b"n1")
        await trio.sleep(0.1)  # the destination's close reaches us
        assert status_and_body(await roundtrip(client, GET))[:2] == (200, b"n2")
        assert h.outbound.retries == 1
        assert h.destination.handshakes == 2
        nursery.cancel_scope.cancel()


async def test_a_post_is_not_retried_after_a_stale_pooled_connection(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        h.destination.behaviour = lambda head, n: Reply(close_after=True)
        client = await h.client()
        await roundtrip(client, GET)
        await trio.sleep(0.1)
        post = b"POST /orders HTTP/1.1\r\nhost: orders\r\ncontent-length: 5\r\n\r\nhello"
        status, body, headers = status_and_body(await roundtrip(client, post, "POST"))
        assert status == 502
        assert b"closed the connection" in body
        assert headers["connection"] == "close"
        assert h.outbound.retries == 0
        assert len(h.destination.requests) == 1  # the POST never reached a destination
        nursery.cancel_scope.cancel()


async def test_a_lone_refused_endpoint_is_502_and_is_used_again_as_soon_as_it_is_back(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        h.destination.refuse = True
        status, body, headers = status_and_body(await roundtrip(await h.client(), GET))
        assert status == 502
        assert b"refused the connection" in body
        assert headers["x-request-id"]
        assert b"request id: " in body
        row = h.pool.upstreams()[0]
        assert row["healthy"] is False
        assert "refused" in row["last_error"]
        # Backing off would only steer requests elsewhere: with no other endpoint the next
        # request dials it at once instead of being refused for endpoint_backoff_seconds.
        h.destination.refuse = False
        status, _, _ = status_and_body(await roundtrip(await h.client(), GET))
        assert status == 200
        assert h.pool.upstreams()[0]["healthy"] is True
        nursery.cancel_scope.cancel()


async def test_no_credentials_is_503(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, store=CredentialStore())
        status, body, _ = status_and_body(await roundtrip(await h.client(), GET))
        assert status == 503
        assert b"no usable SVID" in body
        assert h.destination.handshakes == 0
        nursery.cancel_scope.cancel()


async def test_a_silent_destination_is_504(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, response_timeout=2.0)
        h.destination.behaviour = lambda head, n: Reply(hang=True)
        status, body, _ = status_and_body(await roundtrip(await h.client(), GET))
        assert status == 504
        assert b"no response within 2 s" in body
        nursery.cancel_scope.cancel()


async def test_a_bad_response_is_502(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        h.destination.behaviour = lambda head, n: Reply(status=101)
        status, body, _ = status_and_body(await roundtrip(await h.client(), GET))
        assert status == 502
        assert b"Bad Gateway: 127.0.0.1:9001: " in body
        nursery.cancel_scope.cancel()


async def test_secure_naming_mismatch_is_502_and_the_request_is_never_sent(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, destination_service="payments")
        status, body, _ = status_and_body(await roundtrip(await h.client(), GET))
        assert status == 502
        assert b"presented spiffe://example.org/ns/shop/svc/payments" in body
        assert h.destination.requests == []
        nursery.cancel_scope.cancel()


async def test_bodies_stream_both_ways_chunked_and_by_length(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        h.destination.behaviour = lambda head, n: Reply(body=b"x" * 100_000)
        client = await h.client()
        chunked = (
            b"POST /up HTTP/1.1\r\nhost: orders\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        status, body, _ = status_and_body(await roundtrip(client, chunked, "POST"))
        assert status == 200
        assert body == b"x" * 100_000
        big = b"y" * 200_000
        put = b"PUT /up HTTP/1.1\r\nhost: orders\r\ncontent-length: %d\r\n\r\n" % len(big)
        status, _, _ = status_and_body(await roundtrip(client, put + big, "PUT"))
        assert status == 200
        assert h.destination.bodies == [b"hello world", big]
        nursery.cancel_scope.cancel()


async def test_malformed_requests_are_refused_before_any_upstream_connection(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        smuggle = (
            b"POST / HTTP/1.1\r\nhost: orders\r\ncontent-length: 3\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        status, _, _ = status_and_body(await roundtrip(await h.client(), smuggle, "POST"))
        assert status == 400
        status, _, _ = status_and_body(
            await roundtrip(await h.client(), b"GET /a/%2F HTTP/1.1\r\nhost: o\r\n\r\n")
        )
        assert status == 400
        assert h.destination.handshakes == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("revoke", ["id", "serial"])
async def test_revocation_drops_idle_pooled_connections(
    autojump_clock: object, revoke: str
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        await roundtrip(await h.client(), GET)
        assert h.pool.upstreams()[0]["idle"] == 1
        dest_serial = h.destination.store.current.serial  # type: ignore[union-attr]
        h.store.publish_revocations(
            Revocations(spiffe_ids=frozenset({h.orders_id}))
            if revoke == "id"
            else Revocations(serials=frozenset({dest_serial}))
        )
        await trio.sleep(0.01)
        assert h.pool.upstreams()[0]["idle"] == 0
        nursery.cancel_scope.cancel()


async def test_pooled_connections_are_not_reused_after_the_peer_svid_expires(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        h.destination.store = store_for(
            h.pki.raw_leaf([str(h.orders_id)], not_after=h.now + timedelta(minutes=1)),
            bundle_with_intermediates(h.pki),
            h.now,
        )
        await roundtrip(await h.client(), GET)
        await trio.sleep(30)
        await roundtrip(await h.client(), GET)
        assert h.destination.handshakes == 1
        await trio.sleep(31)  # past the destination's notAfter
        assert h.pool.upstreams()[0]["idle"] == 0  # evicted
        nursery.cancel_scope.cancel()


async def test_a_rotation_moves_new_requests_to_a_fresh_connection(autojump_clock: object) -> None:
    """Once our SVID is superseded, the pooled connection made with it takes no new request
    (it would be cut at that SVID's notAfter): the next one gets a fresh handshake."""
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        client = await h.client()
        assert status_and_body(await roundtrip(client, GET))[0] == 200
        assert status_and_body(await roundtrip(client, GET))[0] == 200
        assert h.destination.handshakes == 1
        renewed = h.pki.leaf(h.own_id, now=h.clock.now())
        bundles = bundle_with_intermediates(h.pki)
        chain = (renewed.cert, *renewed.chain)
        h.store.publish(Credentials.build(chain, renewed.key, bundles, h.clock.now()))
        assert status_and_body(await roundtrip(client, GET))[0] == 200
        assert h.destination.handshakes == 2
        assert status_and_body(await roundtrip(client, GET))[0] == 200
        assert h.destination.handshakes == 2  # the fresh one is reused
        nursery.cancel_scope.cancel()


async def test_no_request_goes_on_a_connection_within_the_margin_of_an_svid_expiry(
    autojump_clock: object,
) -> None:
    """The destination's SVID ends in 1 h: from 10 s before (the default margin) requests
    use a fresh connection, where the destination would be presenting its renewed SVID."""
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        client = await h.client()
        for _ in range(119):  # a request every 30 s up to 30 s before: always reused
            await trio.sleep(30)
            assert status_and_body(await roundtrip(client, GET))[0] == 200
        assert h.destination.handshakes == 1
        await trio.sleep(25)  # 5 s before: inside the margin
        renewed = h.pki.leaf(h.orders_id, ttl=timedelta(hours=2))  # (OpenSSL: real time)
        bundles = bundle_with_intermediates(h.pki)
        chain = (renewed.cert, *renewed.chain)
        h.destination.store.publish(Credentials.build(chain, renewed.key, bundles, h.clock.now()))
        assert status_and_body(await roundtrip(client, GET))[0] == 200
        assert h.destination.handshakes == 2
        nursery.cancel_scope.cancel()


async def test_an_upstream_revoked_during_a_request_is_cut_at_once(autojump_clock: object) -> None:
    """A revoked peer is never served on: the exchange in progress on its pooled
    connection is cut when the revocation arrives, not when the response ends."""
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, response_timeout=3600)
        h.destination.behaviour = lambda head, n: Reply(hang=True)
        client = await h.client()

        async def revoke_once_sent() -> None:
            while not h.destination.requests:
                await trio.sleep(0.01)
            h.store.publish_revocations(Revocations(spiffe_ids=frozenset({h.orders_id})))

        nursery.start_soon(revoke_once_sent)
        started = trio.current_time()
        status, body, _ = status_and_body(await roundtrip(client, GET))
        assert status == 502
        assert b"upstream_revoked" in body
        assert trio.current_time() - started < 1
        nursery.cancel_scope.cancel()
