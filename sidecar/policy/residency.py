"""Let go of the Cedar library's code pages that only loading a policy set needed.

Parsing the schema, the policies and the entities and validating them runs several MB of
cedarpy's native code (parser tables, validator) that no decision touches again, and those
pages stay in the process's resident set: ~7 MB of an idle sidecar's RSS (issue 4). After
each load, the library's read-only mappings that were never written are advised
`MADV_DONTNEED`: for a private file mapping the kernel unmaps the pages and, on the next
touch, maps them again from the page cache, so nothing is lost; the decision path faults
back in the few pages it uses. Writable mappings and any that hold a private or anonymous
page (the relocated RELRO segment) are left alone: for those, DONTNEED would discard data.

Linux only; elsewhere (or without `/proc`) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["drop_clean_pages"]

_MADV_DONTNEED = 4
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")


def _madvise() -> Callable[[int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.madvise
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    func.restype = ctypes.c_int
    madvise: Callable[[int, int, int], int] = func
    return madvise


_MADVISE = _madvise()
_RANGES: dict[str, list[tuple[int, int]]] = {}


def clean_read_only_ranges(smaps: str, library: str) -> list[tuple[int, int]]:
    """(start, end) of each mapping of the file `library` in `smaps` text that is not
    writable and holds no private-dirty or anonymous page."""
    ranges: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    dirty = 0
    for line in smaps.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            if current is not None and dirty == 0:
                ranges.append(current)
            start, end, perms, path = header.groups()
            ours = path == library and "w" not in perms
            current = (int(start, 16), int(end, 16)) if ours else None
            dirty = 0
        elif current is not None and line.startswith(("Private_Dirty:", "Anonymous:")):
            dirty += int(line.split()[1])
    if current is not None and dirty == 0:
        ranges.append(current)
    return ranges


def drop_clean_pages(library: str) -> int:
    """Advise away the clean read-only pages of `library` (an absolute path); returns the
    bytes advised (0 where unsupported).

    The ranges are found once per library (reading smaps walks the page tables: ~10 ms) and
    remembered: a loaded library's mappings do not move, and a mapping without write
    permission cannot gain a dirty page.
    """
    if _MADVISE is None:
        return 0
    ranges = _RANGES.get(library)
    if ranges is None:
        try:
            smaps = Path("/proc/self/smaps").read_text()
        except OSError:
            return 0
        ranges = _RANGES[library] = clean_read_only_ranges(smaps, library)
    advised = 0
    for start, end in ranges:
        if _MADVISE(start, end - start, _MADV_DONTNEED) == 0:
            advised += end - start
    return advised
