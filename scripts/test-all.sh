#!/usr/bin/env bash
# Runs every test of the project on a fresh machine:
#   1. starts PostgreSQL and RabbitMQ when they are installed but not running;
#   2. builds the workspace and runs the Rust tests (unit + integration);
#   3. sets up the Python virtualenvs (clients/requirements*.txt) and the npm
#      packages of clients/js, then runs the compatibility suite (pytest)
#      against the real server binary, on SQLite and PostgreSQL.
# Every stage runs even when an earlier one failed; the exit code is non-zero
# when any stage failed. The runners' own summaries are printed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
failed=()

stage() { printf '\n==== %s ====\n' "$*"; }

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
ensure_venv() { # dir requirements
    local dir=$1 req=$2 stamp
    stamp="$dir/.requirements.sha256"
    if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && sha256sum --quiet -c "$stamp" 2>/dev/null; then
        return 0
    fi
    echo "setting up $dir from $req"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir" &&
        "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req" &&
        sha256sum "$req" >"$stamp"
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
        clients/.venv/bin/python -m pytest clients/tests -p no:cacheprovider -rfE
    rc=$?
    # pytest exits 5 when it collected nothing: that is a failure here.
    [ "$rc" = 0 ] || failed+=("pytest (exit $rc)")
else
    failed+=("pytest (not run)")
fi

stage "summary"
if [ ${#failed[@]} -eq 0 ]; then
    echo "all stages passed"
    exit 0
fi
printf 'failed: %s\n' "${failed[@]}"
exit 1
