#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, bootstrap a CA in a scratch directory,
# issue a first X509-SVID offline, and show what was made. (A later version runs a mesh.)
# Usage: scripts/demo.sh [WORKDIR]   (default: a new temporary directory)
set -euo pipefail
export MESHGATE_WITH_PEERS=0 MESHGATE_WITH_POSTGRES=0
source "$(dirname "$0")/lib/setup.sh"
ensure_debian_packages
ensure_venv

work="${1:-$(mktemp -d -t meshgate-demo.XXXXXX)}"
mkdir -p "$work"
td="demo.meshgate.test"
sid="spiffe://$td/ns/demo/svc/hello"

say "bootstrapping a CA for $td in $work/ca"
bash "$MESHGATE_ROOT/scripts/bootstrap-ca.sh" "$td" "$work/ca" --force

say "issuing a first SVID for $sid"
mesh-ca issue --dir "$work/ca" --spiffe-id "$sid" --out "$work/hello" --ttl 1h

say "what was made"
openssl x509 -in "$work/hello/svid.pem" -noout -serial -enddate -ext subjectAltName,keyUsage,extendedKeyUsage,basicConstraints
openssl verify -x509_strict -purpose sslclient -CAfile "$work/ca/bundle.pem" \
    -untrusted "$work/ca/intermediate.pem" "$work/hello/svid.pem"
echo
echo "files and modes:"
for f in "$work"/ca/* "$work"/hello/*; do
    printf '  %s  %s\n' "$(stat -c '%A' "$f")" "$f"
done

say "a one-time join token (for a sidecar bootstrap; valid 10 minutes)"
mesh-ca token create --dir "$work/ca" --spiffe-id "spiffe://$td/ns/demo/svc/world" >/dev/null

say "mesh-ca status"
mesh-ca status --dir "$work/ca"
