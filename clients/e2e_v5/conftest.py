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

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/: lineproc, stand-in

from fleet import Fleet  # noqa: E402
from pytest_figures import figures  # noqa: E402,F401  (the fixture)

BACKENDS = [b for b in os.environ.get("V6_TEST_BACKENDS", "sqlite,postgres").split(",") if b]


@pytest.fixture(scope="session", params=BACKENDS)
def fleet(request, tmp_path_factory) -> Fleet:
    f = Fleet(request.param, tmp_path_factory.mktemp(f"fleet5-{request.param}"))
    try:
        f.start()
    except Exception:
        print(f.describe_failure())
        f.stop()
        raise
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _processes_still_alive(request):
    yield
    if "fleet" in request.fixturenames:
        f = request.getfixturevalue("fleet")
        dead = [p.name for p in f.processes() if not p.alive()]
        assert not dead, f"processes died during the test: {dead}\n{f.describe_failure()}"
