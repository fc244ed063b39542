"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The data goes to a temporary file next to the target (created with its final mode from
the first byte, so a secret is never readable by others, not even briefly), is fsynced,
then renamed over the target. On any error the temporary file is removed and the target
is untouched. `write_atomic_set` does the same for files that belong together (a
certificate and its key): all are written before any is renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_atomic", "write_atomic_set"]


def _temporary(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a fsynced temporary file next to `path`, with exactly `mode`.

    An `OSError` names `path` (a failed write(2), e.g. ENOSPC, names no file by itself).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)  # an existing temporary file keeps its old mode otherwise
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    return tmp


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`, atomically, with exactly `mode` (the umask cannot widen or
    narrow it)."""
    write_atomic_set([(path, data, mode)])


def write_atomic_set(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write every (path, data, mode) to its temporary file, then rename them all into place.

    A failure while writing (a full disk, a missing directory) leaves every target as it
    was, so a new key never lands next to an old certificate. The renames themselves do
    not fail in practice (same directory, files already written).
    """
    written: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            written.append((_temporary(path, data, mode), path))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
