"""An exception inside the policy engine denies that one request, naming the error; it is
never forwarded, not even in audit mode."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from meshgate.identity import SpiffeId
from sidecar.authz.cedar import CedarAuthorizer
from sidecar.policy import AccessRequest, DecisionReason, PolicyStore

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def _store(tmp_path: Path) -> PolicyStore:
    shutil.copytree(POLICIES, tmp_path / "p")
    store = PolicyStore()
    store.try_reload(tmp_path / "p", datetime.now(UTC))
    assert store.current is not None
    return store


@pytest.mark.parametrize("audit", [False, True])
def test_an_engine_exception_denies_with_the_error_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit: bool
) -> None:
    store = _store(tmp_path)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("engine broke")

    monkeypatch.setattr(cedarpy, "is_authorized", broken)
    request = AccessRequest(
        principal=SpiffeId.parse("spiffe://example.org/ns/shop/svc/web"),
        action="GET",
        service="orders",
        source_address="127.0.0.1",
        now=datetime.now(UTC),
        path="/orders/1",
    )
    verdict = store.decide(request, audit=audit)
    assert verdict.reason is DecisionReason.ENGINE_ERROR
    assert not verdict.allowed
    assert verdict.errors == ("RuntimeError: engine broke",)
    assert not verdict.forward
    assert verdict.result == "deny"


def test_tcp_mode_names_the_engine_error_in_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("engine broke")

    monkeypatch.setattr(cedarpy, "is_authorized", broken)
    authorizer = CedarAuthorizer(store, lambda: datetime.now(UTC))
    peer = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")
    decision = authorizer.authorize(peer, "connect", "orders", {"source": "127.0.0.1:9"})
    assert not decision.allowed
    assert decision.detail == "engine-error: RuntimeError: engine broke"
