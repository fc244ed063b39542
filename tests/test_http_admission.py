"""Admission in http mode (sidecar/admission.py): connections over `max_connections` are
refused and counted per direction, and an outbound connection cancelled mid-request
(revoked, expired or drained) ends quietly with its request still recorded.

In-memory streams with real TLS, reusing the http inbound and outbound harnesses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from meshgate.transport.tls_stream import TlsError
from sidecar.observe.metrics import SidecarMetrics
from tests.http_inbound_harness import AccessLog, capture_access_log, closed, copy_policies
from tests.http_inbound_harness import Harness as InboundHarness
from tests.test_http_outbound import GET, Reply, roundtrip, status_and_body
from tests.test_http_outbound import Harness as OutboundHarness

REFUSED = "meshgate_connections_refused_total"


@pytest.fixture
def access_log() -> Iterator[AccessLog]:
    yield from capture_access_log()


def _refused(metrics: SidecarMetrics, direction: str) -> float | None:
    labels = {"direction": direction, "reason": "max_connections"}
    return metrics.registry.get_sample_value(REFUSED, labels)


async def test_http_inbound_connection_over_the_cap_is_refused_and_counted(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        h = InboundHarness(nursery, copy_policies(tmp_path / "policies"))
        h.tracker.max_connections = 1
        await h.connect()  # holds the only slot
        with pytest.raises((trio.BrokenResourceError, TlsError)):
            await h.connect()
        metrics = h.observer.metrics
        assert _refused(metrics, "inbound") == 1
        assert _refused(metrics, "outbound") is None
        assert h.tracker.active == 1
        nursery.cancel_scope.cancel()


async def test_http_outbound_connection_over_the_cap_is_refused_and_counted(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        h = OutboundHarness(nursery)
        h.runtime.tracker.max_connections = 1
        first = await h.client()
        assert status_and_body(await roundtrip(first, GET))[0] == 200  # admitted, kept alive
        second = await h.client()
        assert await closed(second)
        assert h.destination.handshakes == 1  # the refused client never reached upstream
        metrics = h.runtime.observer.metrics
        assert _refused(metrics, "outbound") == 1
        assert _refused(metrics, "inbound") is None
        # The admitted connection is unaffected.
        assert status_and_body(await roundtrip(first, GET))[0] == 200
        nursery.cancel_scope.cancel()


async def test_http_outbound_connection_cancelled_mid_request_ends_quietly(
    autojump_clock: object, access_log: AccessLog
) -> None:
    async with trio.open_nursery() as nursery:
        h = OutboundHarness(nursery)
        h.destination.behaviour = lambda head, n: Reply(hang=True)
        client, sidecar_end = trio.testing.memory_stream_pair()
        returned = trio.Event()

        async def serve() -> None:
            await h.outbound.handle(sidecar_end)  # an exception here fails the test
            returned.set()

        nursery.start_soon(serve)
        await client.send_all(GET)
        await trio.testing.wait_all_tasks_blocked()
        assert len(h.destination.requests) == 1  # the request is in flight upstream
        assert h.runtime.tracker.active == 1
        h.runtime.tracker.cancel_all()  # as revocation, expiry or a drain timeout does
        with trio.fail_after(5):
            await returned.wait()
        assert await closed(client)
        assert h.runtime.tracker.active == 0
        [line] = await access_log.wait_for(1)
        assert (line["direction"], line["method"], line["path"]) == ("outbound", "GET", "/items/1")
        assert line["status"] is None  # no response was ever sent
        metrics = h.runtime.observer.metrics
        assert (
            metrics.registry.get_sample_value(
                "meshgate_connections_open", {"direction": "outbound"}
            )
            == 0
        )
        nursery.cancel_scope.cancel()
