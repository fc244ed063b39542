"""The control plane's policy set: validated before publishing, sliced per service (need to
know) into files a sidecar loads, and deciding who may register (unit, pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mesh_ca.control.policy_set import PolicySetError, load_policy_set, read_policy_files
from meshgate.identity import SpiffeId
from sidecar.policy.decision import AccessRequest, decide
from sidecar.policy.loader import load_snapshot

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
WEB = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")
ORDERS = SpiffeId.parse("spiffe://example.org/ns/shop/svc/orders")


def _shipped() -> dict[str, str]:
    return read_policy_files(ROOT / "policies")


def test_a_slice_holds_only_what_concerns_its_service() -> None:
    policy_set = load_policy_set(_shipped())
    orders = policy_set.slice_for("orders")
    assert set(orders) == {"mesh.cedarschema", "entities.json", "guardrails.cedar", "shop.cedar"}
    text = "".join(orders.values())
    assert "web-reads-orders" in text
    assert "no-delete" in text
    assert "orders-charges-payments" not in text  # payments' business
    assert "no-tenant-override-on-payments" not in text
    assert "shop-workloads-serve-their-own-service" not in text  # the control plane's
    assert "orders-charges-payments" in "".join(policy_set.slice_for("payments").values())


def test_a_slice_loads_in_a_sidecar_and_decides_as_the_whole_set(tmp_path: Path) -> None:
    policy_set = load_policy_set(_shipped())
    for name, text in policy_set.slice_for("orders").items():
        (tmp_path / name).write_text(text)
    sliced = load_snapshot(tmp_path, NOW)
    whole = load_snapshot(ROOT / "policies", NOW)
    for principal, method, path in [
        (WEB, "GET", "/orders"),
        (WEB, "POST", "/orders"),
        (WEB, "DELETE", "/orders"),
        (WEB, "GET", "/admin"),
        (ORDERS, "GET", "/healthz"),
        (ORDERS, "POST", "/orders"),
    ]:
        request = AccessRequest(principal, method, "orders", "127.0.0.1", NOW, path=path)
        assert decide(sliced, request).allowed == decide(whole, request).allowed, request


def test_registration_is_decided_by_policy_and_denied_by_default() -> None:
    policy_set = load_policy_set(_shipped())
    allowed = policy_set.decide_register(ORDERS, "orders", "127.0.0.1:1", "http", "10.0.0.1", NOW)
    assert allowed.allowed
    assert allowed.policy_ids == ("shop-workloads-serve-their-own-service",)
    assert not policy_set.decide_register(WEB, "orders", "127.0.0.1:1", "http", "::1", NOW).allowed
    files = _shipped()
    del files["registration.cedar"]
    silent = load_policy_set(files)
    assert not silent.decide_register(ORDERS, "orders", "127.0.0.1:1", "http", "::1", NOW).allowed


def test_a_broken_edit_is_refused_naming_the_file() -> None:
    files = _shipped()
    files["shop.cedar"] = files["shop.cedar"].replace("context.path ==", "context.pth ==", 1)
    with pytest.raises(PolicySetError, match=r"shop\.cedar: .*pth"):
        load_policy_set(files)
    files = _shipped()
    files["extra.cedar"] = '@id("no-delete")\nforbid (principal, action, resource);\n'
    with pytest.raises(PolicySetError, match="duplicate @id 'no-delete'"):
        load_policy_set(files)
    with pytest.raises(PolicySetError, match=r"missing entities\.json"):
        load_policy_set({k: v for k, v in _shipped().items() if k != "entities.json"})
