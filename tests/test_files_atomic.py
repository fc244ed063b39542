"""Atomic file writes: exact modes, whole replacement, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mesh_ca.files import write_atomic
from mesh_ca.keys import write_private_file
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
