"""The control plane's pure cores: histograms, the rolling window, the mesh view, intake."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mesh_ca.control.histogram import Histogram
from mesh_ca.control.mesh_view import explain_command
from mesh_ca.control.mesh_window import MeshWindow, TooManyInstances, parse_window
from mesh_ca.control.report_intake import ReportIntake, ReportRefused
from mesh_ca.control.report_wire import DenialSample, Report

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
VALIDITY = (T0 - timedelta(minutes=1), T0 + timedelta(hours=1))
ORDERS = "spiffe://example.org/ns/shop/svc/orders"


def edge(
    requests: int, *, status: str = "2xx", direction: str = "inbound", failures: int = 0
) -> dict[str, Any]:
    return {
        "direction": direction,
        "source": "web",
        "destination": "orders",
        "outcomes": [{"status_class": status, "decision": "allow", "count": requests}],
        "latency": {"bounds": [0.01, 0.1, 1.0], "counts": [requests, 0, 0, 0]},
        "handshake_failures": {"bad_certificate": failures} if failures else {},
    }


def report(*edges: dict[str, Any], instance: str = "a:1", **status: Any) -> Report:
    body = {
        "sent_at": T0.isoformat(),
        "interval_seconds": 5.0,
        "status": {"instance": instance, "version": "0.1.0", "ready": True} | status,
        "edges": list(edges),
    }
    return Report.model_validate_json(json.dumps(body))


def test_quantiles_interpolate_inside_the_bucket_like_prometheus() -> None:
    h = Histogram.empty([0.1, 0.2, 0.4])
    h.add([0.1, 0.2, 0.4], [0, 10, 0, 0], 1.5)
    assert h.quantile(0.5) == pytest.approx(0.15)
    assert h.quantile(0.99) == pytest.approx(0.199)
    h.add([0.1, 0.2, 0.4], [0, 0, 0, 5], 9.0)  # above the last bound: it is all we know
    assert h.quantile(0.99) == 0.4
    assert Histogram.empty([1.0]).quantile(0.5) is None


def test_histograms_with_other_bounds_merge_upwards() -> None:
    h = Histogram.empty([0.1, 1.0])
    h.add([0.05, 0.5, 5.0], [1, 2, 3, 4], 0.0)  # ≤0.05 → 0.1, ≤0.5 → 1.0, ≤5 and +Inf → +Inf
    assert h.counts == [1, 2, 7]


def test_the_window_sums_what_arrived_within_it_and_forgets_older_reports() -> None:
    window = MeshWindow()
    window.add(ORDERS, "127.0.0.1", VALIDITY, report(edge(10)), T0)
    window.add(ORDERS, "127.0.0.1", VALIDITY, report(edge(5)), T0 + timedelta(minutes=3))
    now = T0 + timedelta(minutes=3, seconds=1)
    last_minute = window.totals(parse_window("1m"), now)
    [per_instance] = last_minute.values()
    assert [t.requests for t in per_instance.values()] == [5]
    five = window.totals(parse_window("5m"), now)
    assert [t.requests for t in next(iter(five.values())).values()] == [15]
    later = T0 + timedelta(minutes=16)
    assert window.totals(parse_window("15m"), later) != {}  # the 3-minute one is still in
    assert window.instances(T0 + timedelta(minutes=19)) == []  # silent 15 min: forgotten


def test_an_id_cannot_grow_instances_without_bound() -> None:
    window = MeshWindow(max_instances_per_id=2)
    window.add(ORDERS, "a", VALIDITY, report(instance="a:1"), T0)
    window.add(ORDERS, "a", VALIDITY, report(instance="a:2"), T0)
    with pytest.raises(TooManyInstances):
        window.add(ORDERS, "a", VALIDITY, report(instance="a:3"), T0)
    window.add(ORDERS, "a", VALIDITY, report(instance="a:1"), T0)  # a known one still reports


def test_the_view_prefers_the_inbound_side_and_counts_5xx_as_failures() -> None:
    intake = ReportIntake(MeshWindow())
    inbound = edge(8) | {
        "outcomes": [
            {"status_class": "2xx", "decision": "allow", "count": 6},
            {"status_class": "4xx", "decision": "deny", "count": 1},
            {"status_class": "5xx", "decision": "allow", "count": 1},
        ]
    }
    body = json.dumps(json.loads(report(inbound, edge(9, direction="outbound")).model_dump_json()))
    intake.accept(ORDERS, VALIDITY, "127.0.0.1", body.encode(), T0, 0.0)
    view = intake.view("1m", T0 + timedelta(seconds=10), {"version": "0.1.0"})
    [row] = view["edges"]
    assert row["measured_by"] == "inbound"
    assert row["requests"] == 8
    assert row["success_rate"] == 0.875  # the 403 is an answer, the 500 is not
    assert row["outbound"]["requests"] == 9
    assert row["rps"] == 0.8  # over the 10 s this CA has heard reports, not 60 s
    [orders] = [s for s in view["services"] if s["name"] == "orders"]
    assert orders["health"] == "healthy"


def test_intake_refuses_over_the_rate_and_bad_bodies_without_recording_them() -> None:
    intake = ReportIntake(MeshWindow(), rate_per_second=1.0, burst=2)
    good = report(edge(1)).model_dump_json().encode()
    intake.accept(ORDERS, VALIDITY, "a", good, T0, 0.0)
    with pytest.raises(ReportRefused) as bad:
        intake.accept(ORDERS, VALIDITY, "a", b'{"sent_at": 1}', T0, 0.1)
    assert (bad.value.status, bad.value.code) == (400, "bad_request")
    with pytest.raises(ReportRefused) as fast:
        intake.accept(ORDERS, VALIDITY, "a", good, T0, 0.2)
    assert (fast.value.status, fast.value.code) == (429, "report_rate_limited")
    assert ("retry-after", "1") in fast.value.headers
    intake.accept(ORDERS, VALIDITY, "a", good, T0, 2.0)  # refilled
    totals = intake.window.totals(timedelta(minutes=1), T0)
    assert sum(t.requests for per in totals.values() for t in per.values()) == 2


def test_the_explain_command_quotes_what_a_request_sent() -> None:
    sample = DenialSample.model_validate_json(
        json.dumps(
            {
                "time": T0.isoformat(),
                "principal": "spiffe://example.org/ns/shop/svc/web",
                "action": "DELETE",
                "resource": "orders",
                "path": "/a b/'; rm -rf ~",
                "decision": "deny",
            }
        )
    )
    argv = shlex.split(explain_command(sample, "/etc/mesh policies"))
    assert argv[3] == "/etc/mesh policies"
    assert argv[argv.index("--path") + 1] == "/a b/'; rm -rf ~"
