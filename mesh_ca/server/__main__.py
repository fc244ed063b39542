"""``python -m mesh_ca.server --dir DIR [--listen HOST:PORT]``: the same as ``mesh-ca serve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mesh_ca.server.main import serve_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh_ca.server")
    parser.add_argument("--dir", type=Path, required=True, help="the CA directory")
    parser.add_argument("--listen", help="HOST:PORT (default from ca.toml; port 0 picks one)")
    parser.add_argument("--passphrase-file", type=Path, help="file holding the key passphrase")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
