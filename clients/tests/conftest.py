"""Fixtures of the v6-socketio compatibility suite.

Every test runs against both database backends (SQLite file, PostgreSQL on
127.0.0.1:5432 with a fresh database per session).  One server process per
backend serves all tests of that backend; every test gets its own uniquely
named fixtures (``world``), so tests never see each other's rooms. The client
fixtures (``clients``, ``connect_node``, ...) are the 5.x suite's too: they come
from clients/compat_support.py.
"""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/: lineproc, jsonbytes
pytest_plugins = ["skip_policy"]  # clients/skip_policy.py: a skip for a missing tool fails the run

from compat_support import BACKENDS, open_db, serving  # noqa: E402
from compat_support import (  # noqa: E402,F401  (the fixtures and the report hook)
    clients, connect_node, connect_quiet, connect_user, pytest_runtest_makereport, srv)
from pytest_figures import figures  # noqa: E402,F401  (the fixture)
from support import DB, ServerProcess, TokenFactory, World, make_postgres_db, make_sqlite_db  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "broker: the module uses RabbitMQ (mq_support). scripts/test-all.sh runs `-m broker` and "
        "`-m 'not broker'` as two concurrent pytest processes: broker tests share the default "
        "virtual host and the `flask-socketio` exchange, where rooms named after database ids "
        "would cross, so they all stay in one process.")


def pytest_collection_modifyitems(config, items):
    """Every module that uses RabbitMQ (the shared one or a private node) carries
    `pytestmark = pytest.mark.broker`
    and no other does: a test file that forgets it would run next to the
    broker tests and could receive their broadcasts."""
    wrong = set()
    for item in items:
        module = item.module
        text = Path(module.__file__).read_text()
        # mq_support: the shared broker; rabbit_node: a private RabbitMQ node of the module's own
        uses_broker = "mq_support" in text or "rabbit_node" in text
        if uses_broker != (item.get_closest_marker("broker") is not None):
            wrong.add(f"{Path(module.__file__).name}: uses RabbitMQ={uses_broker}, "
                      f"marked broker={not uses_broker}")
    if wrong:
        raise pytest.UsageError("the `broker` marker does not match RabbitMQ use:\n  "
                                + "\n  ".join(sorted(wrong)))


@pytest.fixture(scope="session", params=BACKENDS)
def db(request, tmp_path_factory) -> DB:
    yield from open_db(request.param, tmp_path_factory, make_sqlite_db, make_postgres_db)


@pytest.fixture(scope="session")
def jwt_secret(db) -> str:
    return "test-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def server(db, jwt_secret, tmp_path_factory) -> ServerProcess:
    workdir = tmp_path_factory.mktemp(f"server-{db.backend}")
    proc = ServerProcess(workdir, db, jwt_secret, sweep_interval=2, name=f"server-{db.backend}")
    with serving(proc):
        yield proc


@pytest.fixture(scope="session")
def tokens(db, jwt_secret) -> TokenFactory:
    return TokenFactory(db, jwt_secret)


@pytest.fixture()
def world(db) -> World:
    w = World(db)
    yield w
    w.cleanup()
