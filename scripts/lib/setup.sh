# Shared set-up for scripts/test.sh, scripts/demo.sh and scripts/bench.py callers.
# Sourced, not run. Creates .venv with the project installed (editable, dev extras) and
# installs the Debian packages that real-peer tests and the PostgreSQL store need.
set -euo pipefail

MESHGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MESHGATE_VENV:-$MESHGATE_ROOT/.venv}"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

ensure_debian_packages() {
    # Only what is missing, so a warm machine skips apt entirely.
    local missing=()
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    # callgrind: bench.py ca-instructions and its test count instructions under valgrind.
    command -v callgrind_control >/dev/null || missing+=(valgrind)
    # Benchmark peers: only scripts/bench.py asks for them (MESHGATE_WITH_PEERS=1).
    if [ "${MESHGATE_WITH_PEERS:-0}" = 1 ]; then
        [ -x /usr/sbin/nginx ] || missing+=(nginx)
        [ -e /usr/share/nginx/modules-available/mod-stream.conf ] || [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
        [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
        command -v wrk >/dev/null || missing+=(wrk)
    fi
    if [ "${MESHGATE_WITH_POSTGRES:-1}" = 1 ]; then
        ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # Debian starts services on install; the project starts its own when it needs them.
        $sudo service nginx stop >/dev/null 2>&1 || true
        $sudo service haproxy stop >/dev/null 2>&1 || true
        $sudo service postgresql stop >/dev/null 2>&1 || true
    fi
}

ensure_venv() {
    local py="${PYTHON:-python3}"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv $VENV"
        "$py" -m venv "$VENV"
    fi
    local stamp="$VENV/.meshgate-installed"
    if [ ! -f "$stamp" ] || [ "$MESHGATE_ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing meshgate and its dev tools into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$MESHGATE_ROOT[dev]"
        touch "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}
