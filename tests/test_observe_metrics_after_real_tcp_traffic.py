"""Scraping /metrics from real sidecars after real tcp traffic shows what happened.

A's outbound → B's inbound → echo app, plus a client without a certificate refused by B.
Both sidecars write their access logs to files; every line parses as JSON.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from meshgate import native
from meshgate.transport.mtls import client_context
from tests.integration.mesh import sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import EchoApp, exchange, running_sidecar

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PAYLOAD = b"x" * 3000


def _fetch(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.headers["content-type"]), bytes(response.read())


def _scrape(port: int) -> Samples:
    content_type, body = _fetch(port, "/metrics")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _no_certificate_client(port: int, pki: Pki) -> None:
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), client_context(pki.bundles)
    )
    with trio.fail_after(10):
        try:
            await stream.do_handshake()
            await stream.send_all(b"let me in")
            assert await stream.receive_some() == b""
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


def _access_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _eventually(check: Any, timeout: float = 10) -> None:
    """The last connection's record is written just after the client sees EOF."""
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(check):
            await trio.sleep(0.05)


async def test_metrics_and_access_log_after_tcp_traffic(tmp_path: Path) -> None:
    pki = Pki()
    app = EchoApp()
    async with trio.open_nursery() as nursery:
        await nursery.start(app.serve)
        pair = sidecar_pair(pki, tmp_path, app.port)
        logs = {"a": tmp_path / "a-access.log", "b": tmp_path / "b-access.log"}
        for config, log in ((pair.a_config, logs["a"]), (pair.b_config, logs["b"])):
            with config.open("a") as f:
                f.write(f'[log]\naccess_log = "{log}"\nformat = "auto"\n')
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin),
        ):
            assert await exchange(pair.a_outbound, PAYLOAD) == PAYLOAD
            await _no_certificate_client(pair.b_inbound, pki)
            await _eventually(lambda: len(_access_lines(logs["b"])) == 2)
            await _eventually(lambda: len(_access_lines(logs["a"])) == 1)
            b, a = _scrape(pair.b_admin), _scrape(pair.a_admin)

            # B: one relayed connection and one refused at the handshake, with its reason.
            inbound = {"direction": "inbound"}
            assert _value(b, "meshgate_connections_total", **inbound) == 2
            assert _value(b, "meshgate_connections_open", **inbound) == 0
            ok = {"direction": "inbound", "result": "ok", "reason": ""}
            assert _value(b, "meshgate_tls_handshakes_total", **ok) == 1
            refused = {"direction": "inbound", "result": "failed", "reason": "no_client_cert"}
            assert _value(b, "meshgate_tls_handshakes_total", **refused) == 1
            # Edges: source from the verified peer ID, destination the configured service.
            edge = {"source_service": "frontend", "destination_service": "orders"}
            received = {"direction": "inbound", "flow": "received", **edge}
            sent = {"direction": "inbound", "flow": "sent", **edge}
            assert _value(b, "meshgate_bytes_total", **received) == len(PAYLOAD)
            assert _value(b, "meshgate_bytes_total", **sent) == len(PAYLOAD)
            allow = {"result": "allow", "policy": "config.inbound.allowed_ids"}
            assert _value(b, "meshgate_authz_decisions_total", **allow) == 1
            request = {
                "direction": "inbound",
                **edge,
                "method": "connect",
                "status": "",
                "status_class": "none",
                "decision": "allow",
            }
            assert _value(b, "meshgate_requests_total", **request) == 1
            timed = {"direction": "inbound", **edge, "method": "connect"}
            assert _value(b, "meshgate_request_duration_seconds_count", **timed) == 1
            failed = {
                "direction": "inbound",
                "source_service": "unknown",  # no verified peer
                "destination_service": "orders",
                "reason": "no_client_cert",
            }
            assert _value(b, "meshgate_handshake_failures_total", **failed) == 1
            leaf = x509.load_pem_x509_certificate((tmp_path / "b" / "svid.pem").read_bytes())
            expiry = _value(b, "meshgate_certificate_expiry_timestamp_seconds")
            assert expiry == leaf.not_valid_after_utc.timestamp()

            # The build of the HTTP core each loaded (the same choice as this process's).
            for samples in (a, b):
                assert _value(samples, "meshgate_build_info", http_core=native.http_build()) == 1

            # A: the outbound side of the same connection.
            outbound = {"direction": "outbound"}
            assert _value(a, "meshgate_connections_total", **outbound) == 1
            ok_out = {"direction": "outbound", "result": "ok", "reason": ""}
            assert _value(a, "meshgate_tls_handshakes_total", **ok_out) == 1
            got = {"direction": "outbound", "flow": "received", **edge}
            assert _value(a, "meshgate_bytes_total", **got) == len(PAYLOAD)

            # Every admin JSON view answers with its content type.
            for path in ("/", "/healthz", "/readyz", "/certificate", "/policies", "/config"):
                content_type, body = _fetch(pair.b_admin, path)
                assert content_type == "application/json", path
                json.loads(body)
            content_type, body = _fetch(pair.a_admin, "/upstreams")
            assert content_type == "application/json"
            (upstream,) = json.loads(body)["upstreams"]
            assert upstream["endpoints"] == [
                {"address": f"127.0.0.1:{pair.b_inbound}", "health": "unknown"}
            ]

        relayed, no_cert = sorted(_access_lines(logs["b"]), key=lambda x: x["reason"] or "")
        assert relayed["peer_id"] == str(pair.a_id)
        assert (relayed["direction"], relayed["protocol"], relayed["method"]) == (
            "inbound",
            "tcp",
            "connect",
        )
        assert (relayed["decision"], relayed["reason"]) == ("allow", None)
        assert relayed["policies"] == ["config.inbound.allowed_ids"]
        assert (relayed["bytes_in"], relayed["bytes_out"]) == (len(PAYLOAD), len(PAYLOAD))
        assert relayed["duration_seconds"] > 0
        assert {"time", "policies", "status", "path", "request_id", "traceparent"} <= set(relayed)
        assert (no_cert["reason"], no_cert["decision"], no_cert["peer_id"]) == (
            "no_client_cert",
            "none",
            None,
        )
        (outbound_line,) = _access_lines(logs["a"])
        assert outbound_line["peer_id"] == str(pair.b_id)
        assert outbound_line["direction"] == "outbound"
        assert outbound_line["endpoint"] == f"127.0.0.1:{pair.b_inbound}"
        nursery.cancel_scope.cancel()
