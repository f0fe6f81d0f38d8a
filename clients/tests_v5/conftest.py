"""Fixtures of the vantage6 5.x (HQ 5.0.3) compatibility suite.

Run in the Python 3.13 virtualenv of clients/requirements-v5.txt::

    clients/.venv-v5/bin/python -m pytest clients/tests_v5 -p no:cacheprovider -rfEs

Every test runs against both database backends (SQLite file; PostgreSQL on 127.0.0.1:5432 with a
fresh database per session), each built by vantage6-hq 5.0.3's models. One Keycloak stand-in
(clients/keycloak_standin.py, in a thread) serves the realm key for the whole session; one
``v6-socketio serve`` per backend reads it through ``KEYCLOAK_URL``/``KEYCLOAK_REALM``, with
``rabbitmq.uri`` set so that events published as HQ publishes them reach its clients. Every test
gets its own uniquely named fixtures (``world``), so tests never see each other's rooms. The client
fixtures (``clients``, ``connect_node``, ...) are the 4.x suite's too: they come from
clients/compat_support.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/: sio_testkit, lineproc, …
pytest_plugins = ["skip_policy"]  # clients/skip_policy.py: a skip for a missing tool fails the run

from compat_support import BACKENDS, broker_fixture, open_db, serving, stop_serve  # noqa: E402
from compat_support import (  # noqa: E402,F401  (the fixtures and the report hook)
    clients, connect_node, connect_quiet, connect_user, pytest_runtest_makereport, srv)
from keycloak_standin import KeycloakStandIn  # noqa: E402
from sio_testkit import ServerProcess  # noqa: E402
from support_v5 import DB, Tokens, World, make_postgres_db, make_sqlite_db  # noqa: E402

# shortest pause between two re-fetches of the realm key (the rotation test waits this long)
KEY_REFRESH_INTERVAL = 0.5


@pytest.fixture(scope="session", params=BACKENDS)
def db(request, tmp_path_factory) -> DB:
    yield from open_db(request.param, tmp_path_factory, make_sqlite_db, make_postgres_db)


@pytest.fixture(scope="session")
def keycloak():
    with KeycloakStandIn() as kc:
        yield kc


broker = pytest.fixture(scope="session")(broker_fixture)


@pytest.fixture(scope="session")
def server(db, keycloak, broker, tmp_path_factory) -> ServerProcess:
    workdir = tmp_path_factory.mktemp(f"server-v5-{db.backend}")
    proc = ServerProcess(
        workdir, db, None,
        # the offline sweep is exercised by setting the status in the database (ping recovery)
        sweep_interval=3600,
        # HQ 5.x configuration keys (the 4.x `jwt_secret_key` is not needed)
        extra={"rabbitmq": {"uri": broker}, "api_path": "/hq", "jwt_decode_leeway": 10,
               "jwt_decode_algorithms": ["RS256", "RS384", "RS512"]},
        socketio_extra={"vantage6_generation": "5",
                        "keycloak_key_refresh_interval": KEY_REFRESH_INTERVAL},
        env={"KEYCLOAK_URL": keycloak.url, "KEYCLOAK_REALM": keycloak.realm},
        name=f"server-v5-{db.backend}",
    )
    # the queue it declared is deleted on a graceful stop; a crash would leave it for x-expires
    with serving(proc, stop=stop_serve):
        yield proc


@pytest.fixture(scope="session")
def tokens(keycloak) -> Tokens:
    return Tokens(keycloak)


@pytest.fixture()
def world(db) -> World:
    return World(db)
