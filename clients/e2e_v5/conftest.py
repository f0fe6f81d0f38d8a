"""Fixtures of the vantage6 5.x end-to-end suite: one fleet per database backend.

A fleet is what a 5.x operator runs: the Keycloak realm (here the loopback
stand-in, in this process), vantage6 HQ 5.0.3 (REST API and its own
Flask-SocketIO, with the RabbitMQ message queue in its configuration) and two
`v6-socketio serve` instances on HQ's unchanged configuration file, database
and broker. Nodes are vantage6-node 5.0.3's real socket code (nodes5.py),
connected directly to an instance or to HQ. Each test module builds its own
collaborations and nodes through HQ's REST API.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/: lineproc, stand-in
pytest_plugins = ["skip_policy"]  # clients/skip_policy.py: a skip for a missing tool fails the run

from e2e_harness import BACKENDS, processes_still_alive  # noqa: E402
from fleet import Fleet  # noqa: E402
from pytest_figures import figures  # noqa: E402,F401  (the fixture)


@pytest.fixture(scope="session", params=BACKENDS)
def fleet(request) -> Fleet:
    # a directory of its own, not pytest's tmp_path: pytest removes all but the
    # last three of its run directories, whoever's run they are, and the
    # fleet's SQLite database and logs live here. Kept when a test failed.
    workdir = Path(tempfile.mkdtemp(prefix=f"v6-e2e5-{request.param}-"))
    f = Fleet(request.param, workdir).started()
    failed_before = request.session.testsfailed
    yield f
    # everything the fleet asked Keycloak (HQ's admin calls, node tokens,
    # python-keycloak's realm-key look-ups) was answered; refused client
    # secrets are a test's business
    unanswered = [(m, p, s) for m, p, s in f.kc.answered
                  if s >= 400 and not (s == 401 and p.endswith("/openid-connect/token"))]
    f.stop()
    assert unanswered == [], f"the Keycloak stand-in could not answer: {unanswered}"
    if request.session.testsfailed == failed_before:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\nfleet logs kept in {workdir}")


_processes_still_alive = processes_still_alive("fleet")
