"""Every inbound tcp connection yields one access record and the matching metrics,
whatever its outcome (in-memory TLS, mock clock; the harness of test_sidecar_inbound)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

from meshgate.transport.tls_stream import TlsError
from sidecar.identity.credentials import Revocations
from sidecar.observe.metrics import SidecarMetrics
from tests.test_sidecar_inbound import Harness, _closed

ALLOW_LIST = "config.inbound.allowed_ids"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.access)  # type: ignore[attr-defined]


@pytest.fixture
def access() -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger("meshgate.access")
    capture, level = _Capture(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    yield capture.records
    logger.removeHandler(capture)
    logger.setLevel(level)


def _sample(metrics: SidecarMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def _settled() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_denied_peer_is_logged_with_decision_and_policy(
    autojump_clock: object, access: list[dict[str, Any]]
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        stranger = h.pki.spiffe_id("shop", "intruder")
        stream = await h.connect(h.pki.leaf(stranger))
        assert await _closed(stream)
        await _settled()
        (line,) = access
        assert (line["peer_id"], line["decision"], line["reason"]) == (
            str(stranger),
            "deny",
            "denied",
        )
        assert line["policies"] == [ALLOW_LIST]
        metrics = h.inbound.runtime.observer.metrics
        assert _sample(metrics, "meshgate_authz_decisions_total", result="deny", policy=ALLOW_LIST)
        ok = {"direction": "inbound", "result": "ok", "reason": ""}
        assert _sample(metrics, "meshgate_tls_handshakes_total", **ok) == 1
        assert _sample(metrics, "meshgate_connections_open", direction="inbound") == 0
        nursery.cancel_scope.cancel()


async def test_idle_close_is_logged_with_its_bytes(
    autojump_clock: object, access: list[dict[str, Any]]
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, idle_seconds=30)
        stream = await h.connect()
        await stream.send_all(b"abc")
        assert await stream.receive_some() == b"abc"
        assert await _closed(stream)
        await _settled()
        (line,) = access
        assert (line["decision"], line["reason"]) == ("allow", "idle_timeout")
        assert (line["bytes_in"], line["bytes_out"]) == (3, 3)
        assert line["duration_seconds"] > 29
        nursery.cancel_scope.cancel()


async def test_revocation_and_svid_expiry_are_reasons(
    autojump_clock: object, access: list[dict[str, Any]]
) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, peer_ttl=timedelta(minutes=10))
        revoked = await h.connect()
        expiring = await h.connect(h.pki.leaf(h.pki.spiffe_id("shop", "frontend")))
        await _settled()
        serial = h.tracker._slots[min(h.tracker._slots)].serial
        assert serial is not None
        h.store.publish_revocations(Revocations(serials=frozenset({serial})))
        assert await _closed(revoked)
        assert await _closed(expiring)
        await _settled()
        assert sorted(line["reason"] for line in access) == ["revoked", "svid_expired"]
        nursery.cancel_scope.cancel()


async def test_refused_over_capacity_is_counted(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, max_connections=1)
        await h.connect()
        with pytest.raises((trio.BrokenResourceError, TlsError)):
            await h.connect()
        metrics = h.inbound.runtime.observer.metrics
        refused = {"direction": "inbound", "reason": "max_connections"}
        assert _sample(metrics, "meshgate_connections_refused_total", **refused) == 1
        assert _sample(metrics, "meshgate_connections_open", direction="inbound") == 1
        assert _sample(metrics, "meshgate_connections_total", direction="inbound") == 1
        nursery.cancel_scope.cancel()
