"""Fixtures of the vantage6 5.x (HQ 5.0.3) compatibility suite.

Run in the Python 3.13 virtualenv of clients/requirements-v5.txt::

    clients/.venv-v5/bin/python -m pytest clients/tests_v5 -p no:cacheprovider -rfEs

Every test runs against both database backends (SQLite file; PostgreSQL on 127.0.0.1:5432 with a
fresh database per session), each built by vantage6-hq 5.0.3's models. One Keycloak stand-in
(clients/keycloak_standin.py, in a thread) serves the realm key for the whole session; one
``v6-socketio serve`` per backend reads it through ``KEYCLOAK_URL``/``KEYCLOAK_REALM``, with
``rabbitmq.uri`` set so that events published as HQ publishes them reach its clients. Every test
gets its own uniquely named fixtures (``world``), so tests never see each other's rooms.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/: sio_testkit, lineproc, …
pytest_plugins = ["skip_policy"]  # clients/skip_policy.py: a skip for a missing tool fails the run

import support_v5  # noqa: E402
from keycloak_standin import KeycloakStandIn  # noqa: E402
from sio_testkit import Recorder, ServerProcess, broker_lock, join_msg  # noqa: E402
from support_v5 import AMQP_URL, DB, Tokens, World, make_postgres_db, make_sqlite_db  # noqa: E402

BACKENDS = [b for b in os.environ.get("V6_TEST_BACKENDS", "sqlite,postgres").split(",") if b]

# shortest pause between two re-fetches of the realm key (the rotation test waits this long)
KEY_REFRESH_INTERVAL = 0.5


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
def keycloak():
    with KeycloakStandIn() as kc:
        yield kc


@pytest.fixture(scope="session")
def broker():
    reason = support_v5.broker_available()
    if reason:
        pytest.fail(f"RabbitMQ unavailable at {AMQP_URL}: {reason}")
    with broker_lock():
        yield AMQP_URL


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
    try:
        proc.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield proc
    proc.stop()
    queue = re.findall(r"queue=(socketioxide-amqp\.[0-9a-f-]+)",
                       re.sub(r"\x1b\[[0-9;]*m", "", proc.log_path.read_text(errors="replace")))
    if queue:  # deleted on a graceful stop; a crash would leave it for x-expires
        import kombu

        with kombu.Connection(broker, connect_timeout=3) as conn:
            try:
                conn.channel().queue_delete(queue[-1])
            except Exception:
                pass


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
        plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
        interesting = [line for line in plain if re.search(r"\b(WARN|ERROR|panicked)\b", line)]
        if interesting:
            shown = interesting[:12]
            if len(interesting) > len(shown):
                shown.append(f"... and {len(interesting) - len(shown)} more in {path}")
            report.sections.append(("v6-socketio log (WARN/ERROR during this test)", "\n".join(shown)))


@pytest.fixture(scope="session")
def tokens(keycloak) -> Tokens:
    return Tokens(keycloak)


@pytest.fixture()
def world(db) -> World:
    return World(db)


# what a client's transports are: the node's own (polling, then the websocket upgrade), or one only
TRANSPORTS = {"polling": ["polling"], "websocket": ["websocket"]}


@pytest.fixture()
def clients(srv, world):
    """Factory of recording clients (Authorization header only, as vantage6-node 5.0.3's socket);
    all are disconnected after the test."""
    made: list[Recorder] = []

    def make(token=None, *, label="", connect=True, transport=None, **kw) -> Recorder:
        if transport is not None:
            kw["transports"] = TRANSPORTS[transport]
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


def node_connect_sequence(node) -> list:
    return [("sync", None)] + [join_msg("Node", node.name, r) for r in World.node_public_rooms(node)]


@pytest.fixture()
def connect_node(clients, tokens):
    """Connect a node and consume its own connect sequence (sync + join messages)."""

    def go(node, *, label=None, check=True, extra=(), **kw) -> Recorder:
        rec = clients(tokens.access(node), label=label or node.name, **kw)
        expected = node_connect_sequence(node) + list(extra)
        rec.wait_count(len(expected))
        if check:
            from sio_testkit import pretty

            got = rec.snapshot()
            assert got == expected, f"{node.name} own connect sequence: {pretty(got)}"
        rec.clear()
        return rec

    return go


@pytest.fixture()
def connect_user(clients, tokens, world):
    def go(user, *, label=None, **kw) -> Recorder:
        from sio_testkit import pretty

        rec = clients(tokens.access(user), label=label or user.name, **kw)
        rooms = world.user_rooms(user)
        if rooms:
            rec.wait_count(len(rooms))
        expected = [join_msg("User", user.name, r) for r in rooms]
        got = rec.snapshot()
        # HQ iterates an unordered relationship: compare as multisets
        assert sorted(got, key=repr) == sorted(expected, key=repr), (
            f"{user.name} own connect sequence:\n expected (any order) {pretty(expected)}"
            f"\n got {pretty(got)}"
        )
        rec.clear()
        return rec

    return go
