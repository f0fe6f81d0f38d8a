#!/usr/bin/env bash
# Runs every test of the project on a fresh machine:
#   1. starts PostgreSQL and RabbitMQ when they are installed but not running;
#   2. builds the workspace, runs the Rust tests (unit + integration), then
#      `cargo fmt --check` and `cargo clippy -D warnings` (findings fail);
#      meanwhile, in the background, sets up the Python virtualenvs
#      (clients/requirements*.txt), the npm packages of clients/js and nginx
#      (Debian's package, as root, when missing);
#   3. runs the compatibility suite (pytest) against the real server binary,
#      on SQLite and PostgreSQL, as two concurrent pytest processes: the
#      modules that use RabbitMQ (marker `broker`) and all others;
#   4. runs the end-to-end suite (clients/e2e): the real vantage6 REST API
#      and node socket code, three instances behind nginx, one concurrent
#      pytest process per database backend (each deployment has a RabbitMQ
#      virtual host of its own);
#   5. runs the vantage6 5.x compatibility suite (clients/tests_v5, in the
#      Python 3.13 virtualenv clients/.venv-v5) on SQLite and PostgreSQL, then
#      the 5.x end-to-end suite (clients/e2e_v5): real HQ 5.0.3, the real
#      vantage6-node 5.0.3 socket code, two instances and a mixed fleet with
#      HQ's own Flask-SocketIO.
# Every stage runs even when an earlier one failed; the exit code is non-zero
# when any stage failed. The runners' own summaries are printed, each
# runner's output in one piece once it has finished (logs and pytest's
# temporary directories stay in target/test-all/). A pytest run fails when a
# test was skipped because something is missing here (a tool, a virtualenv, a
# service: clients/skip_policy.py) unless V6_TEST_ALLOW_MISSING names it
# (`V6_TEST_ALLOW_MISSING=kubectl,systemd-analyze`, or `all`); skips by design
# (a test meant for another backend or process) never fail it.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
failed=()

LOGS="$ROOT/target/test-all"
mkdir -p "$LOGS"
stage_names=()
stage_starts=()
stage() {
    printf '\n==== %s (at %d s) ====\n' "$*" "$SECONDS"
    stage_names+=("$*")
    stage_starts+=("$SECONDS")
}

# Concurrent runners: `runner_start NAME CMD...` runs CMD in the background
# with its output in $LOGS/NAME.log; `runners_finish` waits for all of them,
# prints each log whole and adds every runner that exited non-zero (pytest
# exits 5 when it collected nothing: a failure too) to `failed`, and the
# names of what its skips found missing to `missing_tools`.
runner_names=()
runner_pids=()
missing_tools=()
runner_start() {
    local name=$1
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    runner_names+=("$name")
    runner_pids+=("$!")
    echo "started $name (pid $!): $*"
}
runners_finish() {
    local i rc listed names
    for i in "${!runner_pids[@]}"; do
        wait "${runner_pids[$i]}"
        rc=$?
        printf '\n---- %s: exit %d (finished by %d s) ----\n' "${runner_names[$i]}" "$rc" "$SECONDS"
        cat "$LOGS/${runner_names[$i]}.log"
        [ "$rc" = 0 ] && continue
        failed+=("${runner_names[$i]} (exit $rc)")
        # the line clients/skip_policy.py (FAIL_LINE) prints when such skips failed the run
        listed=$(sed -n 's/^skips for missing tools fail this run: \([^ ]*\) .*/\1/p' \
            "$LOGS/${runner_names[$i]}.log")
        if [ -n "$listed" ]; then
            IFS=, read -ra names <<<"$listed"
            missing_tools+=("${names[@]}")
        fi
    done
    runner_names=()
    runner_pids=()
}

# Whether V6_TEST_ALLOW_MISSING (names, comma-separated, or `all`) allows $1 to be missing.
allowed_missing() {
    local name names
    IFS=, read -ra names <<<"${V6_TEST_ALLOW_MISSING:-}"
    for name in "${names[@]}"; do
        name=${name// /}
        if [ "$name" = all ] || [ "$name" = "$1" ]; then
            return 0
        fi
    done
    return 1
}

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

# clients/js/node_modules, reinstalled (npm ci) when package-lock.json changes.
# Left alone otherwise: npm ci empties node_modules first, also when it is a
# symlink to a copy other checkouts use.
ensure_node_modules() {
    if (cd clients/js && sha256sum --quiet -c node_modules/.package-lock.sha256) 2>/dev/null; then
        return 0
    fi
    (cd clients/js && npm ci --no-audit --no-fund --loglevel=error &&
        sha256sum package-lock.json >node_modules/.package-lock.sha256)
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

# `docker compose config` checks deploy/compose.yaml (clients/tests/test_deploy_material.py);
# without Docker's compose plugin, Debian's docker-compose does (no daemon needed).
ensure_compose() {
    if docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing docker-compose (Debian package, to validate deploy/compose.yaml)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose; }
        return $?
    fi
    echo "neither \`docker compose\` nor docker-compose is installed, and it cannot be installed here (needs root and apt-get)" >&2
    return 1
}

stage "services"
ensure_postgres || failed+=("postgres")
ensure_rabbitmq || failed+=("rabbitmq")

# Python, npm, nginx and docker-compose while cargo builds (network and disk, little CPU).
# Its results are read from files: the subshell cannot change `failed`.
setup_dependencies() {
    local deps_ok=1 e2e_ok=1 py310 py313
    ensure_venv clients/.venv clients/requirements.txt || deps_ok=0
    ensure_venv clients/.venv-sio518 clients/requirements-socketio-latest.txt || deps_ok=0
    if command -v npm >/dev/null; then
        ensure_node_modules || deps_ok=0
    else
        echo "npm is not installed: the JavaScript client tests cannot run" >&2
        deps_ok=0
    fi
    [ "$deps_ok" = 1 ] || echo "dependencies" >>"$LOGS/deps.failed"
    # nginx: the end-to-end suite and `nginx -t` of the compatibility suite;
    # compose: its check of deploy/compose.yaml (without them those checks
    # skip, saying so, and both this stage and that pytest run fail unless
    # V6_TEST_ALLOW_MISSING names them)
    ensure_nginx || { echo "nginx" >>"$LOGS/deps.failed"; e2e_ok=0; }
    ensure_compose || echo "docker-compose" >>"$LOGS/deps.failed"
    if py310=$(find_python310); then
        ensure_venv clients/.venv-e2e clients/requirements-e2e.txt "$py310" ||
            { echo "e2e dependencies" >>"$LOGS/deps.failed"; e2e_ok=0; }
    else
        echo "Python 3.10 not found (vantage6-server 4.15.2 needs it): set PYTHON310 or install python3.10" >&2
        echo "python3.10" >>"$LOGS/deps.failed"
        e2e_ok=0
    fi
    if py313=$(find_python313); then
        if ensure_venv clients/.venv-v5 clients/requirements-v5.txt "$py313"; then
            touch "$LOGS/v5-deps.ok"
        else
            echo "v5 dependencies" >>"$LOGS/deps.failed"
        fi
    else
        echo "Python 3.13 not found (vantage6 5.0.3 needs it): set PYTHON313 or install python3.13" >&2
        echo "python3.13" >>"$LOGS/deps.failed"
    fi
    [ "$deps_ok" = 1 ] || e2e_ok=0 # the UI listener is clients/js
    [ "$deps_ok" = 1 ] && touch "$LOGS/deps.ok"
    [ "$e2e_ok" = 1 ] && touch "$LOGS/e2e-deps.ok"
    return 0
}
rm -f "$LOGS/deps.failed" "$LOGS/deps.ok" "$LOGS/e2e-deps.ok" "$LOGS/v5-deps.ok"
echo "setting up the Python virtualenvs, npm packages and nginx in the background ($LOGS/dependencies.log)"
setup_dependencies >"$LOGS/dependencies.log" 2>&1 &
deps_pid=$!

stage "cargo build"
if ! cargo build --workspace --all-targets --locked; then
    failed+=("cargo build")
fi

stage "cargo test"
cargo test --workspace --locked || failed+=("cargo test")
# the adapter crate without lapin (its default `amqp` feature off): the in-memory broker
cargo test -p socketioxide-amqp --no-default-features --lib --test memory --locked ||
    failed+=("cargo test (socketioxide-amqp --no-default-features)")

stage "cargo fmt and clippy"
cargo fmt --all --check || failed+=("cargo fmt (run \`cargo fmt\`)")
cargo clippy --workspace --all-targets --locked -- -D warnings || failed+=("cargo clippy")

stage "python and npm dependencies"
wait "$deps_pid"
cat "$LOGS/dependencies.log"
if [ -f "$LOGS/deps.failed" ]; then
    while read -r what; do
        # the tools whose absence only skips checks (skip_missing names) may be allowed
        case $what in
        nginx | docker-compose)
            if allowed_missing "$what"; then
                echo "$what is missing: allowed by V6_TEST_ALLOW_MISSING"
                continue
            fi
            missing_tools+=("$what")
            ;;
        esac
        failed+=("$what")
    done <"$LOGS/deps.failed"
fi

export V6_SOCKETIO_BIN="$ROOT/target/debug/v6-socketio"
PYTEST=(-p no:cacheprovider -rfEs --durations=15)

stage "compatibility suite (pytest, two concurrent processes)"
if [ -f "$LOGS/deps.ok" ]; then
    runner_start "pytest-broker" clients/.venv/bin/python -m pytest clients/tests "${PYTEST[@]}" \
        -m broker --basetemp "$LOGS/pytest-broker"
    runner_start "pytest-other" clients/.venv/bin/python -m pytest clients/tests "${PYTEST[@]}" \
        -m "not broker" --basetemp "$LOGS/pytest-other"
    runners_finish
else
    failed+=("pytest (not run)")
fi

stage "end-to-end suite (vantage6 4.15.2 + nginx, pytest, one process per backend)"
if [ -f "$LOGS/e2e-deps.ok" ]; then
    for backend in sqlite postgres; do
        # the race stress runs once, in the SQLite process
        runner_start "e2e-$backend" env V6_TEST_BACKENDS="$backend" V6_TEST_RACE_BACKEND=sqlite \
            clients/.venv-e2e/bin/python -m pytest clients/e2e "${PYTEST[@]}" --basetemp "$LOGS/e2e-$backend"
    done
    runners_finish
else
    failed+=("e2e pytest (not run)")
fi

# The 5.x suites run after the 4.x ones: the compatibility suite shares the
# default virtual host and the flask-socketio exchange with the 4.x broker
# tests (each end-to-end fleet has a virtual host of its own). One at a time:
# `v5_suite RUNNER DIR` runs clients/DIR in clients/.venv-v5.
v5_suite() {
    if [ -f "$LOGS/v5-deps.ok" ]; then
        runner_start "$1" clients/.venv-v5/bin/python -m pytest "clients/$2" "${PYTEST[@]}" \
            --basetemp "$LOGS/$1"
        runners_finish
    else
        failed+=("$1 (not run)")
    fi
}

stage "vantage6 5.x compatibility suite (HQ 5.0.3 models, Keycloak stand-in, pytest)"
v5_suite pytest-v5 tests_v5

stage "vantage6 5.x end-to-end suite (HQ 5.0.3, real node code, pytest)"
v5_suite e2e-v5 e2e_v5

stage "summary"
for i in "${!stage_names[@]}"; do
    end=${stage_starts[$((i + 1))]:-$SECONDS}
    printf '%6d s  %s\n' "$((end - stage_starts[i]))" "${stage_names[$i]}"
done
printf '%6d s  in all\n' "$SECONDS"
if [ ${#failed[@]} -eq 0 ]; then
    echo "all stages passed"
    exit 0
fi
printf 'failed: %s\n' "${failed[@]}"
if [ ${#missing_tools[@]} -gt 0 ]; then
    names=$(printf '%s\n' "${missing_tools[@]}" | sort -u | paste -sd, -)
    echo "missing here: $names. Install them, or allow their absence explicitly:" \
        "V6_TEST_ALLOW_MISSING=$names (or =all) ./scripts/test-all.sh"
fi
exit 1
