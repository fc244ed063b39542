#!/usr/bin/env bash
# Bootstrap a meshgate CA: root + intermediate (ECDSA P-256), key files 0600, trust bundle
# (PEM and SPIFFE JSON), ca.toml and the state store. Works on a fresh clone (sets up .venv).
#
# Usage: scripts/bootstrap-ca.sh TRUST_DOMAIN DIR [--force] [--passphrase-file FILE] [--leaf-ttl 1h]
#        scripts/bootstrap-ca.sh --trust-domain TRUST_DOMAIN --dir DIR [...]
# Refuses to overwrite an existing CA unless --force. Keys are encrypted when a passphrase
# is given (--passphrase-file, or $MESH_CA_PASSPHRASE).
set -euo pipefail
source "$(dirname "$0")/lib/setup.sh"

usage() { sed -n '4,5p' "$0" | sed 's/^# //' >&2; exit 2; }

args=()
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --trust-domain|--dir|--passphrase-file|--leaf-ttl)
            [ $# -ge 2 ] || { echo "bootstrap-ca.sh: $1 needs a value" >&2; exit 2; }
            args+=("$1" "$2"); shift 2 ;;
        --force) args+=("$1"); shift ;;
        -*) echo "bootstrap-ca.sh: unknown option $1" >&2; usage ;;
        *) positional+=("$1"); shift ;;
    esac
done
case ${#positional[@]} in
    0) ;;
    2) args+=(--trust-domain "${positional[0]}" --dir "${positional[1]}") ;;
    *) echo "bootstrap-ca.sh: give TRUST_DOMAIN and DIR (or --trust-domain/--dir)" >&2; usage ;;
esac

ensure_venv
exec mesh-ca init "${args[@]}"
