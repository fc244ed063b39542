"""The sidecar's live policy set: the first load gates start-up, SIGHUP forces a reload,
and every reload is counted with the live version in the metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from meshgate.clock import SystemClock
from sidecar.config import PolicyConfig
from sidecar.observe.access import Observer
from sidecar.policy.live import LivePolicies, PolicyStartError

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def _sample(observer: Observer, name: str, labels: dict[str, str]) -> float:
    value = observer.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_start_loads_and_sighup_reloads_with_counted_outcomes(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    shutil.copytree(POLICIES, directory)
    observer = Observer()
    # A long poll interval: only request_reload (SIGHUP) can cause the second reload.
    live = LivePolicies(
        PolicyConfig(dir=directory, reload_interval_ms=3_600_000), SystemClock(), observer
    )
    async with trio.open_nursery() as nursery:
        await live.start(nursery)
        assert live.store.current is not None
        first = live.store.current.version
        assert _sample(observer, "meshgate_policy_reloads_total", {"result": "loaded"}) == 1
        assert _sample(observer, "meshgate_policy_set_info", {"version": first}) == 1
        (directory / "extra.cedar").write_text(
            '@id("extra")\npermit (principal, action == Action::"GET", resource == Service::"x");\n'
        )
        live.request_reload()
        with trio.fail_after(10):  # counted after the swap: wait for the count
            while _sample(observer, "meshgate_policy_reloads_total", {"result": "loaded"}) < 2:
                await trio.sleep(0.01)
        assert live.store.current is not None
        second = live.store.current.version
        assert second != first
        assert _sample(observer, "meshgate_policy_set_info", {"version": second}) == 1
        assert _sample(observer, "meshgate_policy_set_info", {"version": first}) == 0
        (directory / "extra.cedar").write_text('@id("extra")\npermit (principal, action')
        live.request_reload()
        with trio.fail_after(10):
            while _sample(observer, "meshgate_policy_reloads_total", {"result": "failed"}) < 1:
                await trio.sleep(0.01)
        assert live.store.current.version == second  # the last good set stays
        assert live.store.last_error is not None
        nursery.cancel_scope.cancel()


async def test_an_invalid_first_set_refuses_to_start(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    shutil.copytree(POLICIES, directory)
    (directory / "entities.json").unlink()
    live = LivePolicies(PolicyConfig(dir=directory), SystemClock(), Observer())
    async with trio.open_nursery() as nursery:
        with pytest.raises(PolicyStartError, match=r"entities\.json"):
            await live.start(nursery)
        nursery.cancel_scope.cancel()
    missing = LivePolicies(PolicyConfig(dir=tmp_path / "nope"), SystemClock(), Observer())
    async with trio.open_nursery() as nursery:
        with pytest.raises(PolicyStartError, match=r"policy\.dir .* is not a directory"):
            await missing.start(nursery)
