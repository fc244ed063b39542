"""The demo runs end to end, and what it reports is what the mesh logged and counted.

Runs `bash scripts/demo.sh --keep` (on a stand-in of the test's virtualenv, so nothing is
installed), so the mesh is still up afterwards: the test then reads the report, the access
logs and the app logs itself, scrapes every sidecar's `/metrics`, and compares them. The
summary table and the metrics are recomputed here from the raw logs, not taken from the demo.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.demo_clone import installed_venv
from tests.procs import ROOT

pytestmark = pytest.mark.integration
_T = TypeVar("_T")

DEMO = ROOT / "scripts" / "demo.sh"
SERVICES = ("web", "orders", "payments")
ACCESS_FIELDS = {
    "time": str,
    "direction": str,
    "peer_id": str,
    "method": str,
    "path": str,
    "status": int,
    "decision": str,
    "policies": list,
    "bytes_in": int,
    "bytes_out": int,
    "duration_seconds": float,
    "request_id": str,
}


def _sid(service: str) -> str:
    return f"spiffe://example.org/ns/shop/svc/{service}"


def _lines(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _stop_kept(work: Path, pids: dict[str, int]) -> None:
    """SIGTERM the processes `--keep` left running (only those whose cwd is our work dir)."""
    ours = []
    for pid in pids.values():
        try:
            if Path(os.readlink(f"/proc/{pid}/cwd")) == work:
                os.kill(pid, signal.SIGTERM)
                ours.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    deadline = time.monotonic() + 10
    for pid in ours:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("demo") / "work"
    venv = installed_venv(tmp_path_factory.mktemp("demo-venv") / "venv")
    done = subprocess.run(
        ["bash", str(DEMO), "--keep", "--work", str(work), "--color", "never"],
        cwd=ROOT,
        env={**os.environ, "MESHGATE_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    try:
        assert done.returncode == 0, f"demo exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        yield {**report, "stdout": done.stdout}
    finally:
        _stop_kept(work.resolve(), {**report.get("pids", {}), **_stop_script_pids(work)})


def _stop_script_pids(work: Path) -> dict[str, int]:
    """The pids stop.sh kills: the report's, and those started after it (the dashboard)."""
    stop = work / "stop.sh"
    if not stop.exists():
        return {}
    kill = next(line for line in stop.read_text().splitlines() if line.startswith("kill "))
    return {f"stop.sh {pid}": int(pid) for pid in kill.split()[1:]}


def _metrics(report: dict[str, Any], service: str) -> dict[tuple[str, frozenset[Any]], float]:
    url = f"http://127.0.0.1:{report['services'][service]['admin_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(metrics: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


def test_every_step_behaved_and_the_output_says_so(demo: dict[str, Any]) -> None:
    assert demo["ok"] is True
    assert [s["number"] for s in demo["steps"]] == list(range(1, 11))
    assert all(s["ok"] for s in demo["steps"]), demo["steps"]
    assert "All 10 steps behaved as described" in demo["stdout"]
    for n in range(1, 11):
        assert f"[{n}/10]" in demo["stdout"]
    assert "caller → callee" in demo["stdout"]
    assert "/metrics" in demo["stdout"]
    assert "curl -s -X DELETE" in demo["stdout"]  # --keep prints how to poke the mesh


def test_the_report_matches_the_requests_sent_and_the_access_logs(demo: dict[str, Any]) -> None:
    services = demo["services"]
    inbound = {
        name: [
            line for line in _lines(services[name]["access_log"]) if line["direction"] == "inbound"
        ]
        for name in SERVICES
    }
    by_id = {(name, line["request_id"]): line for name in SERVICES for line in inbound[name]}
    # Every request the client sent got the status the demo expected, and the inbound sidecar
    # of the service web called logged the same status with a matching decision.
    callee = {"/pay": "payments"}
    for sent in demo["requests"]:
        assert sent["status"] == sent["expect"], sent
        line = by_id[(callee.get(sent["path"], "orders"), sent["request_id"])]
        assert line["status"] == sent["status"]
        assert line["decision"] == ("allow" if sent["status"] < 400 else "deny")
        assert line["peer_id"] == _sid("web")
    sent = {(s["method"], s["path"], s["status"]) for s in demo["requests"]}
    assert {
        ("GET", "/orders/42", 200),
        ("POST", "/checkout", 200),
        ("DELETE", "/orders/42", 403),
        ("POST", "/pay", 403),
        ("GET", "/stats", 403),
        ("GET", "/stats", 200),
    } <= sent

    # The summary table is exactly the inbound access logs, grouped (plus two TLS refusals).
    expected: Counter[tuple[str, ...]] = Counter()
    for name in SERVICES:
        for line in inbound[name]:
            caller = line["peer_id"].rsplit("/", 1)[1]
            policies = ", ".join(line["policies"]) or "-"
            key = (caller, name, line["method"], line["path"], str(line["status"]))
            expected[(*key, line["decision"], policies)] += 1
    table: Counter[tuple[str, ...]] = Counter()
    for row in demo["summary"]:
        key = (row["caller"], row["callee"], row["method"], row["path"], row["status"])
        table[(*key, row["decision"], row["policies"])] += row["count"]
    refused = {k: v for k, v in table.items() if k[5] in ("tls-refused", "revoked")}
    assert {k[0] for k in refused} == {"client (no certificate)", "web (revoked copy)"}
    assert {k: v for k, v in table.items() if k not in refused} == dict(expected)
    assert expected[("web", "orders", "DELETE", "/orders/42", "403", "deny", "no-delete")] == 1
    assert expected[("web", "payments", "POST", "/charge", "403", "deny", "-")] == 1
    assert expected[("web", "orders", "GET", "/stats", "200", "allow", "web-reads-order-stats")]
    charges = expected[("orders", "payments", "POST", "/charge", "200", "allow",
                        "orders-charges-payments")]  # fmt: skip
    assert charges == expected[("web", "orders", "POST", "/orders", "200", "allow",
                                "web-creates-orders")]  # fmt: skip
    assert charges >= 2

    # Traffic kept flowing across a rotation of every SVID.
    assert demo["background"]["sent"] > 10
    assert demo["background"]["failed"] == 0, demo["background"]["failures"]
    for name in SERVICES:
        assert len(services[name]["serials"]) >= 2, name


def test_access_log_lines_parse_as_json_with_the_issue_fields(demo: dict[str, Any]) -> None:
    for name in SERVICES:
        lines = _lines(demo["services"][name]["access_log"])
        assert lines, name
        for line in lines:
            for key, kind in ACCESS_FIELDS.items():
                assert isinstance(line.get(key), kind), (name, key, line)
            assert line["direction"] in ("inbound", "outbound")
            assert line["peer_id"].startswith("spiffe://example.org/ns/shop/svc/")
            assert line["path"].startswith("/")


def test_traceparent_sent_by_the_client_survives_two_hops(demo: dict[str, Any]) -> None:
    trace = demo["trace"]
    trace_id = trace["sent"].split("-")[1]
    payments_app = [
        line
        for line in _lines(demo["services"]["payments"]["app_log"])
        if line["x-request-id"] == trace["request_id"]
    ]
    assert len(payments_app) == 1
    assert payments_app[0]["traceparent"].split("-")[1] == trace_id
    assert payments_app[0]["xfcc"].endswith(f"URI={_sid('orders')}")
    # Both sidecar hops logged it under the same request id and trace.
    for name in ("orders", "payments"):
        hops = [
            line
            for line in _lines(demo["services"][name]["access_log"])
            if line["request_id"] == trace["request_id"] and line["direction"] == "inbound"
        ]
        assert len(hops) == 1, name
        assert hops[0]["traceparent"].split("-")[1] == trace_id


def test_metrics_after_demo_traffic_count_what_the_access_logs_show(
    demo: dict[str, Any],
) -> None:
    for name in SERVICES:
        metrics = _metrics(demo, name)
        lines = _lines(demo["services"][name]["access_log"])
        inbound = [line for line in lines if line["direction"] == "inbound"]
        requests = "meshgate_requests_total"
        assert _sum(metrics, requests, direction="inbound") == len(inbound), name
        for decision in ("allow", "deny"):
            logged = sum(1 for line in inbound if line["decision"] == decision)
            assert _sum(metrics, requests, direction="inbound", decision=decision) == logged
        outbound = [line for line in lines if line["direction"] == "outbound"]
        assert _sum(metrics, requests, direction="outbound") == len(outbound), name
        assert _sum(metrics, "meshgate_certificate_rotations_total", result="ok") >= 2
        assert _sum(metrics, "meshgate_certificate_expiry_timestamp_seconds") > time.time()
        # Central policies, need to know: only orders' slice changed with the live edit.
        loads = 2 if name == "orders" else 1
        assert _sum(metrics, "meshgate_policy_reloads_total", result="loaded") >= loads, name

    orders = _metrics(demo, "orders")
    decisions = "meshgate_authz_decisions_total"
    assert _sum(orders, decisions, result="deny", policy="no-delete") == 1
    assert _sum(orders, decisions, result="allow", policy="web-reads-order-stats") == 1
    assert _sum(orders, decisions, result="allow", policy="web-reads-orders") >= 2
    failed = "meshgate_tls_handshakes_total"
    assert _sum(orders, failed, result="failed", reason="no_client_cert") >= 1
    assert _sum(orders, failed, direction="inbound", result="ok") >= 1
    payments = _metrics(demo, "payments")
    assert _sum(payments, decisions, result="deny", policy="") == 1  # web → payments
    denials = "meshgate_denials_total"  # the same denial, per edge: no policy permitted it
    web_payments = {"source_service": "web", "destination_service": "payments"}
    assert _sum(payments, denials, **web_payments, decision="deny", policy="none") == 1
    assert _sum(orders, denials, source_service="web", policy="no-delete") == 1
    requests_from_orders = _sum(
        payments,
        "meshgate_requests_total",
        direction="inbound",
        source_service="orders",
        destination_service="payments",
        method="POST",
        status="200",
        status_class="2xx",
        decision="allow",
    )
    assert requests_from_orders == _sum(
        payments, decisions, result="allow", policy="orders-charges-payments"
    )
    assert requests_from_orders >= 2


# The dashboard (`mesh-ca dashboard`, started by `--keep`), as a person sees it in a browser.


def _mesh_json(url: str, window: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}api/mesh?window={window}", timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def _edge(mesh: dict[str, Any], source: str, destination: str) -> dict[str, Any]:
    return next(
        e for e in mesh["edges"] if (e["source"], e["destination"]) == (source, destination)
    )


def _until(what: str, check: Callable[[], _T | None], seconds: float = 60) -> _T:
    """`check()` once it returns something, polled; fails naming `what` after `seconds`
    (generous: reports reach the CA every few seconds, and a loaded machine slows both the
    sidecars' pushes and the page's refreshes; a success returns at once)."""
    deadline = time.monotonic() + seconds
    while (value := check()) is None:
        assert time.monotonic() < deadline, f"not seen within {seconds:.0f} s: {what}"
        time.sleep(0.2)
    return value


def _shows(text: str, value: float, digits: int) -> bool:
    """`text` is `value` rounded to `digits` decimals by the page. Compared as numbers: the
    page rounds with JavaScript's `toFixed` (a tie goes up: 4.125 → "4.13"), Python's format
    to even ("4.12"), so a p99 that lands on a tie would never match as text."""
    return abs(float(text) - value) <= 0.5 * 10.0**-digits + 1e-9


def test_the_dashboard_draws_the_mesh_its_numbers_and_a_new_denial_in_a_real_browser(
    demo: dict[str, Any], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests.integration.dashboard_browser import chromium, page_state

    url = re.search(r"Dashboard: (http://\S+/)", demo["stdout"])
    assert url is not None, demo["stdout"][-2000:]
    dashboard = url.group(1)
    # A denial made now: a DELETE through web, which the `no-delete` policy forbids at orders.
    path = f"/orders/{secrets.randbelow(10**9)}"
    web = demo["services"]["web"]["app_port"]
    request = urllib.request.Request(f"http://127.0.0.1:{web}{path}", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # web relays the 403 its call to orders got
    assert refused.value.code == 403

    with chromium(tmp_path / "profile") as browser:
        browser.get(dashboard)
        Select(browser.find_element(By.ID, "window")).select_by_value("15m")

        # The three services and the two edges with traffic are drawn.
        def drawn() -> dict[str, Any] | None:
            state = page_state(browser)
            busy = {(e["source"], e["destination"]) for e in state["edges"] if not e["idle"]}
            want = {("web", "orders"), ("orders", "payments")}
            ok = {"web", "orders", "payments"} <= set(state["nodes"]) and want <= busy
            return state if ok and state["shown_window"] == "15m" else None

        _until("web, orders, payments and their two edges in the graph", drawn)

        # The denial appears, with the policy that decided it and the command to replay it.
        def denial() -> list[str] | None:
            rows = page_state(browser)["tables"]["denials"]
            return next((cells for cells in rows if path in cells), None)

        cells = _until(f"the denial of DELETE {path}", denial)
        assert cells[2] == "DELETE", cells
        assert "no-delete" in cells[6], cells
        assert "mesh-sidecar policy explain" in cells[7], cells
        assert path in cells[7], cells

        # web → orders in the edge table and on the graph agrees with the JSON API.
        def agrees() -> tuple[dict[str, Any], dict[str, Any]] | None:
            state = page_state(browser)
            if state["shown_window"] != "15m":
                return None
            api = _edge(_mesh_json(dashboard, "15m"), "web", "orders")
            row = next(r for r in state["tables"]["edges"] if r[:2] == ["web", "orders"])
            edge = next(
                e for e in state["edges"] if (e["source"], e["destination"]) == ("web", "orders")
            )
            p99 = api["latency_ms"]["p99"]
            label = re.search(r"p99 ([0-9.]+) ms", edge["label"])
            same = (
                row[6] == str(api["requests"])
                and _shows(row[5], p99, 2)
                and row[7] == str(api["denials"])
                and edge["requests"] == str(api["requests"])
                and label is not None
                and _shows(label.group(1), p99, 1)
            )
            return (state, api) if same else None

        _, api = _until("the web → orders row and arrow to match /api/mesh", agrees)
        assert api["denials"] >= 1, api

        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if target := os.environ.get("MESHGATE_DASHBOARD_SCREENSHOT"):
            Path(target).write_bytes(shot.read_bytes())
        # Nothing the page loads is refused (its CSP) and no script failed.
        log: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
        errors = [e for e in log if e["level"] == "SEVERE"]
        assert errors == [], errors


def test_the_dashboard_refuses_a_host_that_is_not_its_own(demo: dict[str, Any]) -> None:
    url = re.search(r"Dashboard: http://(\S+)/", demo["stdout"])
    assert url is not None
    host, port = url.group(1).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        # A page on another name resolving here (DNS rebinding) sends its own name as Host.
        raw.sendall(b"GET /api/mesh HTTP/1.1\r\nhost: attacker.example:%s\r\n\r\n" % port.encode())
        answer = raw.recv(65536)
    assert answer.startswith(b"HTTP/1.1 421 "), answer[:200]


def test_orders_scaled_to_three_and_back_with_every_instance_serving_and_no_failure(
    demo: dict[str, Any],
) -> None:
    assert demo["scaling"]["sent"] > 0
    assert demo["scaling"]["failures"] == []
    extras = demo["instances"]
    assert sorted(extras) == ["orders-2", "orders-3"]
    for name, instance in extras.items():
        served = [line for line in _lines(instance["access_log"]) if line["direction"] == "inbound"]
        assert served, f"{name} never served"
        assert all(line["status"] == 200 for line in served), name
        log = Path(instance["sidecar_log"]).read_text()
        assert "registered" in log
        assert "deregistered" in log, name
