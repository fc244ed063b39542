"""Dropping the Cedar library's load-time code pages: only clean read-only mappings are
advised, the pages really leave the resident set, and Cedar decides the same after."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.policy import PolicyStore, ReloadOutcome
from sidecar.policy.residency import clean_read_only_ranges, drop_clean_pages
from sidecar.policy.watch import CEDAR_LIBRARY
from tests.test_policy_reload import CREATE_ORDER, POLICIES, READ_ORDER, T0

LIB = "/opt/lib/libcedar.so"
SMAPS = f"""\
7f0000000000-7f0000100000 r--p 00000000 08:01 42                         {LIB}
Rss:                 512 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000100000-7f0000300000 r-xp 00100000 08:01 42                         {LIB}
Rss:                1024 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000300000-7f0000340000 r--p 00300000 08:01 42                         {LIB}
Rss:                 256 kB
Private_Dirty:       256 kB
Anonymous:           256 kB
7f0000340000-7f0000344000 rw-p 00340000 08:01 42                         {LIB}
Rss:                   0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r-xp 00000000 08:01 43                         /opt/lib/libother.so
Rss:                 100 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000600000-7f0000700000 r--p 00000000 00:00 0
Rss:                   0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
"""


def test_only_clean_read_only_mappings_of_the_library_are_chosen() -> None:
    # Not the relocated RELRO (dirty), not the writable data, not another file.
    assert clean_read_only_ranges(SMAPS, LIB) == [
        (0x7F0000000000, 0x7F0000100000),
        (0x7F0000100000, 0x7F0000300000),
    ]
    assert clean_read_only_ranges(SMAPS, "/opt/lib/libmissing.so") == []


def _library_rss_kb(library: str) -> int:
    total, ours = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            ours = line.rstrip().endswith(" " + library)
        elif ours and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_dropping_releases_the_pages_and_cedar_still_decides() -> None:
    store = PolicyStore()
    assert store.try_reload(POLICIES, T0) is ReloadOutcome.LOADED
    before = (store.decide(READ_ORDER).allowed, store.decide(CREATE_ORDER).allowed)
    resident = _library_rss_kb(CEDAR_LIBRARY)
    assert drop_clean_pages(CEDAR_LIBRARY) > 0
    assert _library_rss_kb(CEDAR_LIBRARY) < resident / 2
    # A fresh load and fresh decisions fault the code back in from the page cache.
    again = PolicyStore()
    assert again.try_reload(POLICIES, T0) is ReloadOutcome.LOADED
    assert (again.decide(READ_ORDER).allowed, again.decide(CREATE_ORDER).allowed) == before
    assert (store.decide(READ_ORDER).allowed, store.decide(CREATE_ORDER).allowed) == before
