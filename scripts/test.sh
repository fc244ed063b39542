#!/usr/bin/env bash
# Set up everything on a fresh machine and run every check: ruff, mypy, pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
cd "$MESHGATE_ROOT"
ensure_debian_packages
ensure_venv

say "ruff"
ruff check .
ruff format --check .
say "mypy (strict)"
mypy
say "pytest"
# -n 2: the machine has two cores; integration tests use free ports, so they run side by side.
exec pytest -n 2 --dist loadfile "$@"
