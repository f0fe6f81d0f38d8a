"""RabbitMQ URIs as vantage6 writes them (issue 8, point 1).

vantage6's REST API and Flask-SocketIO hand ``rabbitmq.uri`` to kombu, so the
same string must take ``v6-socketio serve`` and ``v6-socketio emit`` to the
broker and virtual host kombu picks. For every form below the test starts
``serve`` with an unchanged-looking vantage6 configuration file carrying that
URI, connects a node, and publishes a ``new_task`` three ways with the same
URI: ``emit --config <that file>``, ``emit --rabbitmq-uri <URI>`` and, where
kombu can, python-socketio's write-only ``KombuManager`` (what the REST API
runs). The node must receive exactly those three, and ``rabbitmqctl`` must
show the instance's queue in the virtual host kombu reads. Bad URIs make both
commands exit with one line naming the setting, without the password.

The database is a SQLite file of its own (the URI rules do not depend on the
backend). The ``amqps://`` forms go through a TLS-terminating proxy in front
of the local broker, with a certificate made for the test.
"""
from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import socketio

import mq_support
from support import (
    Recorder,
    ServerProcess,
    TokenFactory,
    World,
    expect_exact,
    join_msg,
    make_sqlite_db,
    server_binary,
)

pytestmark = pytest.mark.broker  # uses RabbitMQ: runs in the broker shard (conftest.py)
VHOST = "vantage6"
ODD_VHOST = "v6 uri/test"  # percent-encoded in the URI as v6%20uri%2Ftest
ODD_USER, ODD_PASSWORD = "v6 user@uri", "p@ss:w/rd%"


def ctl(*args: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=check)


@pytest.fixture(scope="module")
def broker_setup():
    """The ``vantage6`` virtual host, an odd one, and a user whose name and
    password need percent-encoding. Created here, removed afterwards (unless
    they existed before)."""
    reason = mq_support.broker_available()
    if reason:
        pytest.fail(f"RabbitMQ unavailable: {reason}")
    try:
        existing = set(ctl("list_vhosts", "name").stdout.split("\n"))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"rabbitmqctl is needed for this test: {exc}")
    made = [v for v in (VHOST, ODD_VHOST) if v not in existing]
    for v in made:
        ctl("add_vhost", v)
    ctl("add_user", ODD_USER, ODD_PASSWORD, check=False)
    ctl("change_password", ODD_USER, ODD_PASSWORD)
    for v in ("/", VHOST, ODD_VHOST):
        ctl("set_permissions", "-p", v, "guest", ".*", ".*", ".*")
        ctl("set_permissions", "-p", v, ODD_USER, ".*", ".*", ".*")
    with mq_support.broker_lock():
        yield
    ctl("delete_user", ODD_USER, check=False)
    for v in made:
        ctl("delete_vhost", v, check=False)


class TlsProxy:
    """TLS in front of 127.0.0.1:5672, with a certificate for ``localhost``
    signed by a CA made here (``ca`` is its PEM file)."""

    def __init__(self, workdir: Path):
        self.ca = workdir / "ca.pem"
        key, cert, ca_key = workdir / "key.pem", workdir / "cert.pem", workdir / "ca-key.pem"
        run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=v6-test-ca",
            "-keyout", str(ca_key), "-out", str(self.ca))
        ext = workdir / "ext.cnf"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        csr = workdir / "req.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key),
            "-out", str(csr))
        run("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            client = self.context.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", 5672))
        except OSError:
            raw.close()
            return

        def pump(src, dst):
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self):
        self.stopped = True
        self.listener.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    proxy = TlsProxy(tmp_path_factory.mktemp("tls"))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A database, one world and a token factory for the whole module."""
    db = make_sqlite_db(tmp_path_factory.mktemp("uri-db"))
    secret = "uri-secret-" + uuid.uuid4().hex
    world = World(db)
    yield db, world, TokenFactory(db, secret), secret
    db.close()


ENC_USER = "v6%20user%40uri:p%40ss%3Aw%2Frd%25"
# (id, URI with {tls} for the TLS proxy's port and {ca} for its CA file, the vhost kombu reads,
# whether kombu can publish with it)
FORMS = [
    ("no-port-no-path", "amqp://guest:guest@127.0.0.1", "/", True),
    ("port-no-path", "amqp://guest:guest@127.0.0.1:5672", "/", True),
    ("trailing-slash", "amqp://guest:guest@127.0.0.1:5672/", "/", True),
    ("double-slash", "amqp://guest:guest@127.0.0.1:5672//", "/", True),
    ("percent-2f", "amqp://guest:guest@127.0.0.1:5672/%2f", "/", True),
    ("named-vhost", "amqp://guest:guest@127.0.0.1:5672/vantage6", VHOST, True),
    ("percent-encoded", f"amqp://{ENC_USER}@127.0.0.1:5672/v6%20uri%2Ftest", ODD_VHOST, True),
    ("heartbeat", "amqp://guest:guest@127.0.0.1:5672/?heartbeat=10", "/", True),
    ("pyamqp", "pyamqp://guest:guest@127.0.0.1:5672/vantage6", VHOST, True),
    ("amqps", "amqps://guest:guest@127.0.0.1:{tls}/?ssl_ca_certs={ca}", "/", False),
    ("ssl-option", "amqp://guest:guest@127.0.0.1:{tls}/vantage6?ssl=true&ssl_ca_certs={ca}"
                   "&heartbeat=5", VHOST, False),
]


def queues_in(vhost: str) -> set[str]:
    out = ctl("list_queues", "-p", vhost, "name").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def connection_of(queue: str) -> dict:
    """The broker's view of the connection that consumes ``queue`` (named after it)."""
    listed = json.loads(ctl("list_connections", "--formatter", "json", "name", "vhost", "timeout",
                            "client_properties").stdout)
    for conn in listed:
        props = {p[0]: p[2] for p in conn["client_properties"]}
        if queue in str(props.get("connection_name", "")):
            return conn
    raise AssertionError(f"no connection named after {queue}: {listed}")


def emit_cli(*source: str, room: str, payload: dict) -> subprocess.CompletedProcess:
    cmd = [str(server_binary()), "emit", *source, "--room", room, "--event", "new_task",
           "--data", json.dumps(payload)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("form_id,template,vhost,kombu_can", FORMS, ids=[f[0] for f in FORMS])
def test_serve_and_emit_reach_the_vhost_kombu_reads(form_id, template, vhost, kombu_can,
                                                    broker_setup, tls, setting, tmp_path):
    db, world, tokens, secret = setting
    uri = template.format(tls=tls.port, ca=tls.ca)
    server = ServerProcess(tmp_path, db, secret, name=f"uri-{form_id}",
                           extra={"rabbitmq": {"uri": uri}})
    before = queues_in(vhost)
    server.start()
    node = Recorder(server.url, tokens.access(world.node_a1), label=f"node@{form_id}")
    try:
        queue = mq_support.serve_queue(server)
        assert queue, f"no queue in the log:\n{server.log_tail()}"
        assert queue in queues_in(vhost) - before, (
            f"{uri}: queue {queue} is not in virtual host {vhost!r}")
        conn = connection_of(queue)
        heartbeat = int(template.split("heartbeat=")[1].split("&")[0]) if "heartbeat=" in template \
            else 60  # the broker's proposal
        assert (conn["vhost"], conn["timeout"]) == (vhost, heartbeat), conn
        node.connect()
        room = f"collaboration_{world.c1.id}"
        expect_exact({node: [("sync", None)] + [join_msg("Node", world.node_a1.name, r)
                                                for r in World.node_public_rooms(world.node_a1)]})

        expected = []
        for source in (["--config", str(server.config_path)], ["--rabbitmq-uri", uri]):
            payload = {"id": len(expected) + 1, "parent_id": None, "via": source[0]}
            res = emit_cli(*source, room=room, payload=payload)
            assert res.returncode == 0, f"emit {source}: {res.returncode}\n{res.stderr}"
            expected.append(("new_task", payload))
        if kombu_can:
            payload = {"id": 3, "parent_id": None, "via": "kombu"}
            mgr = socketio.KombuManager(uri, channel="flask-socketio", write_only=True)
            mgr.emit("new_task", payload, namespace="/tasks", room=room)
            expected.append(("new_task", payload))
        expect_exact({node: expected})
    finally:
        node.disconnect()
        mq_support.stop_serve(server)
    assert queue not in queues_in(vhost), "graceful stop deletes the queue"


def test_a_vantage6_file_whose_uri_ends_in_port_slash(broker_setup, setting, tmp_path):
    """The configuration as vantage6's own wizard writes it, literally."""
    db, world, tokens, secret = setting
    path = tmp_path / "vantage6-server.yaml"
    path.write_text(
        "description: v6 server\n"
        "ip: 0.0.0.0\n"
        "port: 5000\n"
        "api_path: /api\n"
        f"uri: {db.uri}\n"
        "allow_drop_all: false\n"
        f"jwt_secret_key: {secret}\n"
        "logging:\n  level: DEBUG\n  file: v6.log\n  use_console: true\n"
        "rabbitmq:\n  uri: amqp://guest:guest@127.0.0.1:5672/\n  start_with_server: false\n"
        "v6_socketio:\n  ip: 127.0.0.1\n"
    )
    server = ServerProcess(tmp_path, db, secret, name="uri-literal")
    server.config_path = path
    server.start()
    node = Recorder(server.url, tokens.access(world.node_b1), label="node_b1")
    try:
        assert mq_support.serve_queue(server) in queues_in("/")
        node.connect()
        node.wait_event("sync")
        res = emit_cli("--config", str(path), room=f"collaboration_{world.c1.id}",
                       payload={"id": 99, "parent_id": None})
        assert res.returncode == 0, res.stderr
        node.wait_for(lambda evs: ("new_task", {"id": 99, "parent_id": None}) in evs)
    finally:
        node.disconnect()
        mq_support.stop_serve(server)


BAD = [
    ("amqp://guest:hunter2@127.0.0.1:port/", "invalid host or port"),
    ("redis://guest:hunter2@127.0.0.1:6379/0", "scheme `redis`"),
    ("amqp://guest:hunter2@127.0.0.1/?heartbeat=often", "`heartbeat`"),
    ("amqp://guest:hunter2@127.0.0.1/?frame_max=4096", "unsupported query option `frame_max`"),
    # kombu's fail-over list is read (test_broker_failover.py); an empty entry is refused
    ("amqp://guest:hunter2@h1;;amqp://guest:hunter2@h2", "empty broker URI"),
    ("amqp://guest:hunter2@127.0.0.1//;amqp://guest:hunter2@127.0.0.1:port/", "invalid host or port"),
    ("rabbitmq:5672", "is not a URI"),
]


@pytest.mark.parametrize("uri,needle", BAD, ids=["bad-port", "redis-scheme", "bad-heartbeat",
                                                  "unknown-option", "failover-empty-entry",
                                                  "failover-bad-entry", "no-scheme"])
def test_bad_uris_are_one_line_errors_without_the_password(uri, needle, setting, tmp_path):
    db, _world, _tokens, secret = setting
    server = ServerProcess(tmp_path, db, secret, name="uri-bad", extra={"rabbitmq": {"uri": uri}})
    runs = {
        "serve": subprocess.run([str(server_binary()), "serve", "--config", str(server.config_path)],
                                capture_output=True, text=True, timeout=30),
        "emit --config": emit_cli("--config", str(server.config_path), room="r", payload={}),
        "emit --rabbitmq-uri": emit_cli("--rabbitmq-uri", uri, room="r", payload={}),
    }
    for what, res in runs.items():
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, f"{what}: exit {res.returncode}\n{res.stderr}"
        assert len(lines) == 1, f"{what}: not one line:\n{res.stderr}"
        setting_name = "--rabbitmq-uri" if what.endswith("uri") else "`rabbitmq.uri`"
        assert lines[0].startswith("error: invalid ") and setting_name in lines[0], lines[0]
        assert needle in lines[0], lines[0]
        assert "hunter2" not in res.stderr, lines[0]
