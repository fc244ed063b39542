"""The identity state directory: SVID, 0600 key, bundle and spent tokens, written atomically."""

from __future__ import annotations

import logging
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from mesh_ca.tokens import new_token
from meshgate.identity import SpiffeId
from sidecar.identity.credentials import Credentials
from sidecar.identity.state import (
    JoinToken,
    StateDir,
    StateError,
    load_bundle_file,
    read_join_token,
    write_public_file,
)
from tests.pki import TestPki as Pki


def _creds(pki: Pki, sid: SpiffeId, ttl: timedelta = timedelta(hours=1)) -> Credentials:
    leaf = pki.leaf(sid, ttl=ttl)
    return Credentials.build((leaf.cert, *leaf.chain), leaf.key, pki.bundles, pki.now)


def test_saved_svid_loads_back_with_a_0600_key(tmp_path: Path) -> None:
    pki = Pki()
    sid = pki.spiffe_id("shop", "web")
    state = StateDir(tmp_path / "state")
    state.save(_creds(pki, sid))
    assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    stored = state.load_svid(sid, pki.bundles, pki.now + timedelta(minutes=5))
    assert stored.credentials is not None, stored.reason
    assert stored.credentials.spiffe_id == sid
    bundle = state.load_bundle(pki.trust_domain)
    assert bundle is not None
    assert bundle.roots == (pki.root,)


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    pki = Pki()
    state = StateDir(tmp_path)
    state.save(_creds(pki, pki.spiffe_id()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.pem", "svid.key", "svid.pem"]


def test_an_empty_state_dir_says_so(tmp_path: Path) -> None:
    pki = Pki()
    stored = StateDir(tmp_path).load_svid(pki.spiffe_id(), pki.bundles, pki.now)
    assert stored.credentials is None
    assert "no SVID" in stored.reason


def test_an_expired_svid_is_ignored_and_reports_when_it_expired(tmp_path: Path) -> None:
    pki = Pki()
    sid = pki.spiffe_id()
    state = StateDir(tmp_path)
    state.save(_creds(pki, sid, ttl=timedelta(minutes=5)))
    later = pki.now + timedelta(minutes=6)
    stored = state.load_svid(sid, pki.bundles, later)
    assert stored.credentials is None
    assert "expired at" in stored.reason
    assert stored.expired_at is not None
    assert stored.expired_at < later


def test_an_svid_for_another_spiffe_id_is_ignored(tmp_path: Path) -> None:
    pki = Pki()
    state = StateDir(tmp_path)
    state.save(_creds(pki, pki.spiffe_id("shop", "web")))
    stored = state.load_svid(pki.spiffe_id("shop", "db"), pki.bundles, pki.now)
    assert stored.credentials is None
    assert "this sidecar is spiffe://example.org/ns/shop/svc/db" in stored.reason
    assert stored.expired_at is None


def test_an_svid_from_another_ca_is_ignored(tmp_path: Path) -> None:
    pki, other = Pki(), Pki()
    sid = pki.spiffe_id()
    state = StateDir(tmp_path)
    state.save(_creds(other, sid))
    stored = state.load_svid(sid, pki.bundles, pki.now)
    assert stored.credentials is None
    assert "refused" in stored.reason


def test_a_key_that_does_not_match_the_certificate_is_ignored(tmp_path: Path) -> None:
    """What a crash between writing the new key and the new certificate would leave."""
    pki = Pki()
    sid = pki.spiffe_id()
    state = StateDir(tmp_path)
    state.save(_creds(pki, sid))
    newer = _creds(pki, sid)
    from meshgate.keys import private_key_pem, write_private_file

    write_private_file(state.key_path, private_key_pem(newer.key))
    stored = state.load_svid(sid, pki.bundles, pki.now)
    assert stored.credentials is None
    assert "private key does not match" in stored.reason


def test_a_corrupt_svid_file_is_ignored_with_its_path(tmp_path: Path) -> None:
    pki = Pki()
    sid = pki.spiffe_id()
    state = StateDir(tmp_path)
    state.save(_creds(pki, sid))
    state.svid_path.write_bytes(b"garbage")
    stored = state.load_svid(sid, pki.bundles, pki.now)
    assert stored.credentials is None
    assert str(state.svid_path) in stored.reason


def test_a_world_readable_key_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = Pki()
    sid = pki.spiffe_id()
    state = StateDir(tmp_path)
    state.save(_creds(pki, sid))
    os.chmod(state.key_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="sidecar.identity"):
        assert state.load_svid(sid, pki.bundles, pki.now).credentials is not None
    assert "should be 0600" in caplog.text


def test_a_corrupt_stored_bundle_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = Pki()
    state = StateDir(tmp_path)
    state.bundle_path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    with caplog.at_level(logging.WARNING, logger="sidecar.identity"):
        assert state.load_bundle(pki.trust_domain) is None
    assert "bundle.pem" in caplog.text


def test_a_bundle_file_error_names_the_file(tmp_path: Path) -> None:
    pki = Pki()
    with pytest.raises(StateError, match=r"missing\.pem: cannot read trust bundle"):
        load_bundle_file(tmp_path / "missing.pem", pki.trust_domain)
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(StateError, match=r"empty\.pem"):
        load_bundle_file(empty, pki.trust_domain)


def test_an_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot create state directory"):
        StateDir(blocker / "state").ensure()


def test_a_spent_token_is_recognised_and_a_new_one_is_not(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(new_token()[0] + "\n")
    state = StateDir(tmp_path / "state")
    token = read_join_token(token_file)
    assert token is not None
    assert not state.token_spent(token)
    state.mark_token_spent(token)
    assert state.token_spent(token)
    assert stat.S_IMODE(state.token_used_path.stat().st_mode) == 0o600
    assert token.text not in state.token_used_path.read_text()
    token_file.write_text(new_token()[0])
    fresh = read_join_token(token_file)
    assert fresh is not None
    assert not state.token_spent(fresh)


def test_a_token_never_shows_its_secret() -> None:
    text, token_id, _ = new_token()
    token = JoinToken(Path("/run/token"), text)
    assert token.public_id == token_id
    for shown in (repr(token), str(token), f"{token}"):
        assert text not in shown
        assert token_id in shown
    assert JoinToken(Path("t"), "not-a-token").public_id == "?"


def test_missing_or_empty_token_files_hold_no_token(tmp_path: Path) -> None:
    assert read_join_token(None) is None
    assert read_join_token(tmp_path / "absent") is None
    (tmp_path / "empty").write_text("  \n")
    assert read_join_token(tmp_path / "empty") is None


def test_write_public_file_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "f.pem"
    write_public_file(target, b"one")
    write_public_file(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_a_failed_save_keeps_the_old_matching_pair(tmp_path: Path) -> None:
    # The certificate cannot be written (its temporary file's name is taken by a
    # directory): the new key must not replace the old one, or the stored pair would no
    # longer match and the sidecar would need a new join token after a restart.
    pki = Pki()
    sid = pki.spiffe_id("shop", "web")
    state = StateDir(tmp_path)
    state.save(_creds(pki, sid))
    old_key = state.key_path.read_bytes()
    (tmp_path / f".svid.pem.tmp-{os.getpid()}").mkdir()
    with pytest.raises(OSError, match=r"svid\.pem"):
        state.save(_creds(pki, sid))
    assert state.key_path.read_bytes() == old_key
    stored = state.load_svid(sid, pki.bundles, pki.now + timedelta(minutes=5))
    assert stored.credentials is not None, stored.reason
