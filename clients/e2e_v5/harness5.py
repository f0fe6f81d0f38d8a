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
import sys
import uuid
from pathlib import Path

import e2e_harness
from e2e_harness import DEFAULT_TIMEOUT, free_port, logging_config, wait_until  # noqa: F401
from logged_process import Process

REALM = "vantage6"
ADMIN_USER = "admin"  # KEYCLOAK_ADMIN_USERNAME: HQ's root user
ADMIN_CLIENT = "backend-admin-client"
ADMIN_SECRET = "e2e-admin-client-secret"


class Database(e2e_harness.Database):
    """A fresh 5.x database: a SQLite file or a new PostgreSQL database.
    HQ creates the tables on its start (`Database().connect`)."""

    def __init__(self, backend: str, workdir: Path):
        super().__init__(backend, workdir, sqlite_file="hq.sqlite", pg_prefix="v6e2e5_")


class Broker(e2e_harness.Broker):
    """A RabbitMQ virtual host of the fleet's own (see e2e_harness.Broker)."""

    def __init__(self):
        super().__init__("v6e2e5-")


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
        "logging": logging_config(str(path.parent / "hq.log"), "%H:%M:%S",
                                  ["urllib3", "sqlalchemy.engine"]),
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
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/hq"
        super().__init__("hq", [sys.executable, str(launcher), str(config), str(port)], workdir, env,
                         ready_url=f"{self.api_url}/version", ready_timeout=120)


class SocketioInstance(e2e_harness.SocketioInstance):
    """One `v6-socketio serve` on HQ's configuration file, in 5.x mode (the
    generation is found from the database HQ created)."""

    def __init__(self, workdir: Path, config: Path, port: int, name: str, kc):
        super().__init__(workdir, config, port, name,
                         env={"KEYCLOAK_URL": kc.url, "KEYCLOAK_REALM": kc.realm})
