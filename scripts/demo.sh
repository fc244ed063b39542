#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, bootstrap a CA in a scratch directory
# (scripts/bootstrap-ca.sh, 30 s SVIDs so rotation shows), serve it, start web → orders →
# payments each behind its own sidecar, and send traffic that shows what the mesh allows,
# denies and refuses; then a summary table and where the logs and metrics are.
# Takes about half a minute; stops everything it started (also on Ctrl-C or failure).
#
# Usage: scripts/demo.sh [--keep] [--work DIR] [--leaf-ttl 30s] [--color auto|always|never]
#   --keep   leave the mesh running at the end and print curl commands to poke it
# Exit status: 0 all steps behaved as described, 1 some did not (named), 2 no mesh started.
set -euo pipefail
export MESHGATE_WITH_PEERS=0 MESHGATE_WITH_POSTGRES=0
source "$(dirname "$0")/lib/setup.sh"

case "${1:-}" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

ensure_debian_packages  # openssl and curl: the demo shows what they see
ensure_venv
exec "$VENV/bin/python" "$MESHGATE_ROOT/scripts/demo/run_demo.py" "$@"
