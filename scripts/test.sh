#!/usr/bin/env bash
# Set up everything on a fresh machine and run every check: ruff, mypy, pytest with coverage
# (a floor in pyproject.toml), the unit tests again against meshgate/http compiled with mypyc,
# the unit tests with the minimum dependency versions, and the built wheel installed alone
# into a fresh virtualenv.
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
say "pytest (with coverage)"
# -n 2: the machine has two cores; integration tests use free ports, so they run side by side.
# Pure Python (meshgate/native.py): coverage counts Python lines, which compiled code has not.
rm -f .coverage .coverage.*
MESHGATE_HTTP_BUILD=pure pytest -n 2 --dist loadfile --cov --cov-report=term "$@"
check_compiled
check_min_versions
check_wheel
