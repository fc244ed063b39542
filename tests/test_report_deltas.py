"""The sidecar's report: per-edge deltas read from its own metrics registry, a baseline
that moves only when the CA took the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from mesh_ca.client import CaClientError, CaUnavailable
from sidecar.config import parse_config
from sidecar.identity.credentials import Credentials, CredentialStore
from sidecar.observe.access import Observer
from sidecar.observe.metrics import SidecarMetrics
from sidecar.observe.report import deltas, edge_totals
from sidecar.observe.reporter import Reporter
from tests.pki import TestPki

pytestmark = pytest.mark.unit

WEB = "spiffe://example.org/ns/shop/svc/web"


def observed() -> Observer:
    return Observer(SidecarMetrics(), "spiffe://example.org/ns/shop/svc/orders", "orders")


def request(
    observer: Observer, status: int, decision: str = "allow", seconds: float = 0.02
) -> None:
    policies = ("no-delete",) if decision == "deny" else ()
    observer.count_request(
        "inbound", WEB, "orders", "GET", status, decision, seconds, 10, 20, policies
    )


def test_edge_deltas_come_from_the_registry_and_subtract_the_baseline() -> None:
    observer = observed()
    for _ in range(3):
        request(observer, 200)
    request(observer, 403, "deny")
    observer.handshake("inbound", ok=False, reason="bad_certificate")
    first = edge_totals(observer.metrics.families())
    edges, left_out = deltas(first, {})
    assert left_out == 0
    by_key = {(e["direction"], e["source"], e["destination"]): e for e in edges}
    web = by_key[("inbound", "web", "orders")]
    assert {(o["status_class"], o["decision"], o["count"]) for o in web["outcomes"]} == {
        ("2xx", "allow", 3),
        ("4xx", "deny", 1),
    }
    assert web["denials"] == [{"decision": "deny", "policy": "no-delete", "count": 1}]
    assert sum(web["latency"]["counts"]) == 4
    assert web["bytes_received"] == 40
    assert by_key[("inbound", "unknown", "orders")]["handshake_failures"] == {"bad_certificate": 1}

    request(observer, 500)
    second, _ = deltas(edge_totals(observer.metrics.families()), first)
    assert [(o["status_class"], o["count"]) for o in second[0]["outcomes"]] == [("5xx", 1)]
    assert deltas(first, first) == ([], 0)  # nothing new: no edges at all


def test_only_the_busiest_edges_go_when_there_are_too_many() -> None:
    observer = observed()
    for index in range(5):
        for _ in range(index + 1):
            observer.count_request("outbound", None, f"svc{index}", "GET", 200, "none", 0.01, 0, 0)
    edges, left_out = deltas(edge_totals(observer.metrics.families()), {}, max_edges=2)
    assert [e["destination"] for e in edges] == ["svc4", "svc3"]
    assert left_out == 3


class FlakyCa:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.down = True

    async def report(self, body: bytes, chain: Any, key: Any) -> bytes:
        if self.down:
            raise CaUnavailable(None, "unreachable", "127.0.0.1:1: connection refused")
        self.bodies.append(json.loads(body))
        return b'{"accepted": true}'

    async def aclose(self) -> None:
        pass


class _Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def _reporter(ready: Callable[[], bool] | None = None) -> tuple[Reporter, Observer, FlakyCa]:
    pki = TestPki()
    leaf = pki.leaf("spiffe://example.org/ns/shop/svc/orders")
    config = parse_config(
        {
            "identity": {
                "spiffe_id": "spiffe://example.org/ns/shop/svc/orders",
                "bundle_file": "/dev/null",
                "ca_addresses": ["127.0.0.1:1"],
                "state_dir": "/tmp/unused",
            },
            "inbound": {
                "listen": "127.0.0.1:1",
                "app": "127.0.0.1:2",
                "service": "orders",
                "protocol": "tcp",
                "allowed_ids": [WEB],
            },
        },
        source="test",
    )
    store = CredentialStore()
    store.publish(
        Credentials.build((leaf.cert, *leaf.chain), leaf.key, pki.bundles, datetime.now(UTC))
    )
    observer = observed()
    ca = FlakyCa()
    reporter = Reporter(
        config,
        store,
        observer.metrics,
        lambda: {"instance": "h:1", "version": "x", "ready": True},
        _Clock(),
        lambda bundles: ca,
        samples=observer.take_denial_samples,
        ready=ready,
    )
    return reporter, observer, ca


async def test_a_report_the_ca_did_not_take_is_sent_again_summed() -> None:
    reporter, observer, ca = _reporter()
    request(observer, 200)
    request(observer, 403, "deny")
    assert not await reporter.report_once()
    request(observer, 200)
    ca.down = False
    assert await reporter.report_once()
    [sent] = ca.bodies
    counts = {o["status_class"]: o["count"] for o in sent["edges"][0]["outcomes"]}
    assert counts == {"2xx": 2, "4xx": 1}  # both reports' requests, once
    assert [s["action"] for s in sent["denial_samples"]] == ["GET"]
    assert await reporter.report_once()
    assert ca.bodies[1]["edges"] == []  # nothing since: nothing sent twice
    await trio.lowlevel.checkpoint()


def test_refusals_are_client_errors() -> None:
    assert issubclass(CaUnavailable, CaClientError)


async def test_a_report_too_large_for_the_ca_sends_the_busiest_edges_that_fit() -> None:
    from mesh_ca.control.report_wire import MAX_REPORT_BYTES

    reporter, observer, ca = _reporter()
    for index in range(200):  # 200 edges with many outcome rows: well over 64 KiB
        for status in (200, 201, 204, 301, 302, 400, 404, 500, 502, 503):
            for _ in range(1 + (index == 7)):
                observer.count_request(
                    "outbound", None, f"svc{index}", "GET", status, "none", 0.01, 1, 1
                )
    ca.down = False
    assert await reporter.report_once()
    [sent] = ca.bodies
    assert len(json.dumps(sent)) <= MAX_REPORT_BYTES
    assert sent["edges"][0]["destination"] == "svc7"  # the busiest first
    assert sent["truncated_edges"] == 200 - len(sent["edges"]) > 0
    assert await reporter.report_once()  # the rest go next
    first = {e["destination"] for e in sent["edges"]}
    second = {e["destination"] for e in ca.bodies[1]["edges"]}
    assert not first & second  # the edges sent once are not sent again
    assert len(first) + len(second) + ca.bodies[1]["truncated_edges"] == 200


async def test_a_readiness_change_is_reported_at_once_not_after_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = {"ready": False}
    reporter, _, ca = _reporter(lambda: now["ready"])
    assert not await reporter.report_once()  # the CA is down: no early retry for that
    start = trio.current_time()
    await reporter.wait_next()
    assert trio.current_time() - start >= reporter.interval_seconds - 1e-6  # float sums
    ca.down = False
    assert await reporter.report_once()
    now["ready"] = True  # e.g. the first central policy set arrived
    start = trio.current_time()
    await reporter.wait_next()
    assert trio.current_time() - start < reporter.interval_seconds
    assert await reporter.report_once()
    start = trio.current_time()
    await reporter.wait_next()  # reported as ready: back to the interval
    assert trio.current_time() - start >= reporter.interval_seconds - 1e-6
