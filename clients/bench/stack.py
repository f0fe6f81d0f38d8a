"""What the comparison starts and stops: PostgreSQL and RabbitMQ (only when installed but not
running, and then stopped again at the end), the run's own database and RabbitMQ virtual host,
and the three deployments' server processes.

Everything registers its undo on a :class:`Cleanup` stack as soon as it exists, so a failure or
Ctrl-C at any point stops exactly what was started, newest first.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logged_process import Process  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PG = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
AMQP_HOST = "127.0.0.1:5672"


def log(msg: str) -> None:
    """Progress on stderr (stdout carries nothing but the report)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Cleanup:
    """Undo actions, run newest first by :meth:`run` (each at most once; a failing one is
    logged and the others still run)."""

    def __init__(self):
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self._undo.append((what, undo))

    def run(self) -> None:
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # keep undoing the rest
                log(f"cleanup of {what} failed: {exc}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


# ---------------------------------------------------------------------------
# the services (as scripts/test-all.sh: started when installed but not running)
# ---------------------------------------------------------------------------
def ensure_postgres(cleanup: Cleanup) -> None:
    if port_open(5432):
        return
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    if not shutil.which("pg_ctlcluster") or not versions:
        raise RuntimeError("PostgreSQL is not running on 127.0.0.1:5432 and is not installed")
    log("starting PostgreSQL (it will be stopped at the end)")
    for v in versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", v.name, "main", "start"], check=False)
        cleanup.push(f"PostgreSQL {v.name}", lambda v=v: subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", v.name, "main", "stop"], check=False))
    wait_for(lambda: port_open(5432), 60, "PostgreSQL")


def rabbitmqctl() -> str:
    ctl = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if Path("/usr/sbin/rabbitmqctl").exists() else None)
    if not ctl:
        raise RuntimeError("rabbitmqctl not found: the run needs a RabbitMQ virtual host of its own")
    return ctl


def ensure_rabbitmq(cleanup: Cleanup) -> None:
    if port_open(5672):
        return
    if not shutil.which("rabbitmq-server"):
        raise RuntimeError("RabbitMQ is not running on 127.0.0.1:5672 and is not installed")
    log("starting RabbitMQ (it will be stopped at the end)")
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    cleanup.push("RabbitMQ", lambda: subprocess.run([rabbitmqctl(), "stop"], check=False, timeout=120))
    wait_for(lambda: port_open(5672), 90, "RabbitMQ")


def _pg(*statements: str, dbname: str = "postgres") -> None:
    import psycopg2

    conn = psycopg2.connect(**dict(PG, dbname=dbname))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()


def create_database(cleanup: Cleanup, run_id: str) -> str:
    """A fresh PostgreSQL database for the run (dropped at the end); its URL."""
    name = f"bench_{run_id}"
    _pg(f'CREATE DATABASE "{name}"')
    cleanup.push(f"database {name}", lambda: _pg(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        f'DROP DATABASE IF EXISTS "{name}"'))
    log(f"database {name}")
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def create_vhost(cleanup: Cleanup, run_id: str) -> str:
    """A fresh RabbitMQ virtual host for the run (deleted at the end); its AMQP URI."""
    ctl, vhost = rabbitmqctl(), f"bench-{run_id}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, timeout=60, capture_output=True)
    cleanup.push(f"vhost {vhost}", lambda: subprocess.run(
        [ctl, "-q", "delete_vhost", vhost], check=False, timeout=60, capture_output=True))
    subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, timeout=60, capture_output=True)
    log(f"RabbitMQ virtual host {vhost}")
    return f"amqp://guest:guest@{AMQP_HOST}/{vhost}"


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


# ---------------------------------------------------------------------------
# configuration files
# ---------------------------------------------------------------------------
def write_config(path: Path, *, database_url: str, secret: str, amqp_uri: str | None, api_port: int) -> Path:
    """A vantage6 4.15.2 server configuration (JSON is YAML) that vantage6 and v6-socketio both
    read; without ``amqp_uri`` there is no ``rabbitmq`` key (deployment b)."""
    config = {
        "description": "v6-socketio comparison",
        "ip": "127.0.0.1",
        "port": api_port,
        "api_path": "/api",
        "uri": database_url,
        "allow_drop_all": False,
        "jwt_secret_key": secret,
        "logging": {
            "level": "WARNING", "file": "vantage6-server.log", "use_console": True,
            "backup_count": 1, "max_size": 1024,
            "format": "%(asctime)s - %(name)-14s - %(levelname)-8s - %(message)s",
            "datefmt": "%Y-%m-%d %H:%M:%S",
            "loggers": [{"name": "urllib3", "level": "warning"}],
        },
        "cors_allowed_origins": "*",
        "v6_socketio": {"ip": "127.0.0.1", "log_format": "text"},
    }
    if amqp_uri:
        config["rabbitmq"] = {"uri": amqp_uri}
    path.write_text(json.dumps(config, indent=2))
    return path


# ---------------------------------------------------------------------------
# server processes
# ---------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc), for CPU and RSS sampling."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class Server(Process):
    """One server process of a deployment: started in a session of its own, stopped with its
    whole process group (uWSGI's master, workers and HTTP router)."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict, *, port: int,
                 ready_path: str, ready_timeout: float):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(name, argv, workdir, env, ready_url=self.url + ready_path, ready_timeout=ready_timeout)

    def start(self):
        self.spawn()
        self.wait_ready()

    def wait_ready(self) -> None:
        self.wait_http(self.ready_url, self.ready_timeout)

    def spawn(self) -> None:
        """Starts the process without waiting for it. Call it from the main thread: the death
        signal is sent when the *thread* that forked the child ends."""
        log_file = open(self.log_path, "ab")
        death = self.stop_signal

        def die_with_parent():  # the kernel sends `death` when compare.py dies, however
            with contextlib.suppress(OSError, AttributeError):
                import ctypes

                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, death)  # PR_SET_PDEATHSIG

        self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env, stdout=log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)
        log_file.close()

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.alive() else []

    def signal(self, sig: int) -> None:
        """Sends ``sig`` to the server's process group (nothing when it is not running)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, sig=None, timeout: float = 20):
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig or self.stop_signal)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # stragglers of the group (uWSGI workers) die with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class SocketioServer(Server):
    """``v6-socketio serve --config F --port P --instance-name N`` (release build)."""

    def __init__(self, binary: Path, config: Path, workdir: Path, name: str):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("V6_SOCKETIO_")}
        env.setdefault("RUST_LOG", "warn")
        super().__init__(name, [str(binary), "serve", "--config", str(config), "--port", str(port),
                                "--instance-name", name], workdir, env,
                         port=port, ready_path="/ready", ready_timeout=60)


def vantage6_wsgi_file(python: Path) -> Path:
    """``<site-packages>/vantage6/server/wsgi.py`` of the virtualenv's vantage6-server."""
    out = subprocess.run([str(python), "-c", "import importlib.util as u; "
                          "print(u.find_spec('vantage6.server').submodule_search_locations[0])"],
                         check=True, capture_output=True, text=True, env=dict(os.environ, READTHEDOCS="1"))
    return Path(out.stdout.strip()) / "wsgi.py"


def vantage6_uwsgi_argv(uwsgi: Path, port: int, wsgi_file: Path, config: Path) -> list[str]:
    """vantage6's docker image's command line (`v6 server start`; the README's deployment
    material test pins it, clients/tests/test_deploy_material.py VANTAGE6_UWSGI) on ``port``."""
    return [str(uwsgi), "--http", f":{port}", "--gevent", "1000", "--http-websockets",
            "--http-chunked-input", "--http-keepalive", "--post-buffering", "0", "--master",
            "--callable", "app", "--disable-logging", "--wsgi-file", str(wsgi_file),
            "--pyargv", str(config)]


class Vantage6Server(Server):
    """vantage6-server 4.15.2 under uWSGI (gevent, 1,000 async cores) as its docker image runs
    it. uWSGI's master reloads on SIGTERM; SIGINT stops it."""

    stop_signal = signal.SIGINT

    def __init__(self, venv: Path, wsgi_file: Path, config: Path, workdir: Path, name: str):
        port = free_port()
        home = workdir / f"{name}-home"
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HOME=str(home), PYTHONUNBUFFERED="1",
                   PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv))
        env.pop("READTHEDOCS", None)
        super().__init__(name, vantage6_uwsgi_argv(venv / "bin" / "uwsgi", port, wsgi_file, config),
                         workdir, env, port=port, ready_path="/api/version", ready_timeout=180)


class Deployment:
    """Server processes started and stopped together, each on the same port every time (a
    restarted deployment is where the load generator's clients reconnect); ``urls`` and
    ``pids`` for the load generator."""

    def __init__(self, key: str, servers: list[Server], *, broker: bool):
        self.key = key
        self.servers = servers
        self.broker = broker

    def start(self, *, together: bool = False) -> None:
        """Starts every server, one after the other (the first start of vantage6 creates its
        tables and root user: two at once would race), or ``together`` (a restart)."""
        try:
            if together:  # all spawned at once (from this thread), then waited for
                for s in self.servers:
                    s.spawn()
                for s in self.servers:
                    s.wait_ready()
            else:
                for s in self.servers:
                    s.start()
        except Exception:
            self.stop()
            raise
        log(f"deployment {self.key} up: " + ", ".join(f"{s.name} {s.url} pid {s.proc.pid}" for s in self.servers))

    def stop(self, *, kill: bool = False) -> None:
        """Stops every server at once (signals all, then waits); ``kill``: SIGKILL, no
        graceful stop."""
        for s in self.servers:
            s.signal(signal.SIGKILL if kill else s.stop_signal)
        for s in self.servers:
            s.stop()

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        for s in self.servers:
            wait_bindable(s.port, 90)
        self.start(together=True)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def pids(self) -> list[int]:
        return [p for s in self.servers for p in s.pids()]

    def alive(self) -> bool:
        return all(s.alive() for s in self.servers)

    def describe(self) -> str:
        return "\n".join(f"--- {s.name} ({s.log_path}) ---\n{s.log_tail(15)}" for s in self.servers)


def bindable(port: int) -> bool:
    """Whether a listener can take ``port`` now, checked as strictly as uWSGI binds (without
    SO_REUSEADDR: connections of the killed server in TIME_WAIT still hold it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def wait_bindable(port: int, timeout: float) -> None:
    """Waits until a stopped server's port is free again: right after a SIGKILL its processes
    may still be exiting, and uWSGI then fails with "bind(): Address already in use"."""
    deadline = time.monotonic() + timeout
    while not bindable(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} still in use {timeout:.0f} s after its server stopped")
        time.sleep(0.1)


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not answering after {timeout:.0f} s")
