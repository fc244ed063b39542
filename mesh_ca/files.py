"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The data goes to a temporary file next to the target (created with its final mode from
the first byte, so a secret is never readable by others, not even briefly), is fsynced,
then renamed over the target. On any error the temporary file is removed and the target
is untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`, atomically, with exactly `mode` (the umask cannot widen or
    narrow it)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # an existing temporary file keeps its old mode otherwise
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
