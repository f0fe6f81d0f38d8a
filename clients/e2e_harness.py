"""What both end-to-end suites (``e2e/`` against vantage6 4.x, ``e2e_v5/``
against 5.x) build their deployments from: ports, waiting, the database and
the RabbitMQ virtual host of one deployment, the `v6-socketio serve`
instances, and the checks of their fixtures. Each suite's ``harness`` module
adds its own vantage6 processes and configuration file. Needs ``requests``
and ``pytest`` (both virtualenvs have them); ``psycopg2`` for PostgreSQL.
"""
from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

import lineproc
from logged_process import Process

ROOT = Path(__file__).resolve().parents[1]
AMQP_URI = os.environ.get("V6_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
DEFAULT_TIMEOUT = 20.0
#: The database backends a suite runs on (V6_TEST_BACKENDS, comma-separated).
BACKENDS = [b for b in os.environ.get("V6_TEST_BACKENDS", "sqlite,postgres").split(",") if b]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05, what: str = ""):
    """lineproc.wait_until with the end-to-end suites' longer default timeout."""
    return lineproc.wait_until(predicate, timeout, interval, what)


def server_binary() -> Path:
    path = Path(os.environ.get("V6_SOCKETIO_BIN", ROOT / "target" / "debug" / "v6-socketio"))
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: build with `cargo build` or set V6_SOCKETIO_BIN")
    return path


def _pg_admin_execute(*statements: tuple[str, tuple]) -> None:
    import psycopg2

    conn = psycopg2.connect(**PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        for sql, params in statements:
            cur.execute(sql, params)
    conn.close()


class Database:
    """A fresh database of one deployment: the SQLite file `sqlite_file` in
    `workdir`, or a new PostgreSQL database named `<pg_prefix><random>`.
    vantage6 (the REST server, or HQ) creates the tables on its first start."""

    def __init__(self, backend: str, workdir: Path, *, sqlite_file: str, pg_prefix: str):
        self.backend = backend
        if backend == "sqlite":
            self.path = workdir / sqlite_file
            self.uri = f"sqlite:///{self.path}"
            self.name = None
        elif backend == "postgres":
            self.name = pg_prefix + uuid.uuid4().hex[:12]
            _pg_admin_execute((f'CREATE DATABASE "{self.name}"', ()))
            self.uri = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        else:
            raise ValueError(backend)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one read-only query (`?` placeholders), straight from the
        database: what vantage6 and v6-socketio wrote, not what REST shows."""
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
        """One write (`?` placeholders), committed: what another process of
        the deployment (vantage6's offline sweep) would write."""
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
        _pg_admin_execute(
            ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
             (self.name,)),
            (f'DROP DATABASE IF EXISTS "{self.name}"', ()),
        )


class Broker:
    """The RabbitMQ every process of one deployment uses.

    vantage6's Flask-SocketIO (4.x server, 5.x HQ) always uses the exchange
    `flask-socketio`, so a deployment gets a virtual host of its own
    (`<vhost_prefix><random>`, made with rabbitmqctl when it is on this
    machine) and never sees another test run's events. With
    V6_TEST_AMQP_URL set, that URL is used as it is."""

    def __init__(self, vhost_prefix: str):
        self.vhost = None
        self.uri = AMQP_URI
        ctl = shutil.which("rabbitmqctl") or (
            "/usr/sbin/rabbitmqctl" if Path("/usr/sbin/rabbitmqctl").exists() else None)
        if "V6_TEST_AMQP_URL" in os.environ or ctl is None:
            return
        vhost = vhost_prefix + uuid.uuid4().hex[:12]
        subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, timeout=60, capture_output=True)
        subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, timeout=60, capture_output=True)
        self.ctl, self.vhost = ctl, vhost
        self.uri = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"

    def drop(self):
        if self.vhost:
            subprocess.run([self.ctl, "-q", "delete_vhost", self.vhost], timeout=60,
                           capture_output=True)


def logging_config(file: str, datefmt: str, quiet_loggers: list[str]) -> dict:
    """The `logging` section of a vantage6 configuration file: INFO to the
    console and to `file`, the `quiet_loggers` at warning."""
    return {
        "level": "INFO",
        "file": file,
        "use_console": True,
        "backup_count": 1,
        "max_size": 1024,
        "format": "%(asctime)s - %(name)-14s - %(levelname)-8s - %(message)s",
        "datefmt": datefmt,
        "loggers": [{"name": name, "level": "warning"} for name in quiet_loggers],
    }


class SocketioInstance(Process):
    """One `v6-socketio serve` on the deployment's configuration file; its
    instance name is its address (what nginx's pin map knows it by). `env`:
    more environment variables."""

    def __init__(self, workdir: Path, config: Path, port: int, name: str, env: dict | None = None):
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), **(env or {}))
        env.pop("RUST_BACKTRACE", None)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.addr = f"127.0.0.1:{port}"
        super().__init__(name, [str(server_binary()), "serve", "--config", str(config),
                                "--port", str(port), "--instance-name", self.addr],
                         workdir, env, ready_url=f"{self.url}/ready")

    def metric(self, name: str, labels: dict | None = None) -> float:
        """The sum of the samples of `name` on /metrics with these labels."""
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


class Deployment:
    """What both suites' deployments share: their processes (`processes()`,
    in start order), their database (`db`) and broker (`broker`)."""

    db: Database
    broker: Broker

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def processes(self) -> list[Process]:
        raise NotImplementedError

    def started(self):
        """`start()`, or on failure the processes' logs printed, `stop()` and
        the error; returns the deployment."""
        try:
            self.start()
        except Exception:
            print(self.describe_failure())
            self.stop()
            raise
        return self

    def drop_storage(self):
        """The end of `stop()`: the database (left behind with a message when
        it cannot be dropped) and the virtual host."""
        try:
            self.db.drop()
        except Exception as exc:  # leave the database behind, say so
            print(f"could not drop {self.db.name}: {exc}")
        self.broker.drop()

    def describe_failure(self) -> str:
        return "\n".join(f"--- {p.name} (alive={p.alive()}) ---\n{p.log_tail()}"
                         for p in self.processes())


def processes_still_alive(fixture: str):
    """An autouse fixture: after each test that used the deployment fixture
    named `fixture`, every process of it is still running."""

    @pytest.fixture(autouse=True)
    def check(request):
        yield
        if fixture in request.fixturenames:
            dep = request.getfixturevalue(fixture)
            dead = [p.name for p in dep.processes() if not p.alive()]
            assert not dead, f"processes died during the test: {dead}\n{dep.describe_failure()}"

    return check
