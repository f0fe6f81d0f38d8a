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
import string
import sys
from pathlib import Path

import requests

import e2e_harness
from e2e_harness import (  # noqa: F401  (re-exported)
    DEFAULT_TIMEOUT,
    ROOT,
    SocketioInstance,
    free_port,
    logging_config,
    server_binary,
    wait_until,
)
from logged_process import Process

NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "vantage6.conf.template"


class Database(e2e_harness.Database):
    """A fresh vantage6 database: a SQLite file or a new PostgreSQL database.

    vantage6's REST server creates the tables on its first start."""

    def __init__(self, backend: str, workdir: Path):
        super().__init__(backend, workdir, sqlite_file="vantage6.sqlite", pg_prefix="v6e2e_")


class Broker(e2e_harness.Broker):
    """The deployment's own RabbitMQ virtual host (see e2e_harness.Broker)."""

    def __init__(self):
        super().__init__("v6e2e-")


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
        "logging": logging_config("vantage6-server.log", "%Y-%m-%d %H:%M:%S", ["urllib3"]),
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
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__("vantage6-server", [sys.executable, str(launcher), str(config), str(port)],
                         workdir, env, ready_url=f"{self.url}/api/version", ready_timeout=90)


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
        super().__init__(name, [nginx, "-p", str(ngx), "-c", str(ngx / "nginx.conf")], workdir,
                         ready_url=f"{self.url}/api/version", ready_timeout=15)

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
