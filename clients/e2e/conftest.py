"""Fixtures of the end-to-end suite: one deployment per database backend.

A deployment is what an operator runs: vantage6-server 4.15.2 (REST API, and
the RabbitMQ message queue in its configuration), three `v6-socketio serve`
instances on the same configuration file, database and broker, and nginx in
front (REST under /api, /socket.io/ spread over the instances with affinity
on the Authorization header). Each test builds its own collaborations, nodes
and users through the REST API, so tests never see each other's rooms.
"""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/: lineproc
pytest_plugins = ["skip_policy"]  # clients/skip_policy.py: a skip for a missing tool fails the run

from deployment import Deployment  # noqa: E402
from e2e_harness import BACKENDS, processes_still_alive  # noqa: E402
from pytest_figures import figures  # noqa: E402,F401  (the fixture)


@pytest.fixture(scope="session", params=BACKENDS)
def deployment(request, tmp_path_factory) -> Deployment:
    workdir = tmp_path_factory.mktemp(f"deployment-{request.param}")
    dep = Deployment(request.param, workdir, secret=f"e2e-{uuid.uuid4().hex}", instances=3)
    yield dep.started()
    dep.stop()


@pytest.fixture(scope="session")
def world_of_deployment(deployment):
    """Two collaborations with nodes on every instance and a UI listener
    each, built once per deployment: vantage6 checks a node's API key against
    every node's bcrypt hash, so each extra node slows every node login."""
    w = deployment.world()
    yield w
    w.close()


@pytest.fixture
def world(world_of_deployment):
    """The deployment's world, every client connected where it belongs and
    quiet before the test starts."""
    world_of_deployment.heal()
    return world_of_deployment


_instances_still_alive = processes_still_alive("deployment")
