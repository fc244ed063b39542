"""A sidecar identity bootstraps from `mesh-ca serve` with a `mesh-ca token create` token,
renews over mTLS with a new key, and after a restart uses the SVID on disk without a token."""

from __future__ import annotations

import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from meshgate.clock import SystemClock
from meshgate.identity import SpiffeId
from meshgate.identity.bundle import pem_bundle
from sidecar.identity.blocking import in_thread
from sidecar.identity.credentials import CredentialStore
from sidecar.identity.lifecycle import _default_factory, _Lifecycle
from sidecar.identity.run import run_identity
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.state import StateDir
from sidecar.identity.stats import IdentityStats
from tests.ca_server_process import make_ca, serving_ca_dir

pytestmark = pytest.mark.integration

SPIFFE_ID = SpiffeId.parse("spiffe://example.org/ns/shop/svc/web")


def _token_from_cli(ca_dir: Path) -> str:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mesh_ca.cli", "token", "create"),
            *("--dir", str(ca_dir), "--spiffe-id", str(SPIFFE_ID)),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout.decode().strip()


async def test_bootstrap_renew_and_restart_against_a_real_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    bundle_file = tmp_path / "bundle.pem"
    bundle_file.write_bytes(pem_bundle(ca.bundle.roots))
    token_file = tmp_path / "token"
    with serving_ca_dir(ca, tmp_path / "ca.log", argv=("-m", "mesh_ca.cli", "serve")) as server:
        token = _token_from_cli(ca.path)
        token_file.write_text(token + "\n")
        settings = IdentitySettings(
            spiffe_id=SPIFFE_ID,
            bundle_file=bundle_file,
            ca_addresses=(server.address,),
            token_file=token_file,
            state_dir=tmp_path / "state",
        )
        clock, store, stats = SystemClock(), CredentialStore(), IdentityStats()

        # Bootstrap, then one renewal driven directly (a real rotation is minutes away).
        lifecycle = _Lifecycle(
            settings,
            store,
            clock,
            _default_factory(settings, clock),
            random.Random(1),
            stats,
            in_thread,
        )
        try:
            with trio.fail_after(30):
                await lifecycle.start()
            first = store.current
            assert first is not None
            assert first.spiffe_id == SPIFFE_ID
            assert stats.results("bootstrap") == {"ok": 1}
            with trio.fail_after(30):
                await lifecycle.replace(why="test")
            renewed = store.current
            assert renewed is not None
            assert renewed.serial != first.serial
            assert renewed.key.public_key() != first.key.public_key()  # a new key
            assert stats.results("rotation") == {"ok": 1}
            with trio.fail_after(30):
                await lifecycle.poll_once()  # bundle and revocations from the real CA
            assert stats.last_error is None
            assert store.current is renewed  # same roots: nothing republished
        finally:
            await lifecycle.aclose()

        state = StateDir(tmp_path / "state")
        assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
        assert state.svid_path.exists()
        assert state.bundle_path.exists()

        # Restart: the token is spent and even removed; the stored SVID is enough.
        token_file.unlink()
        restarted, stats2 = CredentialStore(), IdentityStats()
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                await nursery.start(
                    lambda task_status: run_identity(
                        settings, restarted, clock, stats=stats2, task_status=task_status
                    )
                )
            assert restarted.current is not None
            assert restarted.current.serial == renewed.serial
            assert stats2.results("start") == {"stored": 1}
            nursery.cancel_scope.cancel()
    assert token.split(".")[1] not in server.log(), "the token secret is never logged"
