#!/usr/bin/env bash
# Compile the sans-I/O HTTP core (meshgate/http/*.py) with mypyc into meshgate/http/_compiled/.
# Opt-in: nothing needs it, the .py modules stay the source and the fallback, and a build is
# used only while it matches the sources (meshgate/native.py). Sets up .venv first (mypyc
# comes with the dev extra's mypy); needs a C compiler and the Python headers.
# Usage: scripts/build_compiled.sh [--check]
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"
cd "$MESHGATE_ROOT"
ensure_venv
ensure_c_toolchain
python scripts/build_compiled.py "$@"
