"""``python -m mesh_ca.server --dir DIR [--listen HOST:PORT]``: the same as ``mesh-ca serve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mesh_ca.cli import add_serve_flags
from mesh_ca.server.main import serve_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh_ca.server")
    parser.add_argument("--dir", type=Path, required=True, help="the CA directory")
    parser.add_argument("--listen", help="HOST:PORT (default from ca.toml; port 0 picks one)")
    parser.add_argument("--passphrase-file", type=Path, help="file holding the key passphrase")
    add_serve_flags(parser)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the main thread here")
    args = parser.parse_args(argv)
    if args.profile is None:
        return serve_main(args)
    import cProfile
    import time

    # CPU time, not wall: the loop waits in epoll and the bench compares CPU seconds.
    profiler = cProfile.Profile(time.process_time)
    try:
        return profiler.runcall(serve_main, args)
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
