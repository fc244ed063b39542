"""A real CA server process with a 30-second leaf TTL: /metrics counts what the traffic did."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from mesh_ca.ca_dir import init_ca_dir
from mesh_ca.config import CaConfig, IssuanceConfig, ServerConfig
from mesh_ca.issuance import make_csr
from mesh_ca.tokens import new_token
from meshgate.identity import SpiffeId
from meshgate.keys import generate_key, private_key_pem
from meshgate.transport.mtls import client_context
from tests.ca_server_process import TRUST_DOMAIN, CaServer, https_request, serving_ca_dir

pytestmark = pytest.mark.integration

JSON = [("content-type", "application/json")]
BURST = 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CaServer]:
    config = CaConfig(
        trust_domain=TRUST_DOMAIN,
        issuance=IssuanceConfig(default_ttl_seconds=30, min_ttl_seconds=30),
        server=ServerConfig(rate_limit_per_second=0.001, rate_limit_burst=BURST),
    )
    ca = init_ca_dir(tmp_path / "ca", TRUST_DOMAIN, datetime.now(UTC), config=config)
    with serving_ca_dir(ca, tmp_path / "server.log") as running:
        yield running
    assert running.process.returncode == 0, running.log()


def csr_pem() -> str:
    return make_csr(generate_key()).public_bytes(serialization.Encoding.PEM).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def bootstrap(server: CaServer, token: str, csr: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = json.dumps({"token": token, "csr": csr or csr_pem()}).encode()
    reply = await https_request(server, "POST", "/v1/bootstrap", body, headers=JSON)
    return reply.status, json.loads(reply.body)


async def test_a_ca_configured_for_30_seconds_issues_30_second_svids_and_counts_its_traffic(
    server: CaServer,
) -> None:
    sid = SpiffeId.workload(TRUST_DOMAIN, "demo", "web")
    token = server.token(sid)
    key = generate_key()
    csr = make_csr(key).public_bytes(serialization.Encoding.PEM).decode()
    status, issued = await bootstrap(server, token, csr)
    assert status == 200, issued
    leaf = x509.load_pem_x509_certificates(issued["chain_pem"].encode())[0]
    # 30 s from issuance, NotBefore backdated 10 s.
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(seconds=40)

    assert (await bootstrap(server, token))[1]["error"] == "token_used"
    assert (await bootstrap(server, new_token()[0]))[1]["error"] == "token_unknown"
    assert (await bootstrap(server, "mgt_not-a-token"))[1]["error"] == "token_invalid"
    expired, token_id, secret_hash = new_token()
    store = server.store()
    try:
        past = datetime.now(UTC) - timedelta(hours=2)
        store.add_token(token_id, secret_hash, sid, past, past + timedelta(hours=1))
    finally:
        store.close()
    assert (await bootstrap(server, expired))[1]["error"] == "token_expired"

    chain = issued["chain_pem"].encode()
    mtls = client_context(server.bundles, chain, private_key_pem(key))
    body = json.dumps({"csr": csr_pem()}).encode()
    renewed = await https_request(server, "POST", "/v1/renew", body, headers=JSON, context=mtls)
    assert renewed.status == 200, renewed.body
    over = await https_request(server, "POST", "/v1/renew", body, headers=JSON, context=mtls)
    assert over.status == 429  # the seventh issuance request from this source, burst 6

    reply = await https_request(server, "GET", "/metrics")  # no client certificate
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    text = reply.body.decode()
    assert token not in text
    assert expired not in text
    found = samples(text)

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    issuances = "meshgate_ca_issuances_total"
    assert value(issuances, kind="bootstrap", result="ok") == 1
    assert value(issuances, kind="bootstrap", result="token_used") == 1
    assert value(issuances, kind="bootstrap", result="token_unknown") == 1
    assert value(issuances, kind="bootstrap", result="token_invalid") == 1
    assert value(issuances, kind="bootstrap", result="token_expired") == 1
    assert value(issuances, kind="renew", result="ok") == 1
    assert value(issuances, kind="renew", result="rate_limited") == 1
    assert value(issuances, kind="ca-server", result="ok") == 1
    for reason in ("used", "unknown", "malformed", "expired"):
        assert value("meshgate_ca_token_failures_total", reason=reason) == 1, reason
    assert value("meshgate_ca_rate_limited_requests_total") == 1
    assert value("meshgate_ca_request_duration_seconds_count", endpoint="/v1/bootstrap") == 5
    assert value("meshgate_ca_request_duration_seconds_count", endpoint="/v1/renew") == 2
    assert value("meshgate_ca_store_up") == 1

    expiry = "meshgate_ca_certificate_expiry_timestamp_seconds"
    assert value(expiry, certificate="root") == server.ca.root.not_valid_after_utc.timestamp()
    assert value(expiry, certificate="intermediate") == server.ca.signer.not_after.timestamp()
    store = server.store()
    try:
        [own] = [r for r in store.issued(limit=100) if r.kind == "ca-server"]
    finally:
        store.close()
    assert value(expiry, certificate="server") == own.not_after.timestamp()


async def test_metrics_count_requests_to_unknown_paths_under_one_label(server: CaServer) -> None:
    for path in ("/a", "/b/c", "/v1/bundle"):
        await https_request(server, "GET", path)
    found = samples((await https_request(server, "GET", "/metrics")).body.decode())
    count = "meshgate_ca_request_duration_seconds_count"
    assert found[(count, (("endpoint", "other"),))] == 2
    assert found[(count, (("endpoint", "/v1/bundle"),))] == 1
