"""Cedar behind the tcp path's Authorizer, and the [policy] config rules (fail closed)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshgate.identity import SpiffeId
from sidecar.authz.allow_list import authorize_safely
from sidecar.authz.cedar import CedarAuthorizer, source_ip
from sidecar.config import ConfigError, load_config
from sidecar.policy import PolicyStore, ReloadOutcome

POLICIES = Path(__file__).resolve().parent.parent / "policies"
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
ORDERS = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")
WEB = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")


@pytest.fixture
def store() -> PolicyStore:
    store = PolicyStore()
    assert store.try_reload(POLICIES, T0) is ReloadOutcome.LOADED
    return store


def _connect(
    authorizer: CedarAuthorizer, peer: SpiffeId, source: str
) -> tuple[str, tuple[str, ...]]:
    decision = authorize_safely(
        authorizer, peer, "connect", "ledger", {"source": source, "tls_version": "TLSv1.3"}
    )
    return decision.result, decision.policy_ids


def test_tcp_connect_is_decided_by_cedar_with_the_source_address(store: PolicyStore) -> None:
    cedar = CedarAuthorizer(store, lambda: T0)
    assert _connect(cedar, ORDERS, "127.0.0.1:5000") == ("allow", ("orders-connects-ledger",))
    assert _connect(cedar, ORDERS, "192.0.2.1:5000") == ("deny", ())
    assert _connect(cedar, WEB, "127.0.0.1:5000") == ("deny", ())
    # Not an address: a policy that reads it cannot be satisfied (fails closed).
    assert _connect(cedar, ORDERS, "in-memory") == ("deny", ())


def test_audit_mode_allows_what_would_be_denied_and_says_so(store: PolicyStore) -> None:
    cedar = CedarAuthorizer(store, lambda: T0, audit=True)
    assert _connect(cedar, WEB, "127.0.0.1:5000") == ("audit_deny", ())
    assert _connect(cedar, ORDERS, "127.0.0.1:5000") == ("allow", ("orders-connects-ledger",))


def test_nothing_is_allowed_before_a_set_loads_even_in_audit_mode() -> None:
    cedar = CedarAuthorizer(PolicyStore(), lambda: T0, audit=True)
    assert _connect(cedar, ORDERS, "127.0.0.1:5000") == ("deny", ())


@pytest.mark.parametrize(
    ("source", "ip"),
    [("127.0.0.1:80", "127.0.0.1"), ("[::1]:80", "::1"), ("in-memory", "in-memory")],
)
def test_source_ip(source: str, ip: str) -> None:
    assert source_ip(source) == ip


BASE = """
[identity]
spiffe_id = "spiffe://example.org/ns/shop/svc/orders"
bundle_file = "bundle.pem"
cert_file = "svid.pem"
key_file = "svid.key"

[inbound]
listen = "127.0.0.1:15443"
app = "127.0.0.1:8080"
service = "orders"
"""


def test_http_inbound_needs_a_policy_section(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE + 'protocol = "http"\n')
    with pytest.raises(ConfigError, match=r"policy: inbound.protocol = 'http' needs a \[policy\]"):
        load_config(path)


def test_tcp_inbound_needs_a_policy_section_or_an_allow_list(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE)
    with pytest.raises(ConfigError, match=r"inbound.allowed_ids is empty and there is no"):
        load_config(path)


def test_a_policy_section_loads_with_its_dir_resolved(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path / "pol")
    path = tmp_path / "s.toml"
    path.write_text(BASE + 'protocol = "http"\n[policy]\ndir = "pol"\naudit = true\n')
    config = load_config(path)
    assert config.policy is not None
    assert config.policy.dir == tmp_path / "pol"
    assert config.policy.audit
    assert config.policy.reload_interval_ms == 250
    path.write_text(BASE + '[policy]\ndir = "pol"\nreload_interval_ms = 1\n')
    with pytest.raises(ConfigError, match=r"policy.reload_interval_ms: "):
        load_config(path)
