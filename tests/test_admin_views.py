"""Admin views: the documented JSON of each endpoint, from real stores (pure `respond`)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import SidecarConfig, parse_config
from sidecar.identity.credentials import CredentialStore, Revocations
from sidecar.identity.stats import Blocked, IdentityStats
from sidecar.observe.admin import ENDPOINTS, AdminResponse, AdminState, respond
from sidecar.observe.metrics import SidecarMetrics
from sidecar.policy import PolicyStore, ReloadOutcome
from tests.pki import TestPki as Pki
from tests.sidecar_helpers import bundle_with_intermediates, store_for

POLICIES = Path(__file__).resolve().parent.parent / "policies"
TOKEN_SECRET = "tok.s3cr3t-value-never-shown"


@pytest.fixture
def pki() -> Pki:
    return Pki()


def _config(tmp_path: Path, pki: Pki, *, policy: bool = False) -> SidecarConfig:
    token = tmp_path / "join.token"
    token.write_text(TOKEN_SECRET)
    data: dict[str, Any] = {
        "identity": {
            "spiffe_id": str(pki.spiffe_id("shop", "orders")),
            "bundle_file": "bundle.pem",
            "ca_addresses": ["127.0.0.1:8443"],
            "state_dir": "state",
            "token_file": "join.token",
        },
        "outbound": [
            {
                "listen": "127.0.0.1:15001",
                "service": "payments",
                "endpoints": ["127.0.0.1:16001", "127.0.0.1:16002"],
                "spiffe_ids": [str(pki.spiffe_id("shop", "payments"))],
            }
        ],
        "admin": {"listen": "127.0.0.1:15000"},
    }
    if policy:
        data["policy"] = {"dir": "policies", "audit": True}
    return parse_config(data, source="orders.toml", base=tmp_path)


def _state(
    tmp_path: Path, pki: Pki, store: CredentialStore | None = None, **extra: Any
) -> AdminState:
    config = _config(tmp_path, pki, policy=extra.get("policies") is not None)
    return AdminState(config, store or CredentialStore(), lambda: pki.now, lambda: None, **extra)


def _get(state: AdminState, path: str) -> tuple[int, Any]:
    response = respond("GET", path, state)
    assert response.content_type == "application/json"
    return response.status, response.decoded()


def _loaded_store(pki: Pki) -> CredentialStore:
    leaf = pki.leaf(pki.spiffe_id("shop", "orders"))
    return store_for(leaf, bundle_with_intermediates(pki), pki.now)


def test_index_lists_every_endpoint(tmp_path: Path, pki: Pki) -> None:
    status, body = _get(_state(tmp_path, pki), "/")
    assert status == 200
    assert set(body["endpoints"]) == set(ENDPOINTS)
    assert {"/metrics", "/certificate", "/policies", "/config", "/upstreams"} <= set(ENDPOINTS)
    for path in ENDPOINTS:  # every listed endpoint exists (none answers 404)
        assert respond("GET", path, _state(tmp_path, pki)).status != 404


def test_certificate_shows_svid_rotation_results_and_last_error(tmp_path: Path, pki: Pki) -> None:
    stats = IdentityStats()
    stats.count("bootstrap", "ok")
    stats.count("rotation", "ok")
    stats.count("rotation", "ok")
    stats.error("rotation", "ca_unavailable", "connection refused", pki.now)
    stats.next_rotation_at = pki.now + timedelta(minutes=30)
    store = _loaded_store(pki)
    status, body = _get(_state(tmp_path, pki, store, identity_stats=stats), "/certificate")
    assert status == 200
    current = store.current
    assert current is not None
    assert body["spiffe_id"] == "spiffe://example.org/ns/shop/svc/orders"
    assert body["serial"] == f"{current.serial:x}"
    assert datetime.fromisoformat(body["not_after"]) == current.not_after
    assert body["expired"] is False
    assert body["next_rotation"] == (pki.now + timedelta(minutes=30)).isoformat()
    assert body["rotations"] == {"ok": 2, "ca_unavailable": 1}
    assert body["bootstraps"] == {"ok": 1}
    assert body["last_error"] == "rotation: connection refused"
    assert body["last_error_at"] == pki.now.isoformat()
    assert body["source"] == "mesh CA"


def test_certificate_before_any_svid_is_503_with_what_the_attempts_said(
    tmp_path: Path, pki: Pki
) -> None:
    assert _get(_state(tmp_path, pki), "/certificate") == (
        503,
        {
            "error": "no SVID loaded yet",
            "bootstraps": {},
            "last_error": None,
            "last_error_at": None,
        },
    )
    stats = IdentityStats()
    stats.error("bootstrap", "ca_unavailable", "connection refused", pki.now)
    status, body = _get(_state(tmp_path, pki, identity_stats=stats), "/certificate")
    assert status == 503
    assert body["bootstraps"] == {"ca_unavailable": 1}
    assert body["last_error"] == "bootstrap: connection refused"


def test_last_error_clears_when_the_same_kind_succeeds(pki: Pki) -> None:
    stats = IdentityStats()
    stats.error("bootstrap", "ca_unavailable", "connection refused", pki.now)
    stats.error("poll", "ca_unavailable", "timeout", pki.now - timedelta(seconds=5))
    assert stats.last_error == "bootstrap: connection refused"
    stats.ok("bootstrap")
    assert stats.last_error == "poll: timeout"  # a poll error still holds
    stats.ok("poll")
    assert stats.last_error is None
    assert stats.last_error_at is None
    assert stats.results("bootstrap") == {"ca_unavailable": 1, "ok": 1}


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("nothing", "starting"),
        ("blocked", "token_wrong_id"),
        ("expired", "svid_expired"),
        ("id_revoked", "own_id_revoked"),
        ("serial_revoked", "own_id_revoked"),
        ("persist", "persist_failed"),
        ("workers", "workers_starting"),
        ("ok", "ready"),
    ],
)
def test_readyz_names_the_reason_with_a_stable_code(
    tmp_path: Path, pki: Pki, setup: str, code: str
) -> None:
    stats = IdentityStats()
    store = CredentialStore() if setup in ("nothing", "blocked") else _loaded_store(pki)
    now = pki.now
    extra: dict[str, Any] = {}
    if setup == "blocked":
        stats.blocked = Blocked("token_wrong_id", "the token is for another ID")
    current = store.current
    if setup == "expired":
        assert current is not None
        now = current.not_after + timedelta(seconds=1)
    elif setup == "id_revoked":
        assert current is not None
        store.publish_revocations(Revocations(spiffe_ids=frozenset({current.spiffe_id})))
    elif setup == "serial_revoked":
        assert current is not None
        store.publish_revocations(Revocations(serials=frozenset({current.serial})))
    elif setup == "persist":
        stats.persist_error = "cannot save the SVID to identity.state_dir /x: read-only"
    elif setup == "workers":
        extra["serving"] = lambda: "1 of 2 workers ready"
    config = _config(tmp_path, pki, policy=False)
    state = AdminState(config, store, lambda: now, lambda: None, identity_stats=stats, **extra)
    status, body = _get(state, "/readyz")
    assert (status, body["code"], body["ready"]) == (
        200 if code == "ready" else 503,
        code,
        code == "ready",
    )
    if setup == "blocked":
        assert body["reason"] == "no SVID yet: the token is for another ID"
    if setup == "persist":
        assert "identity.state_dir" in body["reason"]


def test_policies_not_configured(tmp_path: Path, pki: Pki) -> None:
    status, body = _get(_state(tmp_path, pki), "/policies")
    assert status == 200
    assert body["configured"] is False
    assert body["status"] == "not configured"


def test_policies_show_version_files_and_last_reload_error(tmp_path: Path, pki: Pki) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    policies = PolicyStore()
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    assert policies.try_reload(directory, t0) is ReloadOutcome.LOADED
    state = _state(tmp_path, pki, _loaded_store(pki), policies=policies)
    status, body = _get(state, "/policies")
    assert status == 200
    current = policies.current
    assert current is not None
    assert body["configured"] is True
    assert body["loaded"] is True
    assert body["audit"] is True
    assert body["version"] == current.version
    assert body["files"] == list(current.files)
    assert body["loaded_at"] == t0.isoformat()
    assert body["headers_read"] == sorted(current.header_names)
    assert body["last_reload_error"] is None
    (directory / "shop.cedar").write_text("permit(principal,action,resource) when { nope };")
    assert policies.try_reload(directory, t0 + timedelta(seconds=5)) is ReloadOutcome.FAILED
    status, body = _get(state, "/policies")
    assert body["version"] == current.version, "the last good set stays"
    error = body["last_reload_error"]
    assert error["file"].endswith("shop.cedar")
    assert error["problems"]
    assert body["reloads"]["failed"] == 1


def test_readyz_waits_for_a_policy_set_when_one_is_configured(tmp_path: Path, pki: Pki) -> None:
    state = _state(tmp_path, pki, _loaded_store(pki), policies=PolicyStore())
    assert _get(state, "/readyz") == (
        503,
        {"ready": False, "reason": "no policy set loaded yet", "code": "no_policy_set"},
    )
    assert _get(_state(tmp_path, pki, _loaded_store(pki)), "/readyz")[0] == 200


def test_config_shows_the_token_path_never_its_contents(tmp_path: Path, pki: Pki) -> None:
    response = respond("GET", "/config", _state(tmp_path, pki))
    assert response.status == 200
    assert TOKEN_SECRET.encode() not in response.body
    body = response.decoded()
    assert body["identity"]["token_file"] == str(tmp_path / "join.token")
    assert body["log"] == {"access_log": "stdout", "format": "auto", "level": "info"}
    assert body["outbound"][0]["endpoints"] == ["127.0.0.1:16001", "127.0.0.1:16002"]


def test_upstreams_from_config_until_a_pool_reports(tmp_path: Path, pki: Pki) -> None:
    status, body = _get(_state(tmp_path, pki), "/upstreams")
    assert status == 200
    assert body["source"] == "config"
    (service,) = body["upstreams"]
    assert service["service"] == "payments"
    assert service["endpoints"] == [
        {"address": "127.0.0.1:16001", "health": "unknown"},
        {"address": "127.0.0.1:16002", "health": "unknown"},
    ]
    report = [{"service": "payments", "endpoints": [{"address": "x", "health": "up"}]}]
    status, body = _get(_state(tmp_path, pki, upstreams=lambda: report), "/upstreams")
    assert body == {"source": "pool", "upstreams": report}


def test_metrics_is_prometheus_text(tmp_path: Path, pki: Pki) -> None:
    metrics = SidecarMetrics()
    store = _loaded_store(pki)
    metrics.watch_credentials(store)
    response = respond("GET", "/metrics", _state(tmp_path, pki, store, metrics=metrics))
    assert response.status == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
    (expiry,) = families["meshgate_certificate_expiry_timestamp_seconds"].samples
    current = store.current
    assert current is not None
    assert expiry.value == current.not_after.timestamp()


def test_unknown_paths_and_methods(tmp_path: Path, pki: Pki) -> None:
    state = _state(tmp_path, pki)
    status, body = _get(state, "/nope")
    assert status == 404
    assert "/metrics" in body["endpoints"]
    assert respond("POST", "/config", state).status == 405
    assert isinstance(respond("HEAD", "/healthz", state), AdminResponse)
