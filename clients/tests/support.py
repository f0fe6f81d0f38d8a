"""Shared machinery of the v6-socketio compatibility suite.

* the database is built and filled with the REAL vantage6-server 4.15.2 models;
* tokens are minted by flask-jwt-extended configured by vantage6's own
  ``ServerApp.configure_flask``/``configure_jwt`` code paths;
* ``Recorder`` is an in-process python-socketio client that records every
  event of ``/tasks`` in arrival order; ``wait_for`` never sleeps longer than
  needed;
* ``ServerProcess`` runs ``v6-socketio serve --config FILE``;
* what is the same in the 5.x suite (the database reads, the rooms) comes from
  clients/compat_support.py.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from collections import Counter
from pathlib import Path

from compat_support import SqlTestDB, WorldRooms, make_postgres, unpatched_vantage6_import

with unpatched_vantage6_import():
    from vantage6.server import db as v6db
    from vantage6.server import ServerApp
    from vantage6.server.model.base import Database, DatabaseSessionManager
    from vantage6.server.model.rule import Operation, Scope

from flask import Flask  # noqa: E402
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token  # noqa: E402
from sqlalchemy import text  # noqa: E402

# the generation-neutral half (clients/sio_testkit.py), re-exported: the tests import it from here
from sio_testkit import (  # noqa: E402,F401
    CLIENTS,
    DEFAULT_TIMEOUT,
    NS,
    REPO,
    SETTLE,
    Ent,
    Recorder,
    ServerProcess,
    Unordered,
    expect_exact,
    expect_silence,
    free_port,
    http_get,
    join_msg,
    left_msg,
    node_status_payload,
    parse_prometheus,
    pretty,
    quiesce,
    server_binary,
    stop_process,
    utcnow_naive,
    wait_for,
    wait_listening,
    wait_on,
    wait_until,
    yaml_dump,
)

# ---------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------
class DB(SqlTestDB):
    """A test database built with vantage6's own models (compat_support.SqlTestDB)."""

    # the generation's models, its Database singleton and its rule enums
    models, database, Operation, Scope = v6db, Database, Operation, Scope

    def __init__(self, backend: str, uri: str, cleanup=None):
        # vantage6's singleton: creates all tables (Base.metadata.create_all)
        Database().connect(uri, allow_drop_all=True)
        DatabaseSessionManager.clear_session() if v6db_session_exists() else None
        super().__init__(backend, uri, cleanup)
        self._ensure_default_roles()

    @staticmethod
    def stored_rule(operation, scope) -> tuple:
        return operation, scope  # 4.x rule rows hold the enums

    def _ensure_default_roles(self):
        # vantage6's user_lookup_loader needs the default 'Node' and 'Container'
        # roles to exist (db.Role.get_by_name(DefaultRole.NODE).rules)
        with self.session() as s:
            for name in ("Root", "Node", "Container"):
                if not s.query(v6db.Role).filter_by(name=name).first():
                    s.add(v6db.Role(name=name, description=f"default role {name}"))

    def wait_node_config(self, node_id: int, expected: Counter, timeout: float = DEFAULT_TIMEOUT,
                         what: str = ""):
        """Wait until the node's nodeconfig rows equal ``expected``; explain on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.node_config(node_id)
            if got == expected:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nodeconfig rows of node {node_id} {what} differ from what vantage6 4.15.2 "
                    f"writes on {self.backend} (after {timeout}s):\n"
                    f" missing: {dict(expected - got)}\n extra: {dict(got - expected)}"
                )
            time.sleep(0.03)

    def set_run_log(self, run_id: int, value):
        with self.session() as s:
            s.get(v6db.Run, run_id).log = value

    # -- the reference's node_info_update, executed for real ----------------
    def reference_node_info_update(self, node_id: int, payload: dict) -> Counter:
        """Run vantage6 4.15.2's ``DefaultSocketNamespace.on_node_info_update``
        for ``node_id`` (a node that is not connected anywhere) and return the
        rows it wrote.  Needs ``Database()`` connected to this database."""
        from flask import session as flask_session

        from vantage6.server.websockets import DefaultSocketNamespace

        Database().connect(self.uri, allow_drop_all=True)
        ns = DefaultSocketNamespace("/tasks", socketio=None, metrics=None)
        app = Flask("v6-reference-node-info")
        app.secret_key = "x"
        with app.test_request_context("/"):
            flask_session.type = "node"
            flask_session.auth_id = node_id
            ns.on_node_info_update(json.loads(json.dumps(payload)))
        with contextlib.suppress(Exception):
            Database().engine.dispose()
        return self.node_config(node_id)


def v6db_session_exists() -> bool:
    from vantage6.backend.common import session as sess

    return bool(getattr(sess, "session", None))


def make_sqlite_db(tmpdir: Path) -> DB:
    path = Path(tmpdir) / "v6-socketio-test.sqlite"
    return DB("sqlite", f"sqlite:///{path}")


def make_postgres_db() -> DB:
    return make_postgres("v6sio_test", DB)


# ---------------------------------------------------------------------------
# fixtures: a "world" of organisations, collaborations, nodes and users
# ---------------------------------------------------------------------------
class World(WorldRooms):
    """A fresh, uniquely named set of fixtures (one per test).

    org_a: in collab1 and collab2          org_b: in collab1     org_c: in collab2
    node_a1 (org_a, collab1)  node_b1 (org_b, collab1)  node_c2 (org_c, collab2)
    twin (org_c, collab_t): never connected; the reference writes its
        node_config rows for comparison
    users (org_a unless said otherwise):
      u_glob  event/RECEIVE/GLOBAL via a role (+ an ORGANIZATION rule that must not matter)
      u_col   event/RECEIVE/COLLABORATION given directly (user.rules)
      u_org   event/RECEIVE/ORGANIZATION via a role
      u_orgb  (org_b) event/RECEIVE/ORGANIZATION directly
      u_none  (org_b) no event-RECEIVE rule (but event/SEND/GLOBAL and task/VIEW/GLOBAL)
    task1 in collab1 (job_id distinct), runs r_a (org_a, log NULL), r_b (org_b, log "line one"),
    r_c (org_a, log "ends with newline\\n"); task2 in collab2 with run r_c2 (org_c)
    """

    def __init__(self, db: DB):
        self.db = db
        u = db.unique
        with db.session() as s:
            org_a = v6db.Organization(name=u("org-a"))
            org_b = v6db.Organization(name=u("org-b"))
            org_c = v6db.Organization(name=u("org-c"))
            c1 = v6db.Collaboration(name=u("collab-1"), organizations=[org_a, org_b], encrypted=False)
            c2 = v6db.Collaboration(name=u("collab-2"), organizations=[org_a, org_c], encrypted=False)
            ct = v6db.Collaboration(name=u("collab-twin"), organizations=[org_c], encrypted=False)
            s.add_all([org_a, org_b, org_c, c1, c2, ct])
            s.flush()
            n_a1 = v6db.Node(name=u("node-a1"), organization=org_a, collaboration=c1, status="offline")
            n_b1 = v6db.Node(name=u("node-b1"), organization=org_b, collaboration=c1, status="offline")
            n_c2 = v6db.Node(name=u("node-c2"), organization=org_c, collaboration=c2, status="offline")
            twin = v6db.Node(name=u("node-twin"), organization=org_c, collaboration=ct, status="offline")
            s.add_all([n_a1, n_b1, n_c2, twin])

            def user(name, org, **kw):
                return v6db.User(
                    username=u(name), email=f"{u(name)}@example.org", firstname=name,
                    lastname="test", organization=org, status="offline", **kw,
                )

            grants, orgs = self.user_grants(db, s, org_a), {"a": org_a, "b": org_b}
            users = [user(n, orgs[o], **grants[n]) for n, o in self.USERS.items()]
            u_glob = users[0]
            s.add_all(users)
            s.flush()

            t1 = v6db.Task(name=u("task-1"), image="harbor2.vantage6.ai/demo/average",
                           collaboration=c1, init_org=org_a, init_user=u_glob)
            t2 = v6db.Task(name=u("task-2"), image="harbor2.vantage6.ai/demo/average",
                           collaboration=c2, init_org=org_a, init_user=u_glob)
            s.add_all([t1, t2])
            s.flush()
            t1.job_id = 700000 + t1.id
            t2.job_id = 800000 + t2.id
            r_a = v6db.Run(task=t1, organization=org_a, status="active", log=None)
            r_b = v6db.Run(task=t1, organization=org_b, status="active", log="line one")
            r_c = v6db.Run(task=t1, organization=org_a, status="active", log="ends with newline\n")
            r_c2 = v6db.Run(task=t2, organization=org_c, status="active")
            s.add_all([r_a, r_b, r_c, r_c2])
            s.flush()

            E = Ent
            self.org_a, self.org_b, self.org_c = (E(o.id, o.name) for o in (org_a, org_b, org_c))
            self.c1, self.c2, self.ct = (E(c.id, c.name) for c in (c1, c2, ct))
            self.node_a1, self.node_b1, self.node_c2, self.twin = (
                E(n.id, n.name, n.organization_id, n.collaboration_id) for n in (n_a1, n_b1, n_c2, twin)
            )
            self.u_glob, self.u_col, self.u_org, self.u_orgb, self.u_none = (
                E(x.id, x.username, x.organization_id) for x in users
            )
            self.task1 = E(t1.id, t1.name, collab_id=c1.id, extra={"job_id": t1.job_id})
            self.task2 = E(t2.id, t2.name, collab_id=c2.id, extra={"job_id": t2.job_id})
            self.r_a, self.r_b, self.r_c = (E(r.id, "", r.organization_id, c1.id) for r in (r_a, r_b, r_c))
            self.r_c2 = E(r_c2.id, "", r_c2.organization_id, c2.id)

    def cleanup(self):
        """Remove this world's collaborations 1 and 2, and the collaborations of
        earlier worlds and of the race tests' lone nodes (test_races.py), with
        their nodes, tasks and runs, so the number of
        collaboration rooms a global-scope user joins stays small over a long
        session.  This world's twin collaboration stays until the next
        cleanup: it has the highest id, so SQLite (max(rowid)+1) never hands
        out a deleted id -- and room name -- again.  Users and organisations
        stay."""
        sel = ("SELECT id FROM collaboration WHERE id < :ct AND "
               "(name LIKE 'collab-1-%' OR name LIKE 'collab-2-%' OR name LIKE 'collab-twin-%'"
               " OR name LIKE 'collab-race-%')")
        nodes = f"SELECT id FROM node WHERE collaboration_id IN ({sel})"
        stmts = [
            f"DELETE FROM run WHERE task_id IN (SELECT id FROM task WHERE collaboration_id IN ({sel}))",
            f"DELETE FROM task WHERE collaboration_id IN ({sel})",
            f"DELETE FROM nodeconfig WHERE node_id IN ({nodes})",
            f"CREATE TEMPORARY TABLE IF NOT EXISTS doomed_nodes (id INTEGER)",
            "DELETE FROM doomed_nodes",
            f"INSERT INTO doomed_nodes {nodes}",
            "DELETE FROM node WHERE id IN (SELECT id FROM doomed_nodes)",
            "DELETE FROM authenticatable WHERE id IN (SELECT id FROM doomed_nodes)",
            f'DELETE FROM "Member" WHERE collaboration_id IN ({sel})',
            f"DELETE FROM collaboration WHERE id IN ({sel})",
        ]
        for attempt in range(5):
            try:
                with self.db.engine.begin() as conn:
                    for sql in stmts:
                        conn.execute(text(sql), {"ct": self.ct.id})
                return
            except Exception:
                time.sleep(0.2)


# ---------------------------------------------------------------------------
# tokens, minted by vantage6's own flask-jwt-extended setup
# ---------------------------------------------------------------------------
class _V6Ctx:
    def __init__(self, secret):
        self.config = {"jwt_secret_key": secret}


class TokenFactory:
    def __init__(self, db: DB, secret: str):
        self.db = db
        self.secret = secret
        self.app = self._make_app(secret)
        self.forged_app = self._make_app("not-the-server-secret-" + uuid.uuid4().hex)

    @staticmethod
    def _make_app(secret: str) -> Flask:
        app = Flask("v6-token-minter")
        shim = type("Shim", (), {})()
        shim.app = app
        shim.ctx = _V6Ctx(secret)
        shim.jwt = JWTManager(app)
        shim.debug = {}
        # ServerApp._get_jwt_expiration_seconds needs ctx.config; reuse the real
        # configure_flask/configure_jwt (JWT_SECRET_KEY, JWT_VERIFY_SUB=False,
        # additional claims client_type/roles, identity = Authenticatable.id)
        shim._get_jwt_expiration_seconds = lambda *a, **kw: ServerApp._get_jwt_expiration_seconds(shim, *a, **kw)
        try:
            ServerApp.configure_flask(shim)
        except Exception:
            # configure_flask touches optional config; fall back to the keys it sets
            app.config["JWT_AUTH_URL_RULE"] = "/api/token"
            app.config["JWT_VERIFY_SUB"] = False
            app.config["JWT_SECRET_KEY"] = secret
            app.config["JWT_ACCESS_TOKEN_EXPIRES"] = 6 * 3600
            app.config["JWT_REFRESH_TOKEN_EXPIRES"] = 48 * 3600
        ServerApp.configure_jwt(shim)
        assert app.config["JWT_SECRET_KEY"] == secret
        assert app.config["JWT_VERIFY_SUB"] is False
        return app

    def _mint(self, app, auth_id: int | None, kind: str = "access", identity=None, **kw) -> str:
        with self.db.session() as s:
            if identity is None:
                identity = s.get(v6db.Authenticatable, auth_id)
                assert identity is not None, auth_id
            if isinstance(identity, v6db.User):
                _ = [r.name for r in identity.roles]  # load before minting
            with app.app_context():
                if kind == "access":
                    return create_access_token(identity, **kw)
                return create_refresh_token(identity, **kw)

    def access(self, ent: Ent, **kw) -> str:
        return self._mint(self.app, ent.id, **kw)

    def refresh(self, ent: Ent) -> str:
        return self._mint(self.app, ent.id, kind="refresh")

    def expired(self, ent: Ent) -> str:
        return self._mint(self.app, ent.id, expires_delta=dt.timedelta(seconds=-30))

    def forged(self, ent: Ent) -> str:
        return self._mint(self.forged_app, ent.id)

    def unknown_subject(self) -> str:
        ghost = v6db.Node(name="ghost")
        ghost.id = 987654321
        return self._mint(self.app, None, identity=ghost)

    def container(self, node: Ent, task_id: int) -> str:
        # vantage6 4.x container token: sub is a dict (resource/token.py)
        identity = {
            "client_type": "container",
            "node_id": node.id,
            "organization_id": node.org_id,
            "collaboration_id": node.collab_id,
            "task_id": task_id,
            "image": "harbor2.vantage6.ai/demo/average",
            "databases": [],
        }
        return self._mint(self.app, None, identity=identity, expires_delta=False)


