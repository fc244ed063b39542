"""`mesh-sidecar` with a CPU-time sampler, for the ledger section of scripts/bench.py.

    python -m scripts.benchlib.sampled_sidecar run --config b.toml

SIGPROF fires every millisecond of the process's CPU time (`ITIMER_PROF`: user + system,
so time spent waiting costs no samples); its handler records the interrupted Python stack
of the main thread as (file, function) pairs, leaf first. A system call or an OpenSSL
call shows up in the Python frame that made it, as the handler runs right after it
returns. SIGUSR1 clears the counts and starts the timer, SIGUSR2 stops it and writes the
counts as JSON next to the config (``b.samples.json``). The handler costs ~20 µs a sample
(~2 % of the CPU at 1 kHz), and each signal wakes trio's wakeup descriptor once.
"""

from __future__ import annotations

import collections
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from sidecar.cli import main as sidecar_main

_INTERVAL = 0.001
_DEPTH = 48


def _install(out: Path) -> None:
    counts: collections.Counter[tuple[tuple[str, str], ...]] = collections.Counter()

    def sample(signum: int, frame: FrameType | None) -> None:
        stack: list[tuple[str, str]] = []
        while frame is not None and len(stack) < _DEPTH:
            code = frame.f_code
            stack.append((code.co_filename, code.co_name))
            frame = frame.f_back
        counts[tuple(stack)] += 1

    def start(signum: int, frame: FrameType | None) -> None:
        counts.clear()
        signal.setitimer(signal.ITIMER_PROF, _INTERVAL, _INTERVAL)

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        rows = [[[list(f) for f in stack], n] for stack, n in counts.items()]
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"interval_seconds": _INTERVAL, "stacks": rows}))
        tmp.replace(out)

    signal.signal(signal.SIGPROF, sample)
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main(argv: list[str]) -> int:
    config = Path(argv[argv.index("--config") + 1])
    _install(config.with_suffix(".samples.json"))
    return sidecar_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
