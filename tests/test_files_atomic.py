"""Atomic file writes: exact modes, whole replacement, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshgate.files import write_atomic, write_atomic_set
from meshgate.keys import write_private_file
from sidecar.identity.state import write_public_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        write_private_file(tmp_path / "key", b"secret")
        write_public_file(tmp_path / "bundle", b"public")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "key") == 0o600
    assert _mode(tmp_path / "bundle") == 0o644


def test_an_existing_file_is_replaced_whole_and_no_temporary_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "svid.pem"
    target.write_bytes(b"old and longer than the new content")
    target.chmod(0o666)
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svid.pem"]


def test_a_failed_write_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "bundle.pem"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes", 0o644)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.pem"]


def test_a_set_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    # The second file cannot be written (its directory is missing): the first, already
    # written to its temporary file, must not land either, and nothing is left behind.
    key, cert = tmp_path / "svid.key", tmp_path / "missing" / "svid.pem"
    key.write_bytes(b"old key")
    with pytest.raises(FileNotFoundError):
        write_atomic_set([(key, b"new key", 0o600), (cert, b"new cert", 0o644)])
    assert key.read_bytes() == b"old key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svid.key"]
    write_atomic_set([(key, b"new key", 0o600), (tmp_path / "svid.pem", b"new cert", 0o644)])
    assert (key.read_bytes(), (tmp_path / "svid.pem").read_bytes()) == (b"new key", b"new cert")
    assert key.stat().st_mode & 0o777 == 0o600
