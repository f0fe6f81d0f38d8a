"""Processes of the vantage6 5.x end-to-end fleet and the database they share.

Everything here is real: vantage6 HQ 5.0.3 from PyPI (`run_hq.py`: its REST
API and its own Flask-SocketIO, gevent, with the RabbitMQ message queue from
its configuration), the `v6-socketio serve` binary on the same HQ
configuration file, RabbitMQ and PostgreSQL on 127.0.0.1, and the Keycloak
realm stand-in (`clients/keycloak_standin.py`) in the test process.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import requests

import lineproc
from logged_process import Process  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[2]
AMQP_URI = os.environ.get("V6_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
DEFAULT_TIMEOUT = 20.0
REALM = "vantage6"
ADMIN_USER = "admin"  # KEYCLOAK_ADMIN_USERNAME: HQ's root user
ADMIN_CLIENT = "backend-admin-client"
ADMIN_SECRET = "e2e-admin-client-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05, what: str = ""):
    return lineproc.wait_until(predicate, timeout, interval, what)


def server_binary() -> Path:
    path = Path(os.environ.get("V6_SOCKETIO_BIN", ROOT / "target" / "debug" / "v6-socketio"))
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: build with `cargo build` or set V6_SOCKETIO_BIN")
    return path


class Database:
    """A fresh 5.x database: a SQLite file or a new PostgreSQL database.
    HQ creates the tables on its start (`Database().connect`)."""

    def __init__(self, backend: str, workdir: Path):
        self.backend = backend
        if backend == "sqlite":
            self.path = workdir / "hq.sqlite"
            self.uri = f"sqlite:///{self.path}"
            self.name = None
        elif backend == "postgres":
            import psycopg2

            self.name = "v6e2e5_" + uuid.uuid4().hex[:12]
            conn = psycopg2.connect(**PG_ADMIN)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.name}"')
            conn.close()
            self.uri = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        else:
            raise ValueError(backend)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one read-only query (`?` placeholders), straight from the
        database: what HQ and v6-socketio wrote, not what REST shows."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.path, timeout=10)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return cur.fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, params: tuple = ()) -> None:
        """One write (`?` placeholders), committed: what another of the
        fleet's processes (HQ's offline sweep) would write."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.path, timeout=10)
            try:
                with conn:
                    conn.execute(sql, params)
            finally:
                conn.close()
            return
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=self.name)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
        finally:
            conn.close()

    def drop(self):
        if self.backend != "postgres":
            return
        import psycopg2

        conn = psycopg2.connect(**PG_ADMIN)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (self.name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        conn.close()


class Broker:
    """A RabbitMQ virtual host of the fleet's own (rabbitmqctl, when on this
    machine): HQ's Flask-SocketIO always uses the exchange `flask-socketio`,
    so another run's events must not reach this one."""

    def __init__(self):
        self.vhost = None
        self.uri = AMQP_URI
        ctl = shutil.which("rabbitmqctl") or (
            "/usr/sbin/rabbitmqctl" if Path("/usr/sbin/rabbitmqctl").exists() else None)
        if "V6_TEST_AMQP_URL" in os.environ or ctl is None:
            return
        vhost = "v6e2e5-" + uuid.uuid4().hex[:12]
        subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, timeout=60, capture_output=True)
        subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, timeout=60, capture_output=True)
        self.ctl, self.vhost = ctl, vhost
        self.uri = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"

    def drop(self):
        if self.vhost:
            subprocess.run([self.ctl, "-q", "delete_vhost", self.vhost], timeout=60,
                           capture_output=True)


def write_hq_config(path: Path, *, db: Database, broker: Broker, api_port: int) -> Path:
    """HQ 5.0.3's configuration file (docs/vantage6-5x-socket.md §8.3), read
    unchanged by HQ and by every v6-socketio instance; our own settings sit in
    the `v6_socketio:` section HQ ignores."""
    config = {
        "api_path": "/hq",
        "uri": db.uri,
        "port": api_port,
        "jwt_secret_key": f"container-{uuid.uuid4().hex}",
        "algorithm_stores": [],
        "rabbitmq": {"uri": broker.uri},
        "logging": {
            "level": "INFO",
            "file": str(path.parent / "hq.log"),
            "use_console": True,
            "backup_count": 1,
            "max_size": 1024,
            "format": "%(asctime)s - %(name)-14s - %(levelname)-8s - %(message)s",
            "datefmt": "%H:%M:%S",
            "loggers": [{"name": "urllib3", "level": "warning"},
                        {"name": "sqlalchemy.engine", "level": "warning"}],
        },
        # no message_queue_format: the 5.x default (`args`, python-socketio
        # 5.16.2's argument list, as HQ 5.0.3 publishes) is what the mixed
        # fleet relies on
        "v6_socketio": {
            "ip": "127.0.0.1",
            "keycloak_key_refresh_interval": 1,
            "sweep_interval": 65,
        },
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def keycloak_env(kc) -> dict:
    """The environment HQ and v6-socketio read Keycloak's address from
    (docs/vantage6-5x-socket.md §9.2)."""
    return {
        "KEYCLOAK_URL": kc.url,
        "KEYCLOAK_REALM": kc.realm,
        "KEYCLOAK_ADMIN_USERNAME": ADMIN_USER,
        "KEYCLOAK_ADMIN_PASSWORD": "unused-by-client-credentials",
        "KEYCLOAK_ADMIN_CLIENT": ADMIN_CLIENT,
        "KEYCLOAK_ADMIN_CLIENT_SECRET": ADMIN_SECRET,
    }


class HQ(Process):
    """vantage6 HQ 5.0.3: REST under /hq plus its own Flask-SocketIO on
    /socket.io/ (the mixed fleet's nodes connect to it)."""

    def __init__(self, workdir: Path, config: Path, port: int, kc):
        launcher = Path(__file__).with_name("run_hq.py")
        env = dict(os.environ, HOME=str(workdir), PYTHONUNBUFFERED="1", **keycloak_env(kc))
        super().__init__("hq", [sys.executable, str(launcher), str(config), str(port)], workdir, env)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/hq"

    def start(self, timeout: float = 120):
        super().start()
        self.wait_http(f"{self.api_url}/version", timeout)


class SocketioInstance(Process):
    """One `v6-socketio serve` on HQ's configuration file, in 5.x mode (the
    generation is found from the database HQ created)."""

    def __init__(self, workdir: Path, config: Path, port: int, name: str, kc):
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"),
                   KEYCLOAK_URL=kc.url, KEYCLOAK_REALM=kc.realm)
        env.pop("RUST_BACKTRACE", None)
        super().__init__(name, [str(server_binary()), "serve", "--config", str(config),
                                "--port", str(port), "--instance-name", f"127.0.0.1:{port}"],
                         workdir, env)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30):
        super().start()
        self.wait_http(f"{self.url}/ready", timeout)

    def metric(self, name: str, labels: dict | None = None) -> float:
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
                continue
            total += float(value)
        return total
