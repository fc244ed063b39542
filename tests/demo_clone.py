"""A virtualenv stand-in for running the user-facing scripts from tests without installing.

`scripts/lib/setup.sh` (`ensure_venv`) installs the project into ``$MESHGATE_VENV`` unless
its stamp file says it is installed. Tests point it at a directory of symlinks to the
running virtualenv plus a fresh stamp, so `scripts/demo.sh` and `scripts/bootstrap-ca.sh`
run exactly as on a warm machine, and never pip-install anything mid-test.
"""

from __future__ import annotations

import sys
from pathlib import Path

STAMP = ".meshgate-installed"


def installed_venv(directory: Path) -> Path:
    """`directory` made to look like the test's own virtualenv, already installed."""
    directory.mkdir(parents=True)
    for entry in Path(sys.prefix).iterdir():
        if entry.name != STAMP:
            (directory / entry.name).symlink_to(entry)
    (directory / STAMP).touch()
    return directory
