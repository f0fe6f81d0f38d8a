"""Fixtures of the v6-socketio compatibility suite.

Every test runs against both database backends (SQLite file, PostgreSQL on
127.0.0.1:5432 with a fresh database per session).  One server process per
backend serves all tests of that backend; every test gets its own uniquely
named fixtures (``world``), so tests never see each other's rooms.
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/: lineproc, jsonbytes
pytest_plugins = ["skip_policy"]  # clients/skip_policy.py: a skip for a missing tool fails the run

import support  # noqa: E402
from pytest_figures import figures  # noqa: E402,F401  (the fixture)
from support import (  # noqa: E402
    DB,
    Recorder,
    ServerProcess,
    TokenFactory,
    World,
    make_postgres_db,
    make_sqlite_db,
)

BACKENDS = [b for b in os.environ.get("V6_TEST_BACKENDS", "sqlite,postgres").split(",") if b]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "broker: the module uses RabbitMQ (mq_support). scripts/test-all.sh runs `-m broker` and "
        "`-m 'not broker'` as two concurrent pytest processes: broker tests share the default "
        "virtual host and the `flask-socketio` exchange, where rooms named after database ids "
        "would cross, so they all stay in one process.")


def pytest_collection_modifyitems(config, items):
    """Every module that uses RabbitMQ carries `pytestmark = pytest.mark.broker`
    and no other does: a test file that forgets it would run next to the
    broker tests and could receive their broadcasts."""
    wrong = set()
    for item in items:
        module = item.module
        uses_broker = "mq_support" in Path(module.__file__).read_text()
        if uses_broker != (item.get_closest_marker("broker") is not None):
            wrong.add(f"{Path(module.__file__).name}: uses mq_support={uses_broker}, "
                      f"marked broker={not uses_broker}")
    if wrong:
        raise pytest.UsageError("the `broker` marker does not match RabbitMQ use:\n  "
                                + "\n  ".join(sorted(wrong)))


@pytest.fixture(scope="session", params=BACKENDS)
def db(request, tmp_path_factory) -> DB:
    backend = request.param
    if backend == "sqlite":
        database = make_sqlite_db(tmp_path_factory.mktemp("sqlite"))
    elif backend == "postgres":
        try:
            database = make_postgres_db()
        except Exception as exc:  # a missing PostgreSQL is an environment failure
            pytest.fail(f"PostgreSQL backend unavailable (127.0.0.1:5432, user postgres): {exc}")
    else:
        raise ValueError(backend)
    yield database
    database.close()


@pytest.fixture(scope="session")
def jwt_secret(db) -> str:
    return "test-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def server(db, jwt_secret, tmp_path_factory) -> ServerProcess:
    workdir = tmp_path_factory.mktemp(f"server-{db.backend}")
    proc = ServerProcess(workdir, db, jwt_secret, sweep_interval=2, name=f"server-{db.backend}")
    try:
        proc.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield proc
    proc.stop()


@pytest.fixture()
def srv(server, request) -> ServerProcess:
    """The session server, checked to be alive before and after the test."""
    server.assert_alive()
    try:
        request.node._v6_server_log = (server.log_path, server.log_path.stat().st_size)
    except OSError:
        pass
    yield server
    server.assert_alive()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the server's WARN/ERROR log lines written during the test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and hasattr(item, "_v6_server_log"):
        path, offset = item._v6_server_log
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            return
        import re as _re

        plain = [_re.sub(r"\x1b\[[0-9;]*m", "", l) for l in lines]
        interesting = [l for l in plain if _re.search(r"\b(WARN|ERROR|panicked)\b", l)]
        if interesting:
            shown = interesting[:12]
            if len(interesting) > len(shown):
                shown.append(f"... and {len(interesting) - len(shown)} more WARN/ERROR lines in {path}")
            report.sections.append(("v6-socketio log (WARN/ERROR during this test)", "\n".join(shown)))


@pytest.fixture(scope="session")
def tokens(db, jwt_secret) -> TokenFactory:
    return TokenFactory(db, jwt_secret)


@pytest.fixture()
def world(db) -> World:
    w = World(db)
    yield w
    w.cleanup()


@pytest.fixture()
def clients(srv, world):
    """Factory of recording clients; all are disconnected after the test."""
    made: list[Recorder] = []

    def make(token=None, *, label="", connect=True, **kw) -> Recorder:
        rec = Recorder(srv.url, token, label=label or f"client{len(made)}", **kw)
        made.append(rec)
        if connect:
            rec.connect()
        return rec

    yield make
    for rec in made:
        try:
            rec.disconnect()
        except Exception:
            pass


@pytest.fixture()
def connect_node(clients, tokens, world):
    """Connect a node and consume its own connect sequence (sync + join messages)."""

    def go(node, *, label=None, check=True, **kw) -> Recorder:
        rec = clients(tokens.access(node), label=label or node.name, **kw)
        rec.wait_for(
            lambda evs: len([e for e in evs if e[0] == "message"]) >= 2,
            what="the node's own join messages",
        )
        if check:
            expected = [("sync", None)] + [
                support.join_msg("Node", node.name, r) for r in World.node_public_rooms(node)
            ]
            got = rec.snapshot()
            assert got == expected, f"{node.name} own connect sequence: {support.pretty(got)}"
        rec.clear()
        return rec

    return go


@pytest.fixture()
def connect_user(clients, tokens, world):
    def go(user, *, label=None, **kw) -> Recorder:
        rec = clients(tokens.access(user), label=label or user.name, **kw)
        rooms = world.user_rooms(user)
        if rooms:
            rec.wait_count(len(rooms))
        expected = [support.join_msg("User", user.name, r) for r in rooms]
        got = rec.snapshot()
        # the reference iterates an unordered relationship: compare as multisets
        assert sorted(got, key=repr) == sorted(expected, key=repr), (
            f"{user.name} own connect sequence:\n expected (any order) {support.pretty(expected)}"
            f"\n got {support.pretty(got)}"
        )
        rec.clear()
        return rec

    return go
