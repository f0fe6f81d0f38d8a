#!/usr/bin/env bash
# Runs every test of the project on a fresh machine:
#   1. starts PostgreSQL and RabbitMQ when they are installed but not running;
#   2. builds the workspace and runs the Rust tests (unit + integration);
#   3. sets up the Python virtualenvs (clients/requirements*.txt) and the npm
#      packages of clients/js, then runs the compatibility suite (pytest)
#      against the real server binary, on SQLite and PostgreSQL;
#   4. installs nginx when missing (Debian's package, as root), sets up the
#      Python 3.10 virtualenv of vantage6-server 4.15.2 and runs the
#      end-to-end suite (clients/e2e): the real vantage6 REST API and node
#      socket code, three instances behind nginx, on SQLite and PostgreSQL;
#   5. sets up the Python 3.13 virtualenv of vantage6 5.0.3 (clients/.venv-v5)
#      and runs the 5.x compatibility suite (clients/tests_v5) on SQLite and
#      PostgreSQL, then its end-to-end suite (clients/e2e_v5): real HQ, the
#      real node socket code, two instances and a mixed fleet with HQ's own
#      Flask-SocketIO.
# Every stage runs even when an earlier one failed; the exit code is non-zero
# when any stage failed. The runners' own summaries are printed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
failed=()

stage() { printf '\n==== %s (at %d s) ====\n' "$*" "$SECONDS"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        port_open "$1" && return 0
        sleep 0.5
    done
    return 1
}

ensure_postgres() {
    port_open 5432 && return 0
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        echo "starting PostgreSQL"
        for v in /etc/postgresql/*; do
            pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start || true
        done
        wait_port 5432 60 && return 0
    fi
    echo "PostgreSQL is not running on 127.0.0.1:5432 and could not be started" >&2
    return 1
}

ensure_rabbitmq() {
    port_open 5672 && return 0
    if command -v rabbitmq-server >/dev/null; then
        echo "starting RabbitMQ"
        rabbitmq-server -detached || true
        wait_port 5672 90 && return 0
    fi
    echo "RabbitMQ is not running on 127.0.0.1:5672 and could not be started" >&2
    return 1
}

# A virtualenv that is rebuilt when its requirements file changes.
ensure_venv() { # dir requirements [python]
    local dir=$1 req=$2 python=${3:-$PYTHON} stamp
    stamp="$dir/.requirements.sha256"
    if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && sha256sum --quiet -c "$stamp" 2>/dev/null; then
        return 0
    fi
    echo "setting up $dir from $req"
    rm -rf "$dir"
    "$python" -m venv "$dir" &&
        "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req" &&
        sha256sum "$req" >"$stamp"
}

# The first Python interpreter of version $1 (major.minor); $2, when set, is tried first.
find_python() { # version [override]
    local v=$1 c
    for c in "${2:-}" "python$v" "$(command -v pyenv >/dev/null && pyenv root)/versions/$v"*/bin/"python$v" \
        "$HOME"/.pyenv/versions/"$v"*/bin/"python$v" "/usr/bin/python$v" "/usr/local/bin/python$v"; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$v'" 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

# vantage6-server 4.15.2 runs on Python 3.10 only (PYTHON310 overrides).
find_python310() { find_python 3.10 "${PYTHON310:-}"; }

# vantage6 5.0.3 (HQ, node) needs Python 3.13 (PYTHON313 overrides).
find_python313() { find_python 3.13 "${PYTHON313:-}"; }

ensure_nginx() {
    if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing nginx (Debian package nginx-light)"
        # the package must not start a system-wide nginx on port 80
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light; }
        local rc=$?
        rm -f /usr/sbin/policy-rc.d
        return $rc
    fi
    echo "nginx is not installed and cannot be installed here (needs root and apt-get)" >&2
    return 1
}

stage "services"
ensure_postgres || failed+=("postgres")
ensure_rabbitmq || failed+=("rabbitmq")

stage "cargo build"
if ! cargo build --workspace --all-targets --locked; then
    failed+=("cargo build")
fi

stage "cargo test"
cargo test --workspace --locked || failed+=("cargo test")

stage "python and npm dependencies"
deps_ok=1
ensure_venv clients/.venv clients/requirements.txt || deps_ok=0
ensure_venv clients/.venv-sio518 clients/requirements-socketio-latest.txt || deps_ok=0
if command -v npm >/dev/null; then
    (cd clients/js && npm ci --no-audit --no-fund --loglevel=error) || deps_ok=0
else
    echo "npm is not installed: the JavaScript client tests cannot run" >&2
    deps_ok=0
fi
[ "$deps_ok" = 1 ] || failed+=("dependencies")

stage "compatibility suite (pytest)"
if [ "$deps_ok" = 1 ]; then
    V6_SOCKETIO_BIN="$ROOT/target/debug/v6-socketio" \
        clients/.venv/bin/python -m pytest clients/tests -p no:cacheprovider -rfEs --durations=15
    rc=$?
    # pytest exits 5 when it collected nothing: that is a failure here.
    [ "$rc" = 0 ] || failed+=("pytest (exit $rc)")
else
    failed+=("pytest (not run)")
fi

stage "end-to-end suite (vantage6 4.15.2 + nginx, pytest)"
e2e_ok=1
ensure_nginx || { failed+=("nginx"); e2e_ok=0; }
if PY310=$(find_python310); then
    ensure_venv clients/.venv-e2e clients/requirements-e2e.txt "$PY310" || { failed+=("e2e dependencies"); e2e_ok=0; }
else
    echo "Python 3.10 not found (vantage6-server 4.15.2 needs it): set PYTHON310 or install python3.10" >&2
    failed+=("python3.10")
    e2e_ok=0
fi
[ "$deps_ok" = 1 ] || e2e_ok=0 # the UI listener is clients/js
if [ "$e2e_ok" = 1 ]; then
    V6_SOCKETIO_BIN="$ROOT/target/debug/v6-socketio" \
        clients/.venv-e2e/bin/python -m pytest clients/e2e -p no:cacheprovider -rfEs --durations=15
    rc=$?
    [ "$rc" = 0 ] || failed+=("e2e pytest (exit $rc)")
else
    failed+=("e2e pytest (not run)")
fi

stage "vantage6 5.x compatibility suite (HQ 5.0.3 models, Keycloak stand-in, pytest)"
v5_ok=1
if PY313=$(find_python313); then
    ensure_venv clients/.venv-v5 clients/requirements-v5.txt "$PY313" || { failed+=("v5 dependencies"); v5_ok=0; }
else
    echo "Python 3.13 not found (vantage6 5.0.3 needs it): set PYTHON313 or install python3.13" >&2
    failed+=("python3.13")
    v5_ok=0
fi
if [ "$v5_ok" = 1 ]; then
    V6_SOCKETIO_BIN="$ROOT/target/debug/v6-socketio" \
        clients/.venv-v5/bin/python -m pytest clients/tests_v5 -p no:cacheprovider -rfEs --durations=15
    rc=$?
    [ "$rc" = 0 ] || failed+=("v5 pytest (exit $rc)")
else
    failed+=("v5 pytest (not run)")
fi

stage "vantage6 5.x end-to-end suite (HQ 5.0.3, real node code, pytest)"
if [ "$v5_ok" = 1 ]; then
    V6_SOCKETIO_BIN="$ROOT/target/debug/v6-socketio" \
        clients/.venv-v5/bin/python -m pytest clients/e2e_v5 -p no:cacheprovider -rfEs --durations=15
    rc=$?
    [ "$rc" = 0 ] || failed+=("e2e v5 pytest (exit $rc)")
else
    failed+=("e2e v5 pytest (not run)")
fi

stage "summary"
if [ ${#failed[@]} -eq 0 ]; then
    echo "all stages passed"
    exit 0
fi
printf 'failed: %s\n' "${failed[@]}"
exit 1
