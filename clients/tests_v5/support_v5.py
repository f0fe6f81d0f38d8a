"""Machinery of the vantage6 5.x compatibility suite (clients/tests_v5).

* the database is built and filled with the REAL vantage6-hq 5.0.3 models (``Database().connect``
  creates the tables as HQ does at start-up);
* tokens are Keycloak-layout access tokens signed by the loopback Keycloak stand-in
  (clients/keycloak_standin.py), whose realm endpoint the server reads through ``KEYCLOAK_URL``;
* ``Recorder``, ``expect_exact``, ``ServerProcess`` … come from clients/sio_testkit.py, the
  database reads, the rooms and the fixtures from clients/compat_support.py, shared with the 4.x
  suite.
"""
from __future__ import annotations

import contextlib
import random
import time
import uuid
from pathlib import Path

from compat_support import AMQP_URL, SqlTestDB, WorldRooms, make_postgres, unpatched_vantage6_import

with unpatched_vantage6_import():
    from vantage6.hq import model as m
    from vantage6.hq.model.base import Database
    from vantage6.hq.model.rule import Operation, Scope

from sqlalchemy import text  # noqa: E402

from sio_testkit import DEFAULT_TIMEOUT, Ent  # noqa: E402


# ---------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------
class DB(SqlTestDB):
    """A 5.x test database built by vantage6-hq 5.0.3's own ``Database().connect`` (create_all
    plus HQ's "add missing columns"); compat_support.SqlTestDB."""

    # the generation's models, its Database singleton and its rule enums
    models, database, Operation, Scope = m, Database, Operation, Scope

    def __init__(self, backend: str, uri: str, cleanup=None):
        Database().connect(uri, allow_drop_all=True)
        with contextlib.suppress(Exception):
            Database().engine.dispose()
        super().__init__(backend, uri, cleanup)
        self._offset_collaboration_ids()

    @staticmethod
    def stored_rule(operation, scope) -> tuple:
        return operation.value, scope.value  # 5.x rule rows hold the strings

    def _offset_collaboration_ids(self):
        """Room names carry collaboration ids, and every server on the broker shares the
        `flask-socketio` exchange: start this database's ids at a random offset so that no other
        test session's events (same exchange, its own fresh database) name our rooms."""
        start = random.randrange(10_000_000, 2_000_000_000)
        with self.engine.begin() as c:
            if self.backend == "postgres":
                c.execute(text(f"ALTER SEQUENCE collaboration_id_seq RESTART WITH {start}"))
            else:  # SQLite hands out max(rowid)+1: one placeholder row sets the floor
                c.execute(text("INSERT INTO collaboration (id, name) VALUES (:i, :n)"),
                          {"i": start, "n": f"id-floor-{uuid.uuid4().hex[:8]}"})

    def pending_deletes(self, **where) -> list[tuple[str, int, int]]:
        """(dataframe_name, session_id, node_id) of dataframetobedeletedatnode rows."""
        with self.session() as s:
            rows = s.query(m.DataframeToBeDeletedAtNode).filter_by(**where).all()
            return sorted((r.dataframe_name, r.session_id, r.node_id) for r in rows)

    def add_pending_delete(self, df_name: str, session_id: int, node_id: int):
        with self.session() as s:
            s.add(m.DataframeToBeDeletedAtNode(dataframe_name=df_name, session_id=session_id,
                                               node_id=node_id))


def make_sqlite_db(tmpdir: Path) -> DB:
    return DB("sqlite", f"sqlite:///{Path(tmpdir) / 'v6-socketio-hq5.sqlite'}")


def make_postgres_db() -> DB:
    return make_postgres("v6sio_hq5", DB)


# ---------------------------------------------------------------------------
# a "world" of organisations, collaborations, nodes, users, tasks and sessions
# ---------------------------------------------------------------------------
class World(WorldRooms):
    """A fresh, uniquely named set of 5.x fixtures (one per test); every node and user has a
    ``keycloak_id`` (``ent.extra["kc"]``), the ``sub`` of its tokens.

    org_a: in c1 and c2        org_b: in c1        org_c: in c2
    node_a1 (org_a, c1)   node_b1 (org_b, c1)   node_c2 (org_c, c2)
    users (org_a unless said otherwise), rules with 5.x string values:
      u_glob  event/receive/global via a role (+ an organization rule that must not matter)
      u_col   event/receive/collaboration given directly (UserPermission)
      u_org   event/receive/organization via a role
      u_orgb  (org_b) event/receive/organization directly
      u_none  (org_b) no event-receive rule (event/send/global and task/view/global)
    task1 in c1 (job_id distinct): runs r_a (org_a, log NULL), r_b (org_b, log "line one"),
      r_c (org_a, log "ends with newline\\n");
    dep (c1, parent task1) depends on task1 (task_depends_on); dep2 (c1, no parent) too;
    task2 in c2 with run r_c2 (org_c), nothing depends on it;
    sess1: a session of c1 (owner u_glob) with dataframe df1.
    """

    def __init__(self, db: DB):
        self.db = db
        u = db.unique
        kc = lambda: str(uuid.uuid4())  # noqa: E731  Keycloak ids are UUIDs
        with db.session() as s:
            org_a, org_b, org_c = (m.Organization(name=u(f"org-{x}")) for x in "abc")
            c1 = m.Collaboration(name=u("collab-1"), organizations=[org_a, org_b], encrypted=False)
            c2 = m.Collaboration(name=u("collab-2"), organizations=[org_a, org_c], encrypted=False)
            s.add_all([org_a, org_b, org_c, c1, c2])
            s.flush()
            nodes = [
                m.Node(name=u(f"node-{n}"), organization=o, collaboration=c, status="offline",
                       keycloak_id=kc(), keycloak_client_id=kc())
                for n, o, c in (("a1", org_a, c1), ("b1", org_b, c1), ("c2", org_c, c2))
            ]
            s.add_all(nodes)

            def user(name, org, **kw):
                return m.User(username=u(name).lower(), organization=org, status="offline",
                              keycloak_id=kc(), is_service_account=False, **kw)

            grants, orgs = self.user_grants(db, s, org_a), {"a": org_a, "b": org_b}
            users = [user(n, orgs[o], **grants[n]) for n, o in self.USERS.items()]
            s.add_all(users)
            s.flush()

            image = "harbor2.vantage6.ai/demo/average"
            t1 = m.Task(name=u("task-1"), image=image, method="central", collaboration=c1,
                        init_org=org_a, init_user=users[0])
            t2 = m.Task(name=u("task-2"), image=image, method="central", collaboration=c2,
                        init_org=org_a, init_user=users[0])
            s.add_all([t1, t2])
            s.flush()
            dep = m.Task(name=u("task-dep"), image=image, method="partial", collaboration=c1,
                         init_org=org_a, init_user=users[0], parent=t1, depends_on=[t1])
            dep2 = m.Task(name=u("task-dep2"), image=image, method="partial", collaboration=c1,
                          init_org=org_a, init_user=users[0], depends_on=[t1])
            s.add_all([dep, dep2])
            s.flush()
            for t, base in ((t1, 700000), (t2, 800000), (dep, 900000), (dep2, 910000)):
                t.job_id = base + t.id
            runs = [
                m.Run(task=t1, organization=org_a, status="active", log=None, action="central_compute"),
                m.Run(task=t1, organization=org_b, status="active", log="line one",
                      action="central_compute"),
                m.Run(task=t1, organization=org_a, status="active", log="ends with newline\n",
                      action="central_compute"),
                m.Run(task=t2, organization=org_c, status="active", action="central_compute"),
            ]
            s.add_all(runs)
            sess1 = m.Session(name=u("session-1"), owner=users[0], collaboration=c1, scope="own")
            s.add(sess1)
            s.flush()
            df1 = m.Dataframe(name=u("df"), db_label="default", session=sess1)
            s.add(df1)
            s.flush()

            self.org_a, self.org_b, self.org_c = (Ent(o.id, o.name) for o in (org_a, org_b, org_c))
            self.c1, self.c2 = Ent(c1.id, c1.name), Ent(c2.id, c2.name)
            self.node_a1, self.node_b1, self.node_c2 = (
                Ent(n.id, n.name, n.organization_id, n.collaboration_id, {"kc": n.keycloak_id})
                for n in nodes
            )
            self.u_glob, self.u_col, self.u_org, self.u_orgb, self.u_none = (
                Ent(x.id, x.username, x.organization_id, extra={"kc": x.keycloak_id}) for x in users
            )
            task = lambda t: Ent(t.id, t.name, collab_id=t.collaboration_id,  # noqa: E731
                                 extra={"job_id": t.job_id, "parent_id": t.parent_id})
            self.task1, self.task2, self.dep, self.dep2 = map(task, (t1, t2, dep, dep2))
            self.r_a, self.r_b, self.r_c, self.r_c2 = (
                Ent(r.id, "", r.organization_id, r.task.collaboration_id, {"task_id": r.task_id})
                for r in runs
            )
            self.sess1 = Ent(sess1.id, sess1.name, collab_id=c1.id)
            self.df1 = Ent(df1.id, df1.name, collab_id=c1.id, extra={"session_id": sess1.id})


# ---------------------------------------------------------------------------
# tokens: Keycloak access tokens from the stand-in
# ---------------------------------------------------------------------------
class Tokens:
    """Keycloak-layout tokens for the world's entities, signed by the stand-in's realm key."""

    def __init__(self, keycloak):
        self.kc = keycloak

    def access(self, ent: Ent, **kw) -> str:
        client_type = "user" if ent.org_id is not None and ent.collab_id is None else "node"
        return self.kc.mint(sub=ent.extra["kc"], client_type=client_type, **kw)

    def expired(self, ent: Ent) -> str:
        return self.access(ent, lifetime=-60)  # exp = now - 60 s: beyond the 10 s leeway

    def wrong_key(self, ent: Ent, **kw) -> str:
        from keycloak_standin import new_rsa_key

        return self.access(ent, key=new_rsa_key(), **kw)

    def hs256(self, ent: Ent) -> str:
        # what HQ signs container tokens with; REST-only, never a socket identity
        return self.access(ent, alg="HS256", key="container-secret-" + uuid.uuid4().hex)

    def unknown_subject(self) -> str:
        return self.kc.mint(sub=str(uuid.uuid4()))

    def iat_in_future(self, ent: Ent) -> str:
        now = int(time.time())
        return self.access(ent, claims={"iat": now + 120, "exp": now + 600})


# ---------------------------------------------------------------------------
# RabbitMQ: events published the way HQ 5.0.3 (python-socketio 5.16.2) publishes them
# ---------------------------------------------------------------------------
class HQPublisher:
    """HQ's REST emits: Flask-SocketIO's ``socketio.emit(..., namespace="/tasks", room=...)`` on a
    ``KombuManager(url, channel="flask-socketio", write_only=True)`` of python-socketio 5.16.2,
    which publishes ``data`` as the argument list (``[payload]``)."""

    def __init__(self, url: str = AMQP_URL):
        import socketio

        self.mgr = socketio.KombuManager(url, channel="flask-socketio", write_only=True)

    def emit(self, event: str, data, room: str):
        self.mgr.emit(event, data, namespace="/tasks", room=room)


def wait_db(predicate, what: str, timeout: float = DEFAULT_TIMEOUT, show=lambda: ""):
    """Poll the database until ``predicate()``; explain on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; {show()}")
        time.sleep(0.03)


def counter(srv, reason: str, metric: str = "v6_socketio_ignored_events_total") -> float:
    """A counter of the server's by reason: by default ``v6_socketio_ignored_events_total``
    (events it dropped), or ``v6_socketio_unidentified_connections_total``."""
    return sum(v for name, labels, v in srv.metrics()
               if name == metric and labels.get("reason") == reason)


class CountsRefusals:
    """``with CountsRefusals(srv, reason, n):`` -- the block makes the server count ``n`` more
    for ``reason`` in ``metric`` (waited for at the end)."""

    def __init__(self, srv, reason: str, n: int = 1, metric: str = "v6_socketio_ignored_events_total"):
        self.srv, self.reason, self.n, self.metric = srv, reason, n, metric

    def __enter__(self):
        self.before = counter(self.srv, self.reason, self.metric)
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            now = lambda: counter(self.srv, self.reason, self.metric)  # noqa: E731
            wait_db(lambda: now() >= self.before + self.n,
                    f"{self.n} more {self.metric}{{reason={self.reason!r}}}",
                    show=lambda: f"before {self.before}, now {now()}")
        return False
