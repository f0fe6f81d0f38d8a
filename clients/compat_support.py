"""What the two compatibility suites (clients/tests for vantage6 4.x, clients/tests_v5 for 5.x)
share beyond clients/sio_testkit.py, which stays importable without pytest, SQLAlchemy or kombu
(race_stress.py imports it in the python-socketio 5.18.1 virtualenv, which has none of them).

* pytest fixtures and the failure-report hook, which both conftests import: ``srv`` (the session
  server, checked alive), ``clients``, ``connect_node``, ``connect_user``, ``connect_quiet``; a
  conftest provides ``server``, ``tokens`` and ``world``, and its ``db`` runs ``open_db``;
* ``SqlTestDB`` and ``WorldRooms``: the database reads, the users' rules and the rooms that are
  the same over vantage6-server 4.15.2's and vantage6-hq 5.0.3's models (support.py and
  support_v5.py subclass them with their generation's models);
* RabbitMQ: the ``broker`` fixtures' body, the queue a ``v6-socketio serve`` declared;
* the scenarios both generations answer alike: what node_a1's arrival and departure tell the
  others, the rooms of a user by the scope of its event-receive rule, and so on.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import uuid
from collections import Counter

import kombu
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sio_testkit import (
    Recorder,
    Unordered,
    broker_lock,
    expect_exact,
    join_msg,
    left_msg,
    node_status_payload,
    pretty,
    quiesce,
    wait_until,
)

BACKENDS = [b for b in os.environ.get("V6_TEST_BACKENDS", "sqlite,postgres").split(",") if b]
AMQP_URL = os.environ.get("V6_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")

# what a client's transports are: the node's own (polling, then the websocket upgrade), or one only
TRANSPORTS = {"polling": ["polling"], "websocket": ["websocket"]}


# ---------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def unpatched_vantage6_import():
    """Around the import of vantage6.server (4.x) or vantage6.hq (5.x): their __init__ calls
    gevent.monkey.patch_all() unless READTHEDOCS is set, and monkey-patching the test process
    would turn the socket.io clients' threads into greenlets."""
    rtd = os.environ.get("READTHEDOCS")
    os.environ["READTHEDOCS"] = "1"
    try:
        yield
    finally:
        if rtd is None:
            os.environ.pop("READTHEDOCS", None)
        else:
            os.environ["READTHEDOCS"] = rtd


class SqlTestDB:
    """A test database built by one generation's own models. ``uri`` is what the server config
    gets; test-side access uses short-lived SQLAlchemy sessions, so no transaction or lock is
    held while the server writes to the SQLite file.

    A subclass has built the tables before it calls ``__init__``, and sets ``models`` (the
    module with Authenticatable, Collaboration, Rule, Run and User), ``database`` (vantage6's
    ``Database`` singleton class), ``Operation``, ``Scope`` and ``stored_rule``."""

    models = database = Operation = Scope = None

    def __init__(self, backend: str, uri: str, cleanup=None):
        self.backend = backend
        self.uri = uri
        self._cleanup = cleanup
        self.engine = create_engine(uri, poolclass=NullPool)
        self._counter = itertools.count(1)

    @staticmethod
    def stored_rule(operation, scope) -> tuple:
        """(operation, scope) as a rule row stores them."""
        raise NotImplementedError

    def close(self):
        self.engine.dispose()
        with contextlib.suppress(Exception):
            self.database().engine.dispose()
        if self._cleanup:
            self._cleanup()

    @contextlib.contextmanager
    def session(self):
        s = Session(bind=self.engine, expire_on_commit=False, autoflush=True)
        try:
            yield s
            s.commit()
        except Exception:
            s.rollback()
            raise
        finally:
            s.close()

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self._counter)}-{uuid.uuid4().hex[:6]}"

    def rule(self, s: Session, name: str, operation, scope):
        op, sc = self.stored_rule(operation, scope)
        r = s.query(self.models.Rule).filter_by(name=name, operation=op, scope=sc).first()
        if r is None:
            r = self.models.Rule(name=name, operation=op, scope=sc,
                                 description=f"{name} {operation.value} {scope.value}")
            s.add(r)
            s.flush()
        return r

    # -- reads and writes -----------------------------------------------------
    def auth_row(self, auth_id: int):
        """(status, last_seen) as the generation's models read them."""
        with self.session() as s:
            a = s.get(self.models.Authenticatable, auth_id)
            s.refresh(a)
            return a.status, a.last_seen

    def set_auth(self, auth_id: int, **values):
        with self.session() as s:
            a = s.get(self.models.Authenticatable, auth_id)
            for k, v in values.items():
                setattr(a, k, v)

    def node_config(self, node_id: int) -> Counter:
        with self.session() as s:
            rows = s.execute(text("SELECT key, value FROM nodeconfig WHERE node_id = :n"),
                             {"n": node_id}).all()
        return Counter((k, v) for k, v in rows)

    def node_config_count(self, node_id: int) -> int:
        return sum(self.node_config(node_id).values())

    def run_log(self, run_id: int):
        with self.session() as s:
            return s.get(self.models.Run, run_id).log

    def collaboration_ids(self) -> list[int]:
        with self.session() as s:
            return sorted(c.id for c in s.query(self.models.Collaboration).all())


def make_postgres(prefix: str, make_db):
    """``make_db("postgres", uri, cleanup=...)`` on a fresh database ``<prefix>_<random>`` of
    the PostgreSQL server at V6_TEST_PG_HOST:V6_TEST_PG_PORT (127.0.0.1:5432), dropped by the
    cleanup."""
    host = os.environ.get("V6_TEST_PG_HOST", "127.0.0.1")
    port = os.environ.get("V6_TEST_PG_PORT", "5432")
    user = os.environ.get("V6_TEST_PG_USER", "postgres")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"postgresql://{user}@{host}:{port}/postgres", isolation_level="AUTOCOMMIT",
                          poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    try:
        return make_db("postgres", f"postgresql://{user}@{host}:{port}/{name}", cleanup=drop)
    except Exception:
        drop()
        raise


def open_db(backend: str, tmp_path_factory, make_sqlite_db, make_postgres_db):
    """Body of a suite's session-scoped ``db`` fixture, parametrised over BACKENDS."""
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


class WorldRooms:
    """The users' rules and the rooms of a world's nodes and users (``self.db``: a SqlTestDB)."""

    #: the users of a world (u_<name>) and their organisation (org_a or org_b)
    USERS = {"glob": "a", "col": "a", "org": "a", "orgb": "b", "none": "b"}

    @staticmethod
    def user_grants(db, s, org_a) -> dict:
        """What each of USERS is given, as the ``roles`` or ``rules`` keyword of its User (the
        roles are org_a's, added to ``s``): u_glob event/receive/global via a role (+ an
        organization rule that must not matter); u_col event/receive/collaboration directly;
        u_org event/receive/organization via a role; u_orgb event/receive/organization
        directly; u_none no event-receive rule (event/send/global and task/view/global)."""
        op, scope, role = db.Operation, db.Scope, db.models.Role
        r_glo = db.rule(s, "event", op.RECEIVE, scope.GLOBAL)
        r_col = db.rule(s, "event", op.RECEIVE, scope.COLLABORATION)
        r_org = db.rule(s, "event", op.RECEIVE, scope.ORGANIZATION)
        r_send = db.rule(s, "event", op.SEND, scope.GLOBAL)
        r_task = db.rule(s, "task", op.VIEW, scope.GLOBAL)
        role_glo = role(name=db.unique("role-glo"), organization=org_a, rules=[r_glo, r_task])
        role_org = role(name=db.unique("role-orgscope"), organization=org_a, rules=[r_org])
        s.add_all([role_glo, role_org])
        return {"glob": {"roles": [role_glo, role_org]}, "col": {"rules": [r_col]},
                "org": {"roles": [role_org]}, "orgb": {"rules": [r_org]},
                "none": {"rules": [r_send, r_task]}}

    # rooms a node is in (contract: all_nodes is a room, but nobody hears about it)
    @staticmethod
    def node_rooms(node) -> list[str]:
        return ["all_nodes", f"collaboration_{node.collab_id}",
                f"collaboration_{node.collab_id}_organization_{node.org_id}"]

    @staticmethod
    def node_public_rooms(node) -> list[str]:
        return [r for r in WorldRooms.node_rooms(node) if r != "all_nodes"]

    def user_rooms(self, user) -> list[str]:
        """The reference's _add_user_to_rooms (4.15.2's and HQ 5.0.3's alike: the widest scope
        of the user's event-receive rules, its own or its roles'), computed from the DB."""
        db = self.db
        with db.session() as s:
            usr = s.get(db.models.User, user.id)

            def has(scope):
                op, sc = db.stored_rule(db.Operation.RECEIVE, scope)
                rule = s.query(db.models.Rule).filter_by(name="event", operation=op, scope=sc).first()
                return rule is not None and (
                    rule in usr.rules or any(rule in role.rules for role in usr.roles))

            collabs = [c.id for c in usr.organization.collaborations]
            if has(db.Scope.GLOBAL):
                return [f"collaboration_{c.id}" for c in s.query(db.models.Collaboration).all()]
            if has(db.Scope.COLLABORATION):
                return [f"collaboration_{c}" for c in collabs]
            if has(db.Scope.ORGANIZATION):
                return [f"collaboration_{c}_organization_{usr.organization_id}" for c in collabs]
            return []


def node_connect_sequence(node) -> list:
    """A node's own connect sequence: sync, then its join message for each room but all_nodes."""
    return [("sync", None)] + [join_msg("Node", node.name, r) for r in WorldRooms.node_public_rooms(node)]


def wait_status(db, auth_id, status):
    wait_until(lambda: db.auth_row(auth_id)[0] == status, what=f"authenticatable {auth_id} status {status}")


# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------
def broker_available() -> str | None:
    """None when RabbitMQ answers, else the reason."""
    try:
        with kombu.Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.connect()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def broker_fixture():
    """Body of a ``broker`` fixture: fails when RabbitMQ is down (an environment failure, like a
    missing PostgreSQL), holds the shared broker lock while its scope runs."""
    reason = broker_available()
    if reason:
        pytest.fail(f"RabbitMQ unavailable at {AMQP_URL}: {reason}")
    with broker_lock():
        yield AMQP_URL


def delete_queues(*names: str):
    names = [n for n in names if n]
    if not names:
        return
    with contextlib.suppress(Exception), kombu.Connection(AMQP_URL, connect_timeout=3) as conn:
        ch = conn.channel()
        for n in names:
            with contextlib.suppress(Exception):
                ch.queue_delete(n)


_SERVE_QUEUE = re.compile(r"queue=(socketioxide-amqp\.[0-9a-f-]+)")


def serve_queue(server) -> str | None:
    """The queue a ``v6-socketio serve`` (sio_testkit.ServerProcess) logged at startup."""
    try:
        logged = server.log_path.read_text(errors="replace")
    except OSError:
        return None
    found = _SERVE_QUEUE.findall(re.sub(r"\x1b\[[0-9;]*m", "", logged))
    return found[-1] if found else None


def stop_serve(*servers):
    """Stop ``v6-socketio serve`` processes, then delete the queues they declared (deleted on a
    graceful stop; a crashed or slow instance would leave them for x-expires)."""
    for s in servers:
        s.stop()
    delete_queues(*(serve_queue(s) for s in servers))


# ---------------------------------------------------------------------------
# fixtures (the conftests import them)
# ---------------------------------------------------------------------------
def _stop_each(*procs):
    for p in procs:
        p.stop()


@contextlib.contextmanager
def serving(*procs, stop=_stop_each):
    """Starts the ServerProcesses in order (one that does not start stops them all and fails
    the test), yields them, and ``stop(*procs)`` at the end."""
    try:
        for p in procs:
            p.start()
    except RuntimeError as exc:
        stop(*procs)
        pytest.fail(str(exc))
    try:
        yield procs
    finally:
        stop(*procs)


@pytest.fixture()
def srv(server, request):
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
                shown.append(f"... and {len(interesting) - len(shown)} more WARN/ERROR lines in {path}")
            report.sections.append(("v6-socketio log (WARN/ERROR during this test)", "\n".join(shown)))


@pytest.fixture()
def clients(srv, world):
    """Factory of recording clients (``transport``: a key of TRANSPORTS); all are disconnected
    after the test."""
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


@pytest.fixture()
def connect_node(clients, tokens):
    """Connect a node, check and consume its own connect sequence (sync + join messages, then
    ``extra``)."""

    def go(node, *, label=None, extra=(), **kw) -> Recorder:
        rec = clients(tokens.access(node), label=label or node.name, **kw)
        expected = node_connect_sequence(node) + list(extra)
        rec.wait_count(len(expected))
        got = rec.snapshot()
        assert got == expected, f"{node.name} own connect sequence: {pretty(got)}"
        rec.clear()
        return rec

    return go


def assert_same_events_any_order(got, expected, what: str):
    assert sorted(got, key=repr) == sorted(expected, key=repr), (
        f"{what}:\n expected (any order) {pretty(expected)}\n got {pretty(got)}")


@pytest.fixture()
def connect_user(clients, tokens, world):
    """Connect a user, check and consume its own connect sequence (a join message per room)."""

    def go(user, *, label=None, **kw) -> Recorder:
        rec = clients(tokens.access(user), label=label or user.name, **kw)
        rooms = world.user_rooms(user)
        if rooms:
            rec.wait_count(len(rooms))
        # the reference iterates an unordered relationship: compare as multisets
        assert_same_events_any_order(rec.snapshot(), [join_msg("User", user.name, r) for r in rooms],
                                     f"{user.name} own connect sequence")
        rec.clear()
        return rec

    return go


#: everybody but node_a1, as ``connect_quiet(*OBSERVERS)`` connects them
OBSERVERS = (("b1", "c2"), ("glob", "col", "org", "orgb", "none"))


@pytest.fixture()
def connect_quiet(world, connect_node, connect_user):
    """``connect_quiet(nodes, users)``: ``world.node_<n>`` for each n of ``nodes``, then
    ``world.u_<u>`` for each u of ``users`` connected (their own sequences checked) and quiet;
    returns their recorders by those short names."""

    def go(nodes=(), users=()) -> dict[str, Recorder]:
        recs = {n: connect_node(getattr(world, f"node_{n}")) for n in nodes}
        recs.update({u: connect_user(getattr(world, f"u_{u}")) for u in users})
        quiesce(*recs.values())
        return recs

    return go


# ---------------------------------------------------------------------------
# scenarios both generations answer alike
# ---------------------------------------------------------------------------
def a1_status_payload(world, **over) -> dict:
    """An ``algorithm_status_change`` of node_a1 for run r_a of task1 (collaboration 1)."""
    p = {"run_id": world.r_a.id, "task_id": world.task1.id, "collaboration_id": world.c1.id,
         "status": "active", "node_id": world.node_a1.id, "organization_id": world.org_a.id,
         "parent_id": None}
    p.update(over)
    return p


def log_payload(world, log: str, run=None) -> dict:
    """An ``algorithm_log`` for ``run`` (of task1; r_a by default)."""
    run = run or world.r_a
    return {"collaboration_id": world.c1.id, "run_id": run.id, "task_id": world.task1.id, "log": log}


def node_arrives(node, room: str) -> list:
    """What a member of ``room`` hears when ``node`` connects."""
    return [("node-online", node_status_payload(node)), join_msg("Node", node.name, room)]


def node_leaves(node, room: str) -> list:
    """What a member of ``room`` hears when ``node`` disconnects."""
    return [left_msg(node.name, room), ("node-offline", node_status_payload(node))]


def _a1_room_heard_by(world, key: str) -> str | None:
    """The room through which the observer ``key`` (OBSERVERS' names) hears of node_a1:
    collaboration-1 members through collaboration_<c1> (all_nodes is not announced), the
    organisation-scope user of org_a through collaboration_<c1>_organization_<a>; the other
    collaboration, the other organisation's subroom and a user without the rule: none."""
    return {
        "b1": f"collaboration_{world.c1.id}",
        "glob": f"collaboration_{world.c1.id}",
        "col": f"collaboration_{world.c1.id}",
        "org": f"collaboration_{world.c1.id}_organization_{world.org_a.id}",
    }.get(key)


def heard_when_a1_connects(world, observers: dict) -> dict:
    """``expect_exact`` expectations of the ``observers`` (``connect_quiet``'s dict, any of
    OBSERVERS' names) when node_a1 connects: node-online once, then the join message."""
    rooms = {k: _a1_room_heard_by(world, k) for k in observers}
    return {rec: node_arrives(world.node_a1, rooms[k]) if rooms[k] else []
            for k, rec in observers.items()}


def heard_when_a1_leaves(world, observers: dict) -> dict:
    """Likewise when node_a1 disconnects: the left message, then node-offline."""
    rooms = {k: _a1_room_heard_by(world, k) for k in observers}
    return {rec: node_leaves(world.node_a1, rooms[k]) if rooms[k] else []
            for k, rec in observers.items()}


def node_disconnect_sequence(world, db, connect_node, connect_quiet, node_info: dict):
    """node_a1, after a ``node_info_update`` (``node_info``: two nodeconfig rows), leaves: the
    others hear it, it hears nothing of its own departure, its status goes offline and its
    nodeconfig rows are deleted."""
    a1 = world.node_a1
    rec = connect_node(a1)
    rec.emit("node_info_update", node_info)
    wait_until(lambda: db.node_config_count(a1.id) == 2, what="node_config rows of node_a1")
    o = connect_quiet(*OBSERVERS)
    rec.clear()  # it saw the observers arrive

    rec.disconnect()
    # the departing client hears nothing about its own departure
    expect_exact({**heard_when_a1_leaves(world, o), rec: []})
    wait_status(db, a1.id, "offline")
    wait_until(lambda: db.node_config_count(a1.id) == 0, what="node_config rows deleted on disconnect")


def second_node_and_reconnect(world, db, connect_node):
    """node_b1 joins node_a1's collaboration, leaves, and its reconnect repeats the sequence."""
    a1, b1 = world.node_a1, world.node_b1
    c1 = f"collaboration_{world.c1.id}"
    ra = connect_node(a1)
    rb = connect_node(b1)  # checks b1's own sequence
    expect_exact({ra: node_arrives(b1, c1), rb: []})
    rb.disconnect()
    expect_exact({ra: node_leaves(b1, c1)})
    wait_status(db, b1.id, "offline")
    rb2 = connect_node(b1, label="b1-again")
    expect_exact({ra: node_arrives(b1, c1), rb2: []})
    assert db.auth_row(b1.id)[0] == "online"


#: the users of a world, by the scope of their event-receive rule
USERS_BY_SCOPE = ["u_glob", "u_col", "u_org", "u_orgb", "u_none"]


def user_rooms_by_event_receive_scope(world, db, connect_user, connect_node, who: str):
    """The user ``who`` (of USERS_BY_SCOPE) joins exactly the rooms of its rule's scope: its own
    join messages, and a node of each collaboration announces itself to it in shared rooms only."""
    user = getattr(world, who)
    expected_rooms = world.user_rooms(user)
    # the fixture itself (so the test cannot pass vacuously): a rule at each scope
    expected_shape = {
        "u_glob": [f"collaboration_{c}" for c in db.collaboration_ids()],
        "u_col": [f"collaboration_{world.c1.id}", f"collaboration_{world.c2.id}"],
        "u_org": [f"collaboration_{world.c1.id}_organization_{world.org_a.id}",
                  f"collaboration_{world.c2.id}_organization_{world.org_a.id}"],
        "u_orgb": [f"collaboration_{world.c1.id}_organization_{world.org_b.id}"],
        "u_none": [],
    }[who]
    assert sorted(expected_rooms) == sorted(expected_shape)

    rec = connect_user(user)  # asserts "User <name> joined room <room>" per room, nothing else
    wait_status(db, user.id, "online")

    # membership: a node of each collaboration announces itself
    for node in (world.node_a1, world.node_c2):
        rn = connect_node(node)
        shared = [r for r in WorldRooms.node_public_rooms(node) if r in expected_rooms]
        exp = [("node-online", node_status_payload(node))] * len(shared)
        exp += [join_msg("Node", node.name, r) for r in shared]
        expect_exact({rec: exp, rn: []})

    rec.disconnect()
    wait_status(db, user.id, "offline")


def user_in_both_collaborations_leaves(world, db, observers: dict, leaver: str, other: str):
    """The user ``leaver`` (a name of OBSERVERS, in the rooms of both collaborations) disconnects:
    each node hears it leave its collaboration's room, ``other`` (in both rooms too) hears both,
    the organisation-scope users and the user without a rule hear nothing."""
    o = observers
    user = getattr(world, f"u_{leaver}")
    c1, c2 = f"collaboration_{world.c1.id}", f"collaboration_{world.c2.id}"
    o[leaver].disconnect()
    expect_exact({
        o["b1"]: [left_msg(user.name, c1)],
        o["c2"]: [left_msg(user.name, c2)],
        o[other]: Unordered([left_msg(user.name, c1), left_msg(user.name, c2)]),
        o["org"]: [],
        o["orgb"]: [],
        o["none"]: [],
    })
    wait_status(db, user.id, "offline")

