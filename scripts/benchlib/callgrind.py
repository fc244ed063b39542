"""Instruction counts under valgrind's callgrind, for `scripts/bench.py ca-instructions`.

Seconds on this shared 2-core machine move by ±10-15 % between runs; callgrind counts the
instructions a process executes (user space only), the same run after run whatever else
the machine does. A server is counted between `callgrind_control -z` (zero) and `-d` (dump)
around a load phase; a loop is counted at two lengths and the difference taken, so start-up
and set-up cancel out.

Run as a script, it is that loop: ``callgrind.py raw|parse|sign N`` issues N leaves with a
fresh throwaway CA (``raw``: `issue_leaf` with the CSR check, the bench's raw unit;
``parse``: `parse_csr_key` on the PEM; ``sign``: `issue_leaf` on a checked CSR).
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

__all__ = [
    "LOOP_KINDS",
    "CallgrindError",
    "dump",
    "latest_total",
    "loop_instructions",
    "require_valgrind",
    "total_instructions",
    "valgrind_prefix",
    "zero",
]

LOOP_KINDS: Final = ("raw", "parse", "sign")
_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


class CallgrindError(Exception):
    """valgrind is missing, or a run or its output file is not what was expected."""


def require_valgrind() -> None:
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        raise CallgrindError(
            f"{' and '.join(missing)} not found on PATH: install valgrind "
            "(Debian: apt-get install valgrind)"
        )


def valgrind_prefix(out_file: Path) -> list[str]:
    """The command prefix that runs a program under callgrind; `out_file` may hold %p."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", "-q"]


def total_instructions(path: Path) -> int:
    """The instruction total of one callgrind output file."""
    match = _TOTAL.search(path.read_bytes())
    if match is None:
        raise CallgrindError(f"{path}: no 'summary:' or 'totals:' line (not a callgrind file?)")
    return int(match.group(1))


def latest_total(directory: Path, pid: int) -> int:
    """The total of the newest dump of process `pid` (files ``<name>.<pid>.<n>``)."""
    dumps = [p for p in directory.glob(f"*.{pid}.*") if p.suffix[1:].isdigit()]
    if not dumps:
        raise CallgrindError(f"no callgrind dump of process {pid} in {directory}")
    return total_instructions(max(dumps, key=lambda p: int(p.suffix[1:])))


def zero(pid: int) -> None:
    _control("-z", pid)


def dump(pid: int) -> None:
    """Ask for a dump; callgrind_control returns once it is written."""
    _control("-d", pid)


def _control(flag: str, pid: int) -> None:
    done = subprocess.run(
        ["callgrind_control", flag, str(pid)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise CallgrindError(f"callgrind_control {flag} {pid} failed: {done.stderr.strip()}")


def loop_instructions(kind: str, short: int, long: int) -> int:
    """Instructions per iteration of the `kind` loop, from runs of `short` and `long`."""
    if kind not in LOOP_KINDS or not 0 < short < long:
        raise ValueError(f"loop {kind!r} with {short} < {long} iterations")
    totals = []
    with tempfile.TemporaryDirectory(prefix="meshgate-callgrind-") as tmp:
        for count in (short, long):
            out = Path(tmp) / f"loop.{count}"
            subprocess.run(
                [*valgrind_prefix(out), sys.executable, __file__, kind, str(count)],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=1800,
                # The same string hashes in both runs: dict and set layouts (and so their
                # instruction counts) do not differ between the two lengths by chance.
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            totals.append(total_instructions(out))
    return round((totals[1] - totals[0]) / (long - short))


def _loop(kind: str, count: int) -> None:
    from cryptography.hazmat.primitives import serialization

    from mesh_ca.ca_dir import init_ca_dir
    from mesh_ca.issuance import issue_leaf, make_csr, parse_csr_key
    from meshgate.identity import SpiffeId
    from meshgate.keys import generate_key

    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="meshgate-callgrind-ca-") as tmp:
        ca = init_ca_dir(Path(tmp) / "ca", "bench.example", now)
    sid = SpiffeId.workload(ca.trust_domain, "bench", "raw")
    csrs = [make_csr(generate_key()) for _ in range(64)]
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in csrs]
    keys = [parse_csr_key(pem)[1] for pem in pems]
    # No cyclic collection inside the loop (the loop makes no cycles; refcounting frees
    # everything): a full collection in one of the two runs and not the other moved the
    # difference by ~250 k instructions a leaf.
    gc.collect()
    gc.disable()
    for index in range(count):
        i = index % 64
        if kind == "raw":
            issue_leaf(csrs[i], sid, ca.signer, now)
        elif kind == "parse":
            parse_csr_key(pems[i])
        else:
            issue_leaf(csrs[i], sid, ca.signer, now, csr_verified=True, public_key=keys[i])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in LOOP_KINDS or not sys.argv[2].isdigit():
        sys.exit(f"usage: callgrind.py {'|'.join(LOOP_KINDS)} N")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    _loop(sys.argv[1], int(sys.argv[2]))
