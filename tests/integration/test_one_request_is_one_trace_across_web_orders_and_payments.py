"""Tracing across the demo chain: client → web app → web sidecar ══▶ orders sidecar → orders
app → orders sidecar ══▶ payments sidecar → payments app, three real sidecars with
``[tracing]`` pointed at a small OTLP/HTTP receiver that decodes the official protobufs.

One request is one trace: every hop's span carries the client's trace id, and each span's
parent is the hop before it (web's client span → orders' server span → orders' client span,
reached because the orders app passes on the traceparent it got → payments' server span).
The payments app gets a traceparent naming the payments sidecar's span; tracestate passes
through untouched. A request with a malformed traceparent starts a fresh trace, and the
malformed value goes no further. A denied request's server span names the deciding policy.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.observe.tracing import TraceParent
from tests.integration.otlp_receiver import ReceivedSpan, otlp_receiver
from tests.pki import TestPki as Pki
from tests.procs import ROOT, free_port, running_sidecar, write_config, write_identity

pytestmark = pytest.mark.integration

DEMO_APPS = ROOT / "scripts" / "demo" / "demo_services.py"
TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@contextmanager
def _app(name: str, port: int, log: Path, upstreams: dict[str, int]) -> Iterator[None]:
    """One demo shop app (it passes traceparent, tracestate and x-request-id on)."""
    argv = [sys.executable, str(DEMO_APPS), "--name", name, "--port", str(port), "--log", str(log)]
    for service, upstream in upstreams.items():
        argv += ["--upstream", f"{service}=127.0.0.1:{upstream}"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} app did not start") from None
                time.sleep(0.05)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _request(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _received(log: Path, request_id: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    (line,) = [line for line in lines if line.get("x-request-id") == request_id]
    assert isinstance(line, dict)
    return line


def _hops(spans: list[ReceivedSpan], request_id: str) -> dict[tuple[str, Any], ReceivedSpan]:
    """This request's spans by (service, kind)."""
    mine = [s for s in spans if s.attributes.get("meshgate.request_id") == request_id]
    hops = {(s.service, s.span.kind): s for s in mine}
    assert len(hops) == len(mine), [(s.service, s.span.kind) for s in mine]
    return hops


WEB_OUT = ("web", Span.SPAN_KIND_CLIENT)
ORDERS_IN = ("orders", Span.SPAN_KIND_SERVER)
ORDERS_OUT = ("orders", Span.SPAN_KIND_CLIENT)
PAYMENTS_IN = ("payments", Span.SPAN_KIND_SERVER)


def test_one_request_is_one_trace_across_web_orders_and_payments(tmp_path: Path) -> None:
    pki = Pki()
    ids = {name: pki.spiffe_id("shop", name) for name in ("web", "orders", "payments")}
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    port = {
        key: free_port()
        for key in (
            "web_app",
            "orders_app",
            "payments_app",
            "web_to_orders",
            "orders_in",
            "orders_to_payments",
            "payments_in",
            "web_admin",
            "orders_admin",
            "payments_admin",
        )
    }
    logs = {name: tmp_path / f"{name}-app.jsonl" for name in ids}
    with otlp_receiver() as receiver, ExitStack() as stack:
        tracing = {"endpoint": receiver.endpoint, "export_delay_seconds": 0.2}

        def identity(name: str) -> dict[str, Any]:
            files = write_identity(pki, pki.leaf(ids[name]), tmp_path / name)
            return {"spiffe_id": str(ids[name]), **files}

        def outbound(listen: int, service: str, endpoint: int) -> dict[str, Any]:
            return {
                "listen": f"127.0.0.1:{listen}",
                "service": service,
                "endpoints": [f"127.0.0.1:{endpoint}"],
                "spiffe_ids": [str(ids[service])],
                "protocol": "http",
            }

        def inbound(name: str, listen: int, app: int) -> dict[str, Any]:
            return {
                "listen": f"127.0.0.1:{listen}",
                "app": f"127.0.0.1:{app}",
                "service": name,
                "protocol": "http",
            }

        configs: dict[str, dict[str, Any]] = {
            "payments": {
                "identity": identity("payments"),
                "inbound": inbound("payments", port["payments_in"], port["payments_app"]),
                "policy": {"dir": str(policies)},
                "admin": {"listen": f"127.0.0.1:{port['payments_admin']}"},
                "tracing": tracing,
            },
            "orders": {
                "identity": identity("orders"),
                "inbound": inbound("orders", port["orders_in"], port["orders_app"]),
                "outbound": [outbound(port["orders_to_payments"], "payments", port["payments_in"])],
                "policy": {"dir": str(policies)},
                "admin": {"listen": f"127.0.0.1:{port['orders_admin']}"},
                "tracing": tracing,
            },
            "web": {
                "identity": identity("web"),
                "outbound": [outbound(port["web_to_orders"], "orders", port["orders_in"])],
                "admin": {"listen": f"127.0.0.1:{port['web_admin']}"},
                "tracing": tracing,
            },
        }
        stack.enter_context(_app("payments", port["payments_app"], logs["payments"], {}))
        stack.enter_context(
            _app(
                "orders",
                port["orders_app"],
                logs["orders"],
                {"payments": port["orders_to_payments"]},
            )
        )
        stack.enter_context(
            _app("web", port["web_app"], logs["web"], {"orders": port["web_to_orders"]})
        )
        for name, config in configs.items():
            path = write_config(tmp_path / f"{name}.toml", config)
            stack.enter_context(running_sidecar(path, port[f"{name}_admin"]))

        # 1. A traced request: the client's trace is continued at every hop.
        incoming = f"00-{TRACE}-{CLIENT_SPAN}-01"
        sent = {"traceparent": incoming, "tracestate": "shop=1,vendor=x", "x-request-id": "t-1"}
        assert _request(port["web_app"], "POST", "/checkout", sent) == 200
        spans = receiver.wait_for(lambda got: len(_hops(got, "t-1")) == 4)
        hops = _hops(spans, "t-1")
        assert set(hops) == {WEB_OUT, ORDERS_IN, ORDERS_OUT, PAYMENTS_IN}
        assert {hop.trace_id for hop in hops.values()} == {TRACE}
        assert hops[WEB_OUT].parent_id == CLIENT_SPAN
        assert hops[ORDERS_IN].parent_id == hops[WEB_OUT].span_id
        assert hops[ORDERS_OUT].parent_id == hops[ORDERS_IN].span_id
        assert hops[PAYMENTS_IN].parent_id == hops[ORDERS_OUT].span_id
        assert {hop.span.trace_state for hop in hops.values()} == {"shop=1,vendor=x"}

        orders_in = hops[ORDERS_IN].attributes
        assert orders_in["http.request.method"] == "POST"
        assert orders_in["url.path"] == "/orders"
        assert orders_in["http.response.status_code"] == 200
        assert orders_in["meshgate.direction"] == "inbound"
        assert orders_in["meshgate.peer.spiffe_id"] == str(ids["web"])
        assert orders_in["meshgate.decision"] == "allow"
        assert orders_in["meshgate.policy_ids"] == ("web-creates-orders",)
        payments_in = hops[PAYMENTS_IN].attributes
        assert payments_in["url.path"] == "/charge"
        assert payments_in["meshgate.peer.spiffe_id"] == str(ids["orders"])
        assert payments_in["meshgate.policy_ids"] == ("orders-charges-payments",)
        web_out = hops[WEB_OUT].attributes
        assert web_out["meshgate.direction"] == "outbound"
        assert web_out["meshgate.peer.spiffe_id"] == str(ids["orders"])
        assert web_out["http.response.status_code"] == 200
        assert web_out["meshgate.decision"] == "none"  # outbound decides nothing

        # Each app got a traceparent naming the span of its own inbound sidecar.
        got = _received(logs["payments"], "t-1")
        assert got["traceparent"] == f"00-{TRACE}-{hops[PAYMENTS_IN].span_id}-01"
        assert got["tracestate"] == "shop=1,vendor=x"
        assert _received(logs["orders"], "t-1")["traceparent"] == (
            f"00-{TRACE}-{hops[ORDERS_IN].span_id}-01"
        )

        # 2. A malformed traceparent is replaced by a fresh trace, never sent on.
        malformed = f"00-{TRACE}-{CLIENT_SPAN}-1"  # one flags digit short
        sent = {"traceparent": malformed, "tracestate": "shop=2", "x-request-id": "t-2"}
        assert _request(port["web_app"], "POST", "/checkout", sent) == 200
        spans = receiver.wait_for(lambda got: len(_hops(got, "t-2")) == 4)
        hops = _hops(spans, "t-2")
        fresh = {hop.trace_id for hop in hops.values()}
        assert len(fresh) == 1
        assert fresh != {TRACE}
        assert hops[WEB_OUT].parent_id == ""  # a root span: the trace starts at web's sidecar
        assert hops[PAYMENTS_IN].parent_id == hops[ORDERS_OUT].span_id
        assert {hop.span.trace_state for hop in hops.values()} == {""}
        orders_got = _received(logs["orders"], "t-2")
        parent = TraceParent.parse(orders_got["traceparent"])
        assert parent is not None
        assert f"{parent.trace_id:032x}" == fresh.pop()
        assert f"{parent.span_id:016x}" == hops[ORDERS_IN].span_id
        assert parent.sampled  # (newer SDKs also set the W3C "random trace id" flag)
        assert orders_got["tracestate"] is None  # it belonged to the dropped traceparent
        assert malformed not in (logs["payments"].read_text() + logs["orders"].read_text())

        # 3. A denied hop is a span too, naming the policy that decided (no-delete).
        sent = {"traceparent": incoming, "x-request-id": "t-3"}
        assert _request(port["web_app"], "DELETE", "/orders/42", sent) == 403
        spans = receiver.wait_for(lambda got: len(_hops(got, "t-3")) == 2)
        hops = _hops(spans, "t-3")
        assert set(hops) == {WEB_OUT, ORDERS_IN}
        assert hops[ORDERS_IN].parent_id == hops[WEB_OUT].span_id
        denied = hops[ORDERS_IN].attributes
        assert denied["meshgate.decision"] == "deny"
        assert denied["meshgate.policy_ids"] == ("no-delete",)
        assert denied["http.response.status_code"] == 403
        assert hops[ORDERS_IN].span.status.code == hops[ORDERS_IN].span.status.STATUS_CODE_UNSET
        # The client side of a 403 is a failed call.
        assert hops[WEB_OUT].span.status.code == hops[WEB_OUT].span.status.STATUS_CODE_ERROR
