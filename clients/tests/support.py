"""Shared machinery of the v6-socketio compatibility suite.

* the database is built and filled with the REAL vantage6-server 4.15.2 models;
* tokens are minted by flask-jwt-extended configured by vantage6's own
  ``ServerApp.configure_flask``/``configure_jwt`` code paths;
* ``Recorder`` is an in-process python-socketio client that records every
  event of ``/tasks`` in arrival order; ``wait_for`` never sleeps longer than
  needed;
* ``ServerProcess`` runs ``v6-socketio serve --config FILE``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# vantage6.server's __init__ calls gevent.monkey.patch_all() unless READTHEDOCS is
# set; monkey-patching the test process would turn the socket.io clients'
# threads into greenlets.
_rtd = os.environ.get("READTHEDOCS")
os.environ["READTHEDOCS"] = "1"
try:
    from vantage6.server import db as v6db  # noqa: E402
    from vantage6.server import ServerApp  # noqa: E402
    from vantage6.server.model.base import Database, DatabaseSessionManager  # noqa: E402
    from vantage6.server.model.rule import Operation, Scope  # noqa: E402
finally:
    if _rtd is None:
        os.environ.pop("READTHEDOCS", None)
    else:
        os.environ["READTHEDOCS"] = _rtd

import socketio  # noqa: E402
from flask import Flask  # noqa: E402
from flask_jwt_extended import (  # noqa: E402
    JWTManager,
    create_access_token,
    create_refresh_token,
)
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from lineproc import DEFAULT_TIMEOUT, wait_on, wait_until  # noqa: E402,F401  (wait_until: for the tests)

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "clients"
NS = "/tasks"

# default quiet period used to assert that no further events arrive
SETTLE = float(os.environ.get("V6_TEST_SETTLE", "0.3"))


# ---------------------------------------------------------------------------
# generic helpers
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port: int, timeout: float = 30.0, context=lambda: "") -> None:
    """Until the child `proc` accepts TCP connections on 127.0.0.1:`port`;
    fails if it exits or `timeout` passes (`context()` adds to the message)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode}: {context()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"not listening on {port}: {context()}"
            time.sleep(0.05)


def stop_process(proc, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if `proc` has not exited within `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_get(url: str, headers: dict | None = None, timeout: float = 5.0):
    """(status, headers, body) of a GET, without raising on HTTP errors."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def utcnow_naive() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# ---------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------
class DB:
    """A test database built with vantage6's own models.

    ``uri`` is what the server config gets.  Test-side access uses short-lived
    SQLAlchemy sessions (so no transaction/lock is held while the server
    writes to the SQLite file).
    """

    def __init__(self, backend: str, uri: str, cleanup=None):
        self.backend = backend
        self.uri = uri
        self._cleanup = cleanup
        # vantage6's singleton: creates all tables (Base.metadata.create_all)
        Database().connect(uri, allow_drop_all=True)
        DatabaseSessionManager.clear_session() if v6db_session_exists() else None
        self.engine = create_engine(uri, poolclass=NullPool)
        self._counter = itertools.count(1)
        self._ensure_default_roles()

    def close(self):
        self.engine.dispose()
        with contextlib.suppress(Exception):
            Database().engine.dispose()
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

    def _ensure_default_roles(self):
        # vantage6's user_lookup_loader needs the default 'Node' and 'Container'
        # roles to exist (db.Role.get_by_name(DefaultRole.NODE).rules)
        with self.session() as s:
            for name in ("Root", "Node", "Container"):
                if not s.query(v6db.Role).filter_by(name=name).first():
                    s.add(v6db.Role(name=name, description=f"default role {name}"))

    def rule(self, s: Session, name: str, operation: Operation, scope: Scope):
        r = (
            s.query(v6db.Rule)
            .filter_by(name=name, operation=operation, scope=scope)
            .first()
        )
        if r is None:
            r = v6db.Rule(name=name, operation=operation, scope=scope, description=f"{name} {operation.value} {scope.value}")
            s.add(r)
            s.flush()
        return r

    # -- reads --------------------------------------------------------------
    def auth_row(self, auth_id: int):
        """(status, last_seen) as vantage6's models read them."""
        with self.session() as s:
            a = s.get(v6db.Authenticatable, auth_id)
            s.refresh(a)
            return a.status, a.last_seen

    def set_auth(self, auth_id: int, **values):
        with self.session() as s:
            a = s.get(v6db.Authenticatable, auth_id)
            for k, v in values.items():
                setattr(a, k, v)

    def node_config(self, node_id: int) -> Counter:
        with self.session() as s:
            rows = s.execute(
                text("SELECT key, value FROM nodeconfig WHERE node_id = :n"), {"n": node_id}
            ).all()
        return Counter((k, v) for k, v in rows)

    def node_config_count(self, node_id: int) -> int:
        return sum(self.node_config(node_id).values())

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

    def run_log(self, run_id: int):
        with self.session() as s:
            return s.get(v6db.Run, run_id).log

    def set_run_log(self, run_id: int, value):
        with self.session() as s:
            s.get(v6db.Run, run_id).log = value

    def collaboration_ids(self) -> list[int]:
        with self.session() as s:
            return sorted(c.id for c in s.query(v6db.Collaboration).all())

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
    host = os.environ.get("V6_TEST_PG_HOST", "127.0.0.1")
    port = os.environ.get("V6_TEST_PG_PORT", "5432")
    user = os.environ.get("V6_TEST_PG_USER", "postgres")
    admin_uri = f"postgresql://{user}@{host}:{port}/postgres"
    name = f"v6sio_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_uri, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    try:
        return DB("postgres", f"postgresql://{user}@{host}:{port}/{name}", cleanup=drop)
    except Exception:
        drop()
        raise


# ---------------------------------------------------------------------------
# fixtures: a "world" of organisations, collaborations, nodes and users
# ---------------------------------------------------------------------------
@dataclass
class Ent:
    id: int
    name: str
    org_id: int | None = None
    collab_id: int | None = None
    extra: dict = field(default_factory=dict)


class World:
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

            r_glo = db.rule(s, "event", Operation.RECEIVE, Scope.GLOBAL)
            r_col = db.rule(s, "event", Operation.RECEIVE, Scope.COLLABORATION)
            r_org = db.rule(s, "event", Operation.RECEIVE, Scope.ORGANIZATION)
            r_send = db.rule(s, "event", Operation.SEND, Scope.GLOBAL)
            r_task = db.rule(s, "task", Operation.VIEW, Scope.GLOBAL)
            role_glo = v6db.Role(name=u("role-glo"), organization=org_a, rules=[r_glo, r_task])
            role_orgscope = v6db.Role(name=u("role-orgscope"), organization=org_a, rules=[r_org])

            def user(name, org, **kw):
                return v6db.User(
                    username=u(name), email=f"{u(name)}@example.org", firstname=name,
                    lastname="test", organization=org, status="offline", **kw,
                )

            u_glob = user("glob", org_a, roles=[role_glo, role_orgscope])
            u_col = user("col", org_a, rules=[r_col])
            u_org = user("org", org_a, roles=[role_orgscope])
            u_orgb = user("orgb", org_b, rules=[r_org])
            u_none = user("none", org_b, rules=[r_send, r_task])
            s.add_all([role_glo, role_orgscope, u_glob, u_col, u_org, u_orgb, u_none])
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
                E(x.id, x.username, x.organization_id) for x in (u_glob, u_col, u_org, u_orgb, u_none)
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

    # rooms a node is in (contract: all_nodes is a room, but nobody hears about it)
    @staticmethod
    def node_rooms(node: Ent) -> list[str]:
        return [
            "all_nodes",
            f"collaboration_{node.collab_id}",
            f"collaboration_{node.collab_id}_organization_{node.org_id}",
        ]

    @staticmethod
    def node_public_rooms(node: Ent) -> list[str]:
        return [r for r in World.node_rooms(node) if r != "all_nodes"]

    def user_rooms(self, user: Ent) -> list[str]:
        """Reference 4.15.2 _add_user_to_rooms, computed from the DB."""
        with self.db.session() as s:
            usr = s.get(v6db.User, user.id)

            def has(scope):
                rule = (
                    s.query(v6db.Rule)
                    .filter_by(name="event", operation=Operation.RECEIVE, scope=scope)
                    .first()
                )
                return rule is not None and (
                    rule in usr.rules or any(rule in role.rules for role in usr.roles)
                )

            collabs = [c.id for c in usr.organization.collaborations]
            if has(Scope.GLOBAL):
                return [f"collaboration_{c.id}" for c in s.query(v6db.Collaboration).all()]
            if has(Scope.COLLABORATION):
                return [f"collaboration_{c}" for c in collabs]
            if has(Scope.ORGANIZATION):
                return [f"collaboration_{c}_organization_{usr.organization_id}" for c in collabs]
            return []


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


# ---------------------------------------------------------------------------
# the server process
# ---------------------------------------------------------------------------
def server_binary() -> Path:
    return Path(os.environ.get("V6_SOCKETIO_BIN", REPO / "target" / "debug" / "v6-socketio"))


def yaml_dump(obj, indent=0) -> str:
    """Tiny YAML writer (JSON scalars are valid YAML)."""
    pad = "  " * indent
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out.append(f"{pad}{k}:")
            out.append(yaml_dump(v, indent + 1))
        elif isinstance(v, list):
            out.append(f"{pad}{k}:")
            out.extend(f"{pad}  - {json.dumps(i)}" for i in v)
        else:
            out.append(f"{pad}{k}: {json.dumps(v)}")
    return "\n".join(out)


class ServerProcess:
    def __init__(self, workdir: Path, db: DB, secret: str, *, sweep_interval: float = 2,
                 cors="*", uri: str | None = None, extra: dict | None = None, name="server"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = {
            # an unchanged vantage6 4.x server config, plus our section
            "description": "v6-socketio compatibility test server",
            "ip": "0.0.0.0",
            "port": 7601,
            "api_path": "/api",
            "uri": uri or db.uri,
            "allow_drop_all": False,
            "jwt_secret_key": secret,
            "logging": {"level": "DEBUG", "file": str(self.workdir / "v6.log"), "use_console": True},
            "cors_allowed_origins": cors,
            "v6_socketio": {
                "ip": "127.0.0.1",
                "port": 7999,  # overridden by --port
                "path": "/socket.io/",
                "ping_interval": 25,
                "ping_timeout": 60,
                "sweep_interval": sweep_interval,
                "log_format": "text",
            },
        }
        if extra:
            cfg.update(extra)
        self.config_path = self.workdir / f"{name}.yaml"
        self.config_path.write_text(yaml_dump(cfg) + "\n")
        self.log_path = self.workdir / f"{name}.log"
        self.proc = None

    def start(self, timeout: float = 30):
        binary = server_binary()
        if not binary.exists():
            raise RuntimeError(
                f"server binary {binary} does not exist: run `cargo build` in {REPO} "
                "or set V6_SOCKETIO_BIN"
            )
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        cmd = [str(binary)]
        self.proc = subprocess.Popen(
            cmd + ["serve", "--config", str(self.config_path),
             "--ip", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} during startup:\n{self.log_tail()}"
                )
            try:
                status, _, _ = http_get(self.url + "/health", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        assert self.alive(), f"server process died (rc={self.proc.returncode}):\n{self.log_tail()}"

    def log_tail(self, n=60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                # a graceful stop may wait 10 s for the clients' disconnects
                # (src/server.rs, DRAIN_TIMEOUT) before it closes the broker
                # connection and deletes its queue: do not kill it before
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(Exception):
            self._log.close()

    def metrics(self) -> list[tuple[str, dict, float]]:
        status, _, body = http_get(self.url + "/metrics")
        assert status == 200, f"/metrics returned {status}"
        return parse_prometheus(body.decode())


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_prometheus(textdata: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in textdata.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, _, labels, value = m.group(1), m.group(2), m.group(3), m.group(4)
        lab = {}
        if labels:
            for lm in _LABEL.finditer(labels):
                lab[lm.group(1)] = lm.group(2)
        try:
            samples.append((name, lab, float(value)))
        except ValueError:
            pass
    return samples


# ---------------------------------------------------------------------------
# event-recording clients
# ---------------------------------------------------------------------------
def _handle_messages_in_arrival_order(sio: socketio.Client) -> None:
    """python-engineio's client hands every received message to a thread of
    its own, so under load the handlers (and a recorder's list) can see two
    packets in the opposite order of their arrival. A recorder's handlers
    only append to a list: run them in the read loop, one after the other."""
    eio = sio.eio
    trigger = eio._trigger_event

    def in_order(event, *args, **kwargs):
        if event == "message":
            kwargs["run_async"] = False
        return trigger(event, *args, **kwargs)

    eio._trigger_event = in_order


def disconnect_after_sends(sio: socketio.Client, timeout: float = DEFAULT_TIMEOUT) -> None:
    """`sio.disconnect()` once the packets already emitted have been sent.
    python-engineio's client loses the close packets when `disconnect()` runs
    while its write loop is in the middle of a long-polling POST (the loop
    sees the state change after the POST and exits without sending the
    queue); the client then waits for its pending GET until the server's next
    ping, 25 s, and the server keeps the session until the ping timeout."""
    eio = sio.eio
    deadline = time.monotonic() + timeout
    while (eio.state == "connected" and eio.write_loop_task is not None
           and eio.queue.unfinished_tasks and time.monotonic() < deadline):
        time.sleep(0.005)
    sio.disconnect()


class Recorder:
    """python-socketio client on /tasks that records events in arrival order
    (see `_handle_messages_in_arrival_order`)."""

    def __init__(self, server_url: str, token: str | None = None, *, label: str = "",
                 transports=None, headers: dict | None = None, auth_header: str | None = None):
        self.url = server_url
        self.label = label
        self.token = token
        self.transports = transports
        self.headers = dict(headers or {})
        if auth_header is not None:
            self.headers["Authorization"] = auth_header
        elif token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.events: list[tuple[str, object]] = []
        self.cond = threading.Condition()
        self.sio = socketio.Client(request_timeout=60, reconnection=False)
        self.sio.on("*", self._on_any, namespace=NS)
        self.sio.on("connect", self._on_connect, namespace=NS)
        self.sio.on("disconnect", self._on_disconnect, namespace=NS)
        _handle_messages_in_arrival_order(self.sio)
        self.ns_connected = threading.Event()
        self.disconnected = threading.Event()

    def __repr__(self):
        return f"<Recorder {self.label}>"

    def _on_any(self, event, *args):
        data = None if not args else (args[0] if len(args) == 1 else list(args))
        with self.cond:
            self.events.append((event, data))
            self.cond.notify_all()

    def _on_connect(self, *args):
        self.ns_connected.set()

    def _on_disconnect(self, *args):
        self.disconnected.set()

    def connect(self, wait_ns=True):
        kw = {}
        if self.transports:
            kw["transports"] = self.transports
        self.sio.connect(self.url, headers=self.headers, namespaces=[NS], wait=True,
                         wait_timeout=DEFAULT_TIMEOUT, **kw)
        if wait_ns:
            assert self.ns_connected.wait(DEFAULT_TIMEOUT), f"{self.label}: no CONNECT ack for /tasks"
        return self

    def disconnect(self):
        if self.sio.connected:
            disconnect_after_sends(self.sio)

    def emit(self, event, data=None):
        if data is None:
            self.sio.emit(event, namespace=NS)
        else:
            self.sio.emit(event, data, namespace=NS)

    @property
    def connected(self) -> bool:
        return self.sio.connected and NS in getattr(self.sio, "namespaces", {NS: 1})

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def clear(self):
        with self.cond:
            self.events.clear()

    def wait_for(self, predicate, timeout: float = DEFAULT_TIMEOUT, what: str = ""):
        """Wait until ``predicate(events)`` is truthy; return its value."""
        return wait_on(
            self.cond, lambda: predicate(list(self.events)), timeout,
            lambda: f"{self.label}: timed out after {timeout}s waiting for {what or predicate}; "
            f"events so far: {pretty(self.events)}",
        )

    def wait_count(self, n: int, timeout: float = DEFAULT_TIMEOUT):
        return self.wait_for(lambda evs: len(evs) >= n, timeout, what=f"{n} events")

    def wait_event(self, name: str, timeout: float = DEFAULT_TIMEOUT):
        return self.wait_for(
            lambda evs: next((e for e in evs if e[0] == name), None), timeout, what=f"event {name!r}"
        )


def pretty(events) -> str:
    return "\n  " + "\n  ".join(json.dumps([e, d], default=str) for e, d in events) if events else "[]"


def wait_for(recorder: Recorder, predicate, timeout: float = DEFAULT_TIMEOUT):
    return recorder.wait_for(predicate, timeout)


class Unordered(list):
    """Expected events whose relative order the contract leaves open."""


def expect_exact(expectations: dict, timeout: float = DEFAULT_TIMEOUT, settle: float = SETTLE,
                 clear: bool = True):
    """``expectations``: {recorder: [ (event, data), ... ]}.

    Waits until every recorder has at least as many events as expected, then
    for ``settle`` seconds more (to catch extra events), then compares the
    exact lists.  Clears the recorders afterwards (unless clear=False)."""
    deadline = time.monotonic() + timeout
    for rec, expected in expectations.items():
        remaining = max(0.0, deadline - time.monotonic())
        try:
            rec.wait_for(lambda evs, n=len(expected): len(evs) >= n, remaining, what=f"{len(expected)} events")
        except AssertionError:
            pass  # reported by the comparison below
    if settle:
        time.sleep(settle)
    problems = []
    for rec, expected in expectations.items():
        got = rec.snapshot()
        norm_expected = [(e, d) for e, d in expected]
        if isinstance(expected, Unordered):
            same = sorted(got, key=repr) == sorted(norm_expected, key=repr)
        else:
            same = got == norm_expected
        if not same:
            problems.append(
                f"{rec.label}:\n expected {pretty(norm_expected)}\n got      {pretty(got)}"
            )
    if clear:
        for rec in expectations:
            rec.clear()
    assert not problems, "unexpected events:\n" + "\n".join(problems)


def expect_silence(*recorders: Recorder, settle: float = SETTLE):
    expect_exact({r: [] for r in recorders}, settle=settle, timeout=0)


# ---------------------------------------------------------------------------
# expected payloads
# ---------------------------------------------------------------------------
def node_status_payload(node: Ent) -> dict:
    return {"id": node.id, "name": node.name, "org_id": node.org_id}


def join_msg(kind: str, name: str, room: str):
    return ("message", f"{kind} <{name}> joined room <{room}>")


def left_msg(name: str, room: str):
    return ("message", f"{name} left room {room}")


# ---------------------------------------------------------------------------
# subprocess clients (node simulator in another venv, JS client)
# ---------------------------------------------------------------------------
def quiesce(*recorders: Recorder, settle: float = SETTLE):
    """Let in-flight events arrive, then forget them."""
    time.sleep(settle)
    for r in recorders:
        r.clear()
