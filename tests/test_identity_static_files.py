"""Static-file identity: validate then swap on file change or reload request (SIGHUP);
bad files keep the old credentials."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization

from meshgate.clock import SystemClock
from sidecar.app import _signals
from sidecar.identity.credentials import CredentialError, CredentialStore
from sidecar.identity.run import run_identity
from sidecar.identity.settings import IdentitySettings
from sidecar.identity.static_files import (
    ReloadSignal,
    StaticIdentityError,
    load_static_credentials,
)
from sidecar.identity.stats import IdentityStats
from tests.pki import TestPki as Pki


def _settings(tmp_path: Path, pki: Pki, poll_seconds: float) -> IdentitySettings:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.bundle_pem())
    pki.leaf(pki.spiffe_id("shop", "web")).write(tmp_path)
    return IdentitySettings(
        spiffe_id=pki.spiffe_id("shop", "web"),
        bundle_file=bundle,
        cert_file=tmp_path / "svid.pem",
        key_file=tmp_path / "svid.key",
        poll_interval_seconds=poll_seconds,
    )


def test_settings_need_either_files_or_a_ca(tmp_path: Path) -> None:
    sid = Pki().spiffe_id()
    with pytest.raises(ValueError, match="cert_file and key_file must be given together"):
        IdentitySettings(sid, tmp_path / "b", cert_file=tmp_path / "c")
    with pytest.raises(ValueError, match="ca_addresses is empty"):
        IdentitySettings(sid, tmp_path / "b")
    with pytest.raises(ValueError, match="state_dir is required"):
        IdentitySettings(sid, tmp_path / "b", ca_addresses=("127.0.0.1:1",))


def test_a_wrong_identity_in_the_files_names_the_file(tmp_path: Path) -> None:
    pki = Pki()
    settings = _settings(tmp_path, pki, 1.0)
    pki.leaf(pki.spiffe_id("shop", "other")).write(tmp_path)
    with pytest.raises(CredentialError, match=r"svid\.pem: .*this sidecar is"):
        load_static_credentials(settings, pki.now)


async def test_rewritten_files_are_picked_up_and_bad_ones_refused(tmp_path: Path) -> None:
    pki = Pki()
    settings = _settings(tmp_path, pki, 0.05)
    store, stats = CredentialStore(), IdentityStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_identity(
                settings, store, SystemClock(), stats=stats, task_status=task_status
            )
        )
        first = store.current
        assert first is not None
        (tmp_path / "svid.pem").write_bytes(b"not a certificate")
        with trio.fail_after(5):
            while stats.results("reload").get("invalid", 0) == 0:
                await trio.sleep(0.02)
        assert store.current is first
        assert stats.last_error is not None
        assert "svid.pem" in stats.last_error
        pki.leaf(pki.spiffe_id("shop", "web"), ttl=timedelta(hours=2)).write(tmp_path)
        with trio.fail_after(5):
            while store.current is first:
                await trio.sleep(0.02)
        assert store.current is not None
        assert store.current.serial != first.serial
        nursery.cancel_scope.cancel()


def test_only_self_signed_certificates_in_the_bundle_are_trust_anchors(tmp_path: Path) -> None:
    pki = Pki()
    settings = _settings(tmp_path, pki, 1.0)
    intermediate = pki.intermediate.public_bytes(serialization.Encoding.PEM)
    settings.bundle_file.write_bytes(intermediate)
    with pytest.raises(StaticIdentityError, match=r"bundle\.pem: holds no self-signed root"):
        load_static_credentials(settings, pki.now)
    settings.bundle_file.write_bytes(pki.bundle_pem() + intermediate)
    creds = load_static_credentials(settings, pki.now)
    bundle = creds.bundles.get(pki.trust_domain)
    assert bundle is not None
    assert bundle.roots == (pki.root,)
    assert bundle.intermediates == (pki.intermediate,)  # helps path building, anchors nothing


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("svid.pem", None, r"svid\.pem: cannot read cert_file"),
        ("bundle.pem", b"junk", r"bundle\.pem"),
        ("svid.key", b"junk", r"svid\.key"),
    ],
)
def test_a_broken_file_is_named(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    pki = Pki()
    settings = _settings(tmp_path, pki, 1.0)
    if content is None:
        (tmp_path / name).unlink()
    else:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(StaticIdentityError, match=message):
        load_static_credentials(settings, pki.now)


async def test_a_reload_request_rereads_at_once_and_an_unchanged_set_is_not_republished(
    tmp_path: Path,
) -> None:
    pki = Pki()
    settings = _settings(tmp_path, pki, 3600.0)
    store, stats, reload = CredentialStore(), IdentityStats(), ReloadSignal()
    published: list[object] = []
    store.subscribe(lambda: published.append(store.current))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_identity(
                settings, store, SystemClock(), stats=stats, reload=reload, task_status=task_status
            )
        )
        first = store.current
        assert first is not None
        reload.request()  # same files: re-read and validated, nothing new to publish
        with trio.fail_after(5):
            while stats.results("reload").get("ok", 0) < 2:
                await trio.sleep(0.02)
        assert store.current is first
        assert published == [first]
        pki.leaf(pki.spiffe_id("shop", "web"), ttl=timedelta(hours=2)).write(tmp_path)
        reload.request()  # a poll interval of an hour: only the request can pick this up
        with trio.fail_after(5):
            while store.current is first:
                await trio.sleep(0.02)
        assert store.current is not None
        assert store.current.serial != first.serial
        assert len(published) == 2
        nursery.cancel_scope.cancel()


async def test_sighup_to_the_sidecar_requests_a_reload() -> None:
    drain, reload = trio.Event(), ReloadSignal()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, drain, reload)
        await trio.testing.wait_all_tasks_blocked()  # the signal receiver is installed
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(5):
            assert await reload.wait(10.0)
        assert not drain.is_set()
        nursery.cancel_scope.cancel()


def test_settings_from_the_sidecar_config_identity_table(tmp_path: Path) -> None:
    from sidecar.config import IdentityConfig

    identity = IdentityConfig.model_validate(
        {
            "spiffe_id": "spiffe://example.org/ns/shop/svc/web",
            "bundle_file": str(tmp_path / "bundle.pem"),
            "ca_addresses": ["127.0.0.1:8443", "[::1]:8444"],
            "token_file": str(tmp_path / "token"),
            "state_dir": str(tmp_path / "state"),
        }
    )
    settings = IdentitySettings.from_config(identity)
    assert str(settings.spiffe_id) == "spiffe://example.org/ns/shop/svc/web"
    assert settings.ca_addresses == ("127.0.0.1:8443", "[::1]:8444")
    assert settings.state_dir == tmp_path / "state"
    assert settings.token_file == tmp_path / "token"
    assert settings.poll_interval_seconds == 30.0
    assert not settings.static


def test_static_settings_poll_the_files_every_reload_interval(tmp_path: Path) -> None:
    from sidecar.config import IdentityConfig

    identity = IdentityConfig.model_validate(
        {
            "spiffe_id": "spiffe://example.org/ns/shop/svc/web",
            "bundle_file": str(tmp_path / "bundle.pem"),
            "cert_file": str(tmp_path / "svid.pem"),
            "key_file": str(tmp_path / "svid.key"),
            "reload_interval_seconds": 2.5,
        }
    )
    settings = IdentitySettings.from_config(identity)
    assert settings.static
    assert settings.poll_interval_seconds == 2.5
