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
    # SoftHSM2: the PKCS#11 token the HSM-key tests and `bench.py ca-hsm` keep CA keys in.
    command -v softhsm2-util >/dev/null || missing+=(softhsm2)
    # promtool: tests check and unit-test the shipped alert rules (docs/monitoring/).
    command -v promtool >/dev/null || missing+=(prometheus)
    # Headless Chromium: the dashboard test opens `mesh-ca dashboard` in a real browser.
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
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
        $sudo service prometheus stop >/dev/null 2>&1 || true
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

ensure_c_toolchain() {
    # mypyc (scripts/build_compiled.sh) needs a C compiler and the headers of the venv's Python.
    local include
    include="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    local missing=()
    command -v gcc >/dev/null || missing+=(gcc)
    [ -f "$include/Python.h" ] || missing+=(python3-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
        [ -f "$include/Python.h" ] || { say "no Python.h in $include: install the headers of $("$VENV/bin/python" -c 'import sys; print(sys.executable)')"; return 1; }
    fi
}

check_compiled() {
    # meshgate/http compiled with mypyc (opt-in, meshgate/native.py): build it, then the unit
    # tests again against it. Coverage stays the pure run's: compiled code has no Python lines.
    ensure_c_toolchain
    say "meshgate/http compiled with mypyc: build, then the unit tests against it"
    "$VENV/bin/python" "$MESHGATE_ROOT/scripts/build_compiled.py"
    (cd "$MESHGATE_ROOT" && MESHGATE_HTTP_BUILD=compiled "$VENV/bin/python" -m pytest -q \
        -p no:cacheprovider -n 2 -m unit)
}

check_min_versions() {
    # The unit tests against the lowest versions pyproject.toml allows, in a venv of their
    # own, so the lower bounds are known to work. The project runs from the source tree.
    local venv="$MESHGATE_ROOT/.venv-min"
    local stamp="$venv/.meshgate-pins"
    local pins
    pins="$("$VENV/bin/python" "$MESHGATE_ROOT/scripts/lib/min_versions.py")"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$pins" ]; then
        say "installing the minimum versions into $venv"
        rm -rf "$venv"
        "$VENV/bin/python" -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install -q --disable-pip-version-check $pins \
            pytest pytest-trio pytest-timeout hypothesis
        printf '%s' "$pins" > "$stamp"
    fi
    say "unit tests with the minimum versions: $(echo $pins | tr '\n' ' ')"
    (cd "$MESHGATE_ROOT" && PYTHONPATH="$MESHGATE_ROOT" MESHGATE_HTTP_BUILD=pure \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider -m unit)
}

check_wheel() {
    # What a user installs: build the wheel, install it alone into a fresh venv, run the CLIs.
    local work
    work="$(mktemp -d)"
    say "building the wheel and installing it into a fresh virtualenv"
    "$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
        -w "$work/dist" "$MESHGATE_ROOT"
    "$VENV/bin/python" -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$work"/dist/*.whl
    (
        set -e
        cd "$work"
        venv/bin/mesh-ca --help >/dev/null
        venv/bin/mesh-ca --version
        venv/bin/mesh-sidecar --version | tee version.txt
        # The wheel holds no build script: --version must not point at one.
        grep -q "an installed package runs pure Python" version.txt || exit 1
        venv/bin/mesh-sidecar policy init policies --service orders >/dev/null
        venv/bin/mesh-sidecar policy validate policies
        venv/bin/mesh-sidecar policy test policies >/dev/null
        # Without the postgres extra, asking for PostgreSQL is one clear line, not a traceback.
        if venv/bin/mesh-ca init --dir ca --trust-domain example.org --store postgres \
            --db-url postgresql://localhost/none 2>err.txt; then
            echo "mesh-ca init --store postgres worked without psycopg" >&2; exit 1
        fi
        grep -q "meshgate\[postgres\]" err.txt || { cat err.txt >&2; exit 1; }
        [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt >&2; exit 1; }
        # Likewise CA keys in a PKCS#11 token without the pkcs11 extra: one line, exit 7.
        rc=0
        MESH_CA_HSM_PIN=0000 venv/bin/mesh-ca init --dir ca-hsm --trust-domain example.org \
            --keys pkcs11 --pkcs11-module libsofthsm2.so --token-label none \
            --pin-env MESH_CA_HSM_PIN 2>err.txt || rc=$?
        [ "$rc" -eq 7 ] || { echo "init --keys pkcs11 without python-pkcs11 exited $rc" >&2; cat err.txt >&2; exit 1; }
        grep -q "meshgate\[pkcs11\]" err.txt || { cat err.txt >&2; exit 1; }
        [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt >&2; exit 1; }
    )
    rm -rf "$work"
    say "the wheel installs and runs"
}
