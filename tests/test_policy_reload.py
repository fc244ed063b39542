"""Reloading policies: validate, then swap; keep the last good set on any error."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from meshgate.clock import SystemClock
from meshgate.identity import SpiffeId
from sidecar.policy import AccessRequest, PolicyStore, ReloadOutcome
from sidecar.policy.watch import PolicyWatcher

POLICIES = Path(__file__).resolve().parent.parent / "policies"
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
WEB = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")
READ_ORDER = AccessRequest(WEB, "GET", "orders", "127.0.0.1", T0, path="/orders/1")
CREATE_ORDER = AccessRequest(WEB, "POST", "orders", "127.0.0.1", T0, path="/orders")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


@pytest.fixture
def store(policy_dir: Path) -> PolicyStore:
    store = PolicyStore()
    assert store.try_reload(policy_dir, T0) is ReloadOutcome.LOADED
    return store


def _retarget_create_orders(text: str) -> str:
    old = 'action == Action::"POST",\n  resource == Service::"orders"'
    assert old in text
    return text.replace(old, 'action == Action::"POST",\n  resource == Service::"nowhere"')


def _assert_kept(store: PolicyStore, version: str) -> None:
    current = store.current
    assert current is not None
    assert current.version == version
    assert store.decide(READ_ORDER).allowed


def test_same_content_is_unchanged(store: PolicyStore, policy_dir: Path) -> None:
    assert store.try_reload(policy_dir, T1) is ReloadOutcome.UNCHANGED
    assert store.reloads[ReloadOutcome.LOADED] == 1
    assert store.reloads[ReloadOutcome.UNCHANGED] == 1


def test_malformed_file_keeps_the_old_set_and_records_the_error(
    store: PolicyStore, policy_dir: Path
) -> None:
    assert store.current is not None
    version = store.current.version
    shop = policy_dir / "shop.cedar"
    lines = shop.read_text().count("\n")
    shop.write_text(shop.read_text() + '\n@id("broken")\npermit (principal, action resource);\n')
    assert store.try_reload(policy_dir, T1) is ReloadOutcome.FAILED
    _assert_kept(store, version)
    error = store.last_error
    assert error is not None
    assert error.at == T1
    assert error.file == "shop.cedar"
    assert error.problems[0].line == lines + 2
    assert error.problems[0].policy_id == "broken"
    assert "shop.cedar" in store.status()["last_error"]["file"]  # type: ignore[index]
    assert store.reloads[ReloadOutcome.FAILED] == 1


def test_invalid_against_schema_keeps_the_old_set(store: PolicyStore, policy_dir: Path) -> None:
    assert store.current is not None
    version = store.current.version
    (policy_dir / "extra.cedar").write_text(
        '@id("typo")\npermit (principal, action, resource) when { context.pth == "/" };\n'
    )
    assert store.try_reload(policy_dir, T1) is ReloadOutcome.FAILED
    _assert_kept(store, version)
    assert store.last_error is not None
    problem = store.last_error.problems[0]
    assert (problem.file, problem.line, problem.policy_id) == ("extra.cedar", 1, "typo")
    assert "pth" in problem.message


@pytest.mark.parametrize("name", ["mesh.cedarschema", "entities.json", "shop.cedar"])
def test_deleted_file_is_an_error(store: PolicyStore, policy_dir: Path, name: str) -> None:
    assert store.current is not None
    version = store.current.version
    os.remove(policy_dir / name)
    outcome = store.try_reload(policy_dir, T1)
    if name == "shop.cedar":
        # The remaining guardrails alone are a valid set: deleting a file is an edit.
        assert outcome is ReloadOutcome.LOADED
        assert not store.decide(READ_ORDER).allowed
        return
    assert outcome is ReloadOutcome.FAILED
    _assert_kept(store, version)
    assert store.last_error is not None
    assert name.rsplit(".", maxsplit=1)[-1] in store.last_error.message


def test_no_policy_files_left_is_an_error_not_allow_all(
    store: PolicyStore, policy_dir: Path
) -> None:
    assert store.current is not None
    version = store.current.version
    for path in policy_dir.glob("*.cedar"):
        path.unlink()
    assert store.try_reload(policy_dir, T1) is ReloadOutcome.FAILED
    _assert_kept(store, version)
    assert store.last_error is not None
    assert "no *.cedar" in store.last_error.message


@pytest.mark.parametrize("keep", [0, 40, 200])
def test_half_written_file_is_an_error(store: PolicyStore, policy_dir: Path, keep: int) -> None:
    assert store.current is not None
    version = store.current.version
    shop = policy_dir / "shop.cedar"
    text = shop.read_text()
    # Cut inside a policy (an empty file at 0): what an editor leaves mid-write.
    cut = text.index("@id", keep) + 30 if keep else 0
    shop.write_text(text[:cut])
    assert store.try_reload(policy_dir, T1) is ReloadOutcome.FAILED
    _assert_kept(store, version)
    assert store.last_error is not None
    assert store.last_error.file == "shop.cedar"


def test_missing_directory_on_first_load_leaves_nothing_live(tmp_path: Path) -> None:
    store = PolicyStore()
    assert store.try_reload(tmp_path / "absent", T0) is ReloadOutcome.FAILED
    assert store.current is None
    assert not store.decide(READ_ORDER).allowed


def test_valid_edit_swaps_and_clears_the_error(store: PolicyStore, policy_dir: Path) -> None:
    shop = policy_dir / "shop.cedar"
    good = shop.read_text()
    shop.write_text(good + "\npermit (principal, action, resource) when {")
    assert store.try_reload(policy_dir, T1) is ReloadOutcome.FAILED
    assert store.decide(CREATE_ORDER).allowed
    # Take away web's right to create orders.
    shop.write_text(_retarget_create_orders(good))
    assert store.try_reload(policy_dir, T1) is ReloadOutcome.LOADED
    assert store.last_error is None
    assert not store.decide(CREATE_ORDER).allowed
    assert store.decide(READ_ORDER).allowed
    assert store.current is not None
    assert store.current.loaded_at == T1


async def test_watcher_reloads_on_change_and_on_request(policy_dir: Path) -> None:
    store = PolicyStore()
    outcomes: list[ReloadOutcome] = []
    watcher = PolicyWatcher(
        store, policy_dir, SystemClock(), poll_interval_ms=20, on_reload=outcomes.append
    )
    async with trio.open_nursery() as nursery:
        assert await nursery.start(watcher.run) is ReloadOutcome.LOADED
        assert store.decide(CREATE_ORDER).allowed
        shop = policy_dir / "shop.cedar"
        shop.write_text(_retarget_create_orders(shop.read_text()))
        with trio.fail_after(5):
            while store.decide(CREATE_ORDER).allowed:
                await trio.sleep(0.01)
        watcher.request_reload()
        with trio.fail_after(5):
            while ReloadOutcome.UNCHANGED not in outcomes:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert outcomes[:2] == [ReloadOutcome.LOADED, ReloadOutcome.LOADED]
