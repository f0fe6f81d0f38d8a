#!/usr/bin/env bash
# The comparison of issue 11 (clients/bench/compare.py): every load-generator scenario against
# (a) two v6-socketio instances over RabbitMQ, (b) one with no broker, (c) two vantage6-server
# 4.15.2 instances under uWSGI as its docker image runs them; prints a Markdown table and writes
# it with an SVG chart and the results next to bench-results/<date>/results.jsonl.
#   ./scripts/bench.sh --quick      small sizes, to try it out
#   ./scripts/bench.sh --help       every option (--only, --scenarios, --out, --from-results)
# Runs in clients/.venv-bench (Python 3.10: vantage6-server 4.15.2 needs it), created here from
# clients/requirements-bench.txt when missing or when that file (or requirements-e2e.txt,
# which it includes) changed. PYTHON310 names the interpreter when it is not found.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=clients/.venv-bench
REQS=(clients/requirements-bench.txt clients/requirements-e2e.txt)

find_python310() {
    local c
    for c in "${PYTHON310:-}" python3.10 "$(command -v pyenv >/dev/null && pyenv root)"/versions/3.10*/bin/python3.10 \
        "$HOME"/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
        [ -n "$c" ] || continue
        if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

stamp="$VENV/.requirements.sha256"
if ! { [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && sha256sum --quiet -c "$stamp" 2>/dev/null; }; then
    py310=$(find_python310) || {
        echo "Python 3.10 not found (vantage6-server 4.15.2 needs it): set PYTHON310 or install python3.10" >&2
        exit 1
    }
    echo "setting up $VENV from ${REQS[0]}" >&2
    rm -rf "$VENV"
    "$py310" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "${REQS[0]}"
    sha256sum "${REQS[@]}" >"$stamp"
fi
exec "$VENV/bin/python" clients/bench/compare.py "$@"
