"""The sidecar's identity loop takes federated bundles from its CA (fake CA, mock clock).

At start and at every poll the foreign set replaces the previous one whole; trust changes
build fresh TLS contexts; the set is saved in the state directory, so a restart while the
CA is down keeps the foreign trust it had, and a removal is saved too.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from meshgate.clock import TrioWallClock
from meshgate.identity import BundleSet, TrustDomain
from sidecar.identity.credentials import CredentialStore
from tests.pki import TestPki as Pki
from tests.test_rotation_lifecycle import FakeCa, Sidecar

B = TrustDomain("b.example")


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture
async def clock(pki: Pki, autojump_clock: trio.testing.MockClock) -> TrioWallClock:
    return TrioWallClock(epoch=pki.now)  # async: it reads trio's (mock) time


async def test_federated_bundles_are_taken_at_start_dropped_when_removed_and_saved(
    tmp_path: Path, pki: Pki, clock: TrioWallClock, autojump_clock: trio.testing.MockClock
) -> None:
    foreign = Pki(trust_domain=B, now=pki.now)
    ca = FakeCa(pki, clock, timedelta(hours=1))
    ca.federated = BundleSet.of(foreign.bundle)
    web = Sidecar(tmp_path, pki, ca, "web")
    saved = web.dir / "state" / "federated-bundles.json"
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        await trio.sleep(1)  # the first poll of federated bundles runs at once
        first = web.live(clock.now())
        assert set(first.bundles) == {pki.trust_domain, B}
        assert "b.example" in saved.read_text()

        ca.federated = BundleSet()
        await trio.sleep(31)
        after = web.live(clock.now())
        assert set(after.bundles) == {pki.trust_domain}
        assert after.serial == first.serial  # trust changed, not the SVID
        assert after.server_context is not first.server_context
        assert not saved.exists()
        assert web.stats.results("federation") == {"updated": 2}

        ca.federated = BundleSet.of(foreign.bundle)
        await trio.sleep(31)
        assert B in web.live(clock.now()).bundles
        nursery.cancel_scope.cancel()

    # Restart while the CA is down: the saved foreign bundle is trusted until it answers.
    ca.up = False
    web.store = CredentialStore()
    async with trio.open_nursery() as nursery:
        await web.start(nursery, clock)
        assert B in web.live(clock.now()).bundles
        await trio.sleep(31)
        assert B in web.live(clock.now()).bundles
        assert web.stats.results("federation").get("ca_unavailable", 0) >= 1
        nursery.cancel_scope.cancel()
