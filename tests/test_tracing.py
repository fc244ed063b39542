"""W3C trace context on the data path: the pure core (`sidecar.observe.tracing`) and `[tracing]`."""

from __future__ import annotations

import ast
import importlib.util
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from meshgate.exit_codes import ExitCode, StartupError
from meshgate.http.forwarding import forward_request_headers
from meshgate.identity import SpiffeId
from sidecar.config import ConfigError, load_config, parse_config
from sidecar.observe.tracing import (
    TraceParent,
    default_service_name,
    is_error,
    span_attributes,
    trace_headers,
    with_traceparent,
)
from sidecar.preflight import _check_tracing
from tests.procs import ROOT

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-zz-bad-01",
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # hex must be lowercase
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is forbidden
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has no extension
        f" {VALID}",
        f"{VALID}\n",
    ],
)
def test_a_malformed_traceparent_is_not_parsed(value: str) -> None:
    assert TraceParent.parse(value) is None


def test_a_traceparent_parses_and_writes_back_the_same() -> None:
    parsed = TraceParent.parse(VALID)
    assert parsed == TraceParent(int(TRACE, 16), 0x00F067AA0BA902B7, 1)
    assert parsed.sampled
    assert str(parsed) == VALID
    assert not TraceParent(1, 2, 0).sampled
    assert str(TraceParent(1, 2, 0)) == f"00-{1:032x}-{2:016x}-00"


def test_a_later_version_is_read_by_its_version_00_prefix_and_sent_on_as_00() -> None:
    parsed = TraceParent.parse(f"01-{TRACE}-00f067aa0ba902b7-01-whatever-comes-next")
    assert parsed is not None
    assert str(parsed) == VALID


def test_the_trace_context_is_taken_from_what_forwarding_kept() -> None:
    kept = forward_request_headers(
        (("traceparent", VALID), ("tracestate", "a=1"), ("tracestate", "b=2")),
        our_id=None,
        peer=None,
    )
    parent, states = trace_headers(kept.headers)
    assert parent == TraceParent.parse(VALID)
    assert states == ("a=1", "b=2")


def test_a_malformed_traceparent_leaves_no_context_and_takes_its_tracestate_along() -> None:
    dropped = forward_request_headers(
        (("traceparent", "00-zz-bad-01"), ("tracestate", "a=1")), our_id=None, peer=None
    )
    assert trace_headers(dropped.headers) == (None, ())
    assert dropped.traceparent is None


def test_our_traceparent_replaces_the_incoming_one_and_tracestate_stays() -> None:
    kept = forward_request_headers(
        (("host", "orders"), ("traceparent", VALID), ("tracestate", "a=1")),
        our_id=None,
        peer=None,
        new_request_id=lambda: "rid-1",
    )
    ours = TraceParent(int(TRACE, 16), 0x1122334455667788, 1)
    sent = with_traceparent(kept, ours)
    assert sent.traceparent == str(ours)
    assert [v for n, v in sent.headers if n == "traceparent"] == [str(ours)]
    assert ("tracestate", "a=1") in sent.headers
    assert ("host", "orders") in sent.headers
    assert sent.request_id == "rid-1"


def test_a_request_without_traceparent_gets_ours_appended() -> None:
    kept = forward_request_headers((("host", "orders"),), our_id=None, peer=None)
    sent = with_traceparent(kept, TraceParent(5, 6, 1))
    assert sent.headers[-1] == ("traceparent", str(TraceParent(5, 6, 1)))


@pytest.mark.parametrize(
    ("spiffe_id", "name"),
    [
        ("spiffe://example.org/ns/shop/svc/orders", "orders"),
        ("spiffe://example.org/workloads/batch-7", "batch-7"),
        ("spiffe://example.org/svc/payments", "payments"),
    ],
)
def test_the_default_service_name_comes_from_the_spiffe_id(spiffe_id: str, name: str) -> None:
    assert default_service_name(SpiffeId.parse(spiffe_id)) == name


def test_server_spans_fail_on_5xx_and_client_spans_on_4xx_too() -> None:
    assert not is_error("inbound", 403)
    assert is_error("inbound", 502)
    assert is_error("outbound", 403)
    assert not is_error("outbound", 204)
    assert is_error("inbound", None)


def test_span_attributes_name_the_hop_and_leave_out_what_is_unknown() -> None:
    full = span_attributes(
        direction="inbound",
        method="POST",
        service="payments",
        request_id="rid",
        path="/charge",
        status=200,
        peer_id="spiffe://example.org/ns/shop/svc/orders",
        decision="allow",
        policies=("orders-may-charge",),
        reason=None,
    )
    assert full == {
        "http.request.method": "POST",
        "meshgate.direction": "inbound",
        "meshgate.service": "payments",
        "meshgate.request_id": "rid",
        "meshgate.decision": "allow",
        "url.path": "/charge",
        "http.response.status_code": 200,
        "meshgate.peer.spiffe_id": "spiffe://example.org/ns/shop/svc/orders",
        "meshgate.policy_ids": ("orders-may-charge",),
    }
    bare = span_attributes(
        direction="outbound",
        method="GET",
        service="orders",
        request_id="rid",
        path="/",
        status=None,
        peer_id=None,
        decision="none",
        policies=(),
        reason="no_endpoint",
    )
    assert "http.response.status_code" not in bare
    assert "meshgate.peer.spiffe_id" not in bare
    assert bare["meshgate.reason"] == "no_endpoint"


# -- [tracing] in the sidecar config ------------------------------------------------------

BASE = {
    "identity": {
        "spiffe_id": "spiffe://example.org/ns/shop/svc/orders",
        "bundle_file": "/b.pem",
        "cert_file": "/c.pem",
        "key_file": "/k.pem",
    },
    "outbound": [
        {
            "listen": "127.0.0.1:15001",
            "service": "payments",
            "endpoints": ["127.0.0.1:16443"],
            "spiffe_ids": ["spiffe://example.org/ns/shop/svc/payments"],
        }
    ],
}


def _config(tracing: dict[str, object]) -> object:
    return parse_config({**BASE, "tracing": tracing}, source="sidecar.toml").tracing


def test_tracing_is_off_unless_its_section_is_there() -> None:
    assert parse_config(dict(BASE), source="sidecar.toml").tracing is None


def test_a_tracing_section_takes_its_defaults() -> None:
    tracing = parse_config(
        {**BASE, "tracing": {"endpoint": "http://127.0.0.1:4318/v1/traces"}}, source="x"
    ).tracing
    assert tracing is not None
    assert tracing.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert (tracing.service_name, tracing.sample_ratio) == (None, 1.0)
    assert tracing.export_delay_seconds == 5.0


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("https://collector.example/", "https://collector.example/v1/traces"),
        ("http://[::1]:4318/custom/path", "http://[::1]:4318/custom/path"),
    ],
)
def test_an_endpoint_without_a_path_gets_the_standard_one(given: str, used: str) -> None:
    tracing = parse_config({**BASE, "tracing": {"endpoint": given}}, source="x").tracing
    assert tracing is not None
    assert tracing.endpoint == used


@pytest.mark.parametrize(
    ("tracing", "key", "hint"),
    [
        ({}, "tracing.endpoint", "Field required"),
        ({"endpoint": "grpc://collector:4317"}, "tracing.endpoint", "http:// or https://"),
        ({"endpoint": "http://"}, "tracing.endpoint", "with a host"),
        ({"endpoint": "http://u:secret@c:4318"}, "tracing.endpoint", "credentials"),
        ({"endpoint": "http://c:99999/v1/traces"}, "tracing.endpoint", "Port out of range"),
        ({"endpoint": "http://c/v1/traces?x=1"}, "tracing.endpoint", "no query"),
        ({"endpoint": "http://c:4318", "sample_ratio": 1.5}, "tracing.sample_ratio", "1"),
        ({"endpoint": "http://c:4318", "sample_ratio": -0.1}, "tracing.sample_ratio", "0"),
        ({"endpoint": "http://c:4318", "service_name": ""}, "tracing.service_name", "1"),
        ({"endpoint": "http://c:4318", "export_delay_seconds": 0}, "tracing.export_delay", "0"),
        ({"endpoint": "http://c:4318", "exporter": "zipkin"}, "tracing.exporter", "unknown key"),
    ],
)
def test_a_bad_tracing_value_is_an_error_naming_the_key(
    tracing: dict[str, object], key: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _config(tracing)
    message = str(info.value)
    assert key in message
    assert hint in message
    assert "secret" not in message  # a password in the URL is not echoed


def test_tracing_loads_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        "\n".join(
            [
                "[identity]",
                'spiffe_id = "spiffe://example.org/ns/shop/svc/orders"',
                'bundle_file = "b.pem"',
                'cert_file = "c.pem"',
                'key_file = "k.pem"',
                "[[outbound]]",
                'listen = "127.0.0.1:15001"',
                'service = "payments"',
                'endpoints = ["127.0.0.1:16443"]',
                'spiffe_ids = ["spiffe://example.org/ns/shop/svc/payments"]',
                "[tracing]",
                'endpoint = "http://127.0.0.1:4318"',
                'service_name = "orders-eu"',
                "sample_ratio = 0.25",
            ]
        )
    )
    tracing = load_config(path).tracing
    assert tracing is not None
    assert (tracing.service_name, tracing.sample_ratio) == ("orders-eu", 0.25)


def _module_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions): what loading `path` loads."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_sidecar_module_but_the_exporter_loads_opentelemetry_when_tracing_is_off() -> None:
    loaders = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "sidecar").rglob("*.py")
        if any(
            name.startswith("opentelemetry") or name == "sidecar.observe.tracing_otel"
            for name in _module_imports(path)
        )
    }
    assert loaders == {"sidecar/observe/tracing_otel.py"}


def test_tracing_without_the_opentelemetry_packages_is_a_start_up_error_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without_otel(name: str, package: str | None = None) -> ModuleSpec | None:
        if name.startswith("opentelemetry"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_otel)
    with pytest.raises(StartupError) as info:
        _check_tracing("http://127.0.0.1:4318/v1/traces")
    assert str(info.value).startswith("tracing.endpoint = 'http://127.0.0.1:4318/v1/traces': ")
    assert "pip install 'meshgate[tracing]'" in str(info.value)
    assert info.value.code is ExitCode.FAILED
