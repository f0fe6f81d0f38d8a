"""Processes of the end-to-end deployment: vantage6's REST server, the
v6-socketio instances, nginx, and the database they share.

Everything here is real: vantage6-server 4.15.2 from PyPI (its own dev
server, gevent), the `v6-socketio serve` binary, Debian's nginx rendering
`deploy/nginx/vantage6.conf.template`, RabbitMQ and PostgreSQL on 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import uuid
from pathlib import Path

import lineproc
from logged_process import Process  # noqa: F401  (re-exported)
import requests

ROOT = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "vantage6.conf.template"
AMQP_URI = os.environ.get("V6_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
DEFAULT_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05, what: str = ""):
    """lineproc.wait_until with this suite's longer default timeout."""
    return lineproc.wait_until(predicate, timeout, interval, what)


def server_binary() -> Path:
    path = Path(os.environ.get("V6_SOCKETIO_BIN", ROOT / "target" / "debug" / "v6-socketio"))
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: build with `cargo build` or set V6_SOCKETIO_BIN")
    return path


class Database:
    """A fresh vantage6 database: a SQLite file or a new PostgreSQL database.

    vantage6's REST server creates the tables on its first start."""

    def __init__(self, backend: str, workdir: Path):
        self.backend = backend
        if backend == "sqlite":
            self.uri = f"sqlite:///{workdir / 'vantage6.sqlite'}"
            self.name = None
        elif backend == "postgres":
            import psycopg2

            self.name = "v6e2e_" + uuid.uuid4().hex[:12]
            conn = psycopg2.connect(**PG_ADMIN)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.name}"')
            conn.close()
            self.uri = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        else:
            raise ValueError(backend)

    def drop(self):
        if self.backend != "postgres":
            return
        import psycopg2

        conn = psycopg2.connect(**PG_ADMIN)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (self.name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        conn.close()


class Broker:
    """The RabbitMQ every process of one deployment uses.

    vantage6's Flask-SocketIO always uses the exchange `flask-socketio`, so a
    deployment gets a virtual host of its own (made with rabbitmqctl when it
    is on this machine) and never sees another test run's events. With
    V6_TEST_AMQP_URL set, that URL is used as it is."""

    def __init__(self):
        self.vhost = None
        self.uri = AMQP_URI
        ctl = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if Path("/usr/sbin/rabbitmqctl").exists() else None)
        if "V6_TEST_AMQP_URL" in os.environ or ctl is None:
            return
        vhost = "v6e2e-" + uuid.uuid4().hex[:12]
        subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, timeout=60, capture_output=True)
        subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, timeout=60, capture_output=True)
        self.ctl, self.vhost = ctl, vhost
        self.uri = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"

    def drop(self):
        if self.vhost:
            subprocess.run([self.ctl, "-q", "delete_vhost", self.vhost], timeout=60,
                           capture_output=True)


def write_config(path: Path, *, db: Database, broker: Broker, api_port: int, secret: str) -> Path:
    """One vantage6 server configuration shared by vantage6 and every
    v6-socketio instance (each instance gets its port from --port)."""
    config = {
        "description": "v6-socketio end-to-end deployment",
        "ip": "127.0.0.1",
        "port": api_port,
        "api_path": "/api",
        "uri": db.uri,
        "allow_drop_all": False,
        "jwt_secret_key": secret,
        "logging": {
            "level": "INFO",
            "file": "vantage6-server.log",
            "use_console": True,
            "backup_count": 1,
            "max_size": 1024,
            "format": "%(asctime)s - %(name)-14s - %(levelname)-8s - %(message)s",
            "datefmt": "%Y-%m-%d %H:%M:%S",
            "loggers": [{"name": "urllib3", "level": "warning"}],
        },
        "rabbitmq": {"uri": broker.uri},
        "v6_socketio": {"ip": "127.0.0.1", "sweep_interval": 60},
    }
    # JSON is YAML: no YAML writer needed in this virtualenv's harness.
    path.write_text(json.dumps(config, indent=2))
    return path


class Vantage6Server(Process):
    """vantage6-server 4.15.2: REST API under /api plus its own Flask-SocketIO
    (which serves the nodes of the mixed-fleet scenario)."""

    def __init__(self, workdir: Path, config: Path, port: int):
        launcher = Path(__file__).with_name("run_vantage6_server.py")
        env = dict(os.environ, HOME=str(workdir), PYTHONUNBUFFERED="1")
        super().__init__("vantage6-server", [sys.executable, str(launcher), str(config), str(port)],
                         workdir, env)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 90):
        super().start()
        self.wait_http(f"{self.url}/api/version", timeout)


class SocketioInstance(Process):
    """One `v6-socketio serve` process."""

    def __init__(self, workdir: Path, config: Path, port: int, name: str):
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        env.pop("RUST_BACKTRACE", None)
        # the instance name is what the nginx pin map knows it by
        super().__init__(name, [str(server_binary()), "serve", "--config", str(config),
                                "--port", str(port), "--instance-name", f"127.0.0.1:{port}"],
                         workdir, env)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.addr = f"127.0.0.1:{port}"

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


def render_nginx_site(*, listen: str, socketio_addrs: list[str], api_addrs: list[str]) -> str:
    """The deployment template with its placeholders filled in, the way the
    nginx image's envsubst does it: only the named variables are replaced,
    nginx's own `$variables` stay."""
    template = string.Template(NGINX_TEMPLATE.read_text())
    return template.safe_substitute(
        NGINX_LISTEN=listen,
        NGINX_RESOLVER="127.0.0.1",
        V6_SOCKETIO_SERVERS="\n    ".join(f"server {a} max_fails=1 fail_timeout=5s;" for a in socketio_addrs),
        # instance names are their addresses (--instance-name)
        V6_SOCKETIO_PINS="\n    ".join(f"{a} {a};" for a in socketio_addrs),
        VANTAGE6_API_SERVERS="\n    ".join(f"server {a};" for a in api_addrs),
        MAX_BODY_SIZE="100m",
    )


class Nginx(Process):
    """Debian's nginx with the deployment template as its only site.

    The main configuration adds what a test needs to see and nothing that
    changes routing: a header naming the upstream that answered
    (`X-Upstream-Addr`), so a test can tell which instance a client's
    Authorization header is pinned to."""

    def __init__(self, workdir: Path, port: int, socketio_addrs: list[str], api_addrs: list[str],
                 name: str = "nginx"):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        ngx = workdir / name
        for sub in ("logs", "tmp"):
            (ngx / sub).mkdir(parents=True, exist_ok=True)
        site = render_nginx_site(listen=f"127.0.0.1:{port}", socketio_addrs=socketio_addrs,
                                 api_addrs=api_addrs)
        (ngx / "vantage6.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""
        tmp = ngx / "tmp"
        (ngx / "nginx.conf").write_text(
            f"""{user}worker_processes 1;
pid {ngx / 'nginx.pid'};
error_log {ngx / 'logs' / 'error.log'} info;
daemon off;
events {{ worker_connections 4096; }}
http {{
    log_format upstream '$remote_addr "$request" $status $request_time up=$upstream_addr '
                        'upstream_status=$upstream_status auth=$http_authorization';
    access_log {ngx / 'logs' / 'access.log'} upstream;
    client_body_temp_path {tmp / 'body'};
    proxy_temp_path {tmp / 'proxy'};
    fastcgi_temp_path {tmp / 'fastcgi'};
    uwsgi_temp_path {tmp / 'uwsgi'};
    scgi_temp_path {tmp / 'scgi'};
    add_header X-Upstream-Addr $upstream_addr always;
    include {ngx / 'vantage6.conf'};
}}
"""
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        super().__init__(name, [nginx, "-p", str(ngx), "-c", str(ngx / "nginx.conf")], workdir)

    def start(self, timeout: float = 15):
        super().start()
        self.wait_http(f"{self.url}/api/version", timeout)

    def upstream_of(self, authorization: str) -> str:
        """The v6-socketio instance (host:port) nginx pins this Authorization
        header to, learned from a throw-away Engine.IO handshake that is
        closed right away."""
        r = requests.get(
            f"{self.url}/socket.io/", params={"EIO": "4", "transport": "polling"},
            headers={"Authorization": authorization}, timeout=5,
        )
        r.raise_for_status()
        upstream = r.headers["X-Upstream-Addr"].split(",")[-1].strip()
        body = r.text
        sid = json.loads(body[body.index("{"):])["sid"]
        with contextlib.suppress(requests.RequestException):
            requests.post(
                f"{self.url}/socket.io/", params={"EIO": "4", "transport": "polling", "sid": sid},
                headers={"Authorization": authorization}, data="1", timeout=5,
            )
        return upstream
