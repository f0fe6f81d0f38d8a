"""RabbitMQ machinery of the multi-instance and mixed-fleet tests.

* ``PyServer``: clients/mq_server.py, a python-socketio server on a
  ``KombuManager`` (what Flask-SocketIO builds for ``message_queue='amqp://…'``),
  in clients/.venv (python-socketio 5.15.0) or clients/.venv-sio518 (5.18.1);
* ``RustNode``: the adapter crate's generic socketioxide server (the
  ``cluster_processes`` test binary re-run as ``cluster_node``: namespace
  ``/cluster``, one ``op`` event that runs an adapter operation and acks its
  result, see adapter/tests/process_cluster/node.rs);
* ``AckRecorder``: a recording client that acknowledges every event;
* broker helpers: the shared lock the adapter's tests take, queue and exchange
  deletion (what the 5.x suite needs too is in clients/compat_support.py).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import kombu

import support
from compat_support import (  # noqa: F401  (re-exported for the tests)
    AMQP_URL,
    broker_available,
    broker_fixture,
    delete_queues,
    serve_queue,
    stop_serve,
)
from jsonbytes import decode, encode
from lineproc import LineProcess
from sio_testkit import broker_lock  # noqa: F401  (re-exported: support.broker_lock)
from support import CLIENTS, DEFAULT_TIMEOUT, REPO, Recorder, free_port

VENV_515 = CLIENTS / ".venv" / "bin" / "python"
VENV_518 = CLIENTS / ".venv-sio518" / "bin" / "python"
MQ_SERVER = CLIENTS / "mq_server.py"
CLUSTER_NS = "/cluster"


# ---------------------------------------------------------------------------
# broker (queue deletion and the like: compat_support, re-exported)
# ---------------------------------------------------------------------------
def delete_exchange(name: str):
    with contextlib.suppress(Exception), kombu.Connection(AMQP_URL, connect_timeout=3) as conn:
        conn.channel().exchange_delete(name)


def queue_exists(name: str) -> bool:
    with kombu.Connection(AMQP_URL, connect_timeout=3) as conn:
        try:
            conn.channel().queue_declare(name, passive=True)
            return True
        except Exception as exc:  # 404 NOT_FOUND closes the channel
            if "NOT_FOUND" in str(exc) or getattr(exc, "code", None) == 404:
                return False
            raise


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# JSON with bytes, as mq_server.py writes and reads it: b(raw) for an argument
b = encode


# ---------------------------------------------------------------------------
# the python-socketio server
# ---------------------------------------------------------------------------
class PyServer:
    """clients/mq_server.py in a subprocess."""

    def __init__(self, python: Path, *, channel: str = "flask-socketio", namespace: str = "/tasks",
                 label: str = "py-server"):
        self.python = Path(python)
        self.channel = channel
        self.namespace = namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.label = label
        self._ids = iter(range(1, 1 << 30))
        self.proc: LineProcess | None = None
        self.queue = None
        self.host_id = None
        self.version = None

    def start(self, timeout: float = 25):
        if not self.python.exists():
            raise RuntimeError(f"{self.python} does not exist (see clients/README.md)")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = LineProcess(
            [str(self.python), str(MQ_SERVER), "--amqp", AMQP_URL, "--channel", self.channel,
             "--namespace", self.namespace, "--port", str(self.port)],
            env=env, label=self.label,
        )
        ready = self.proc.wait_line(lambda l: "ready" in l or "fatal" in l, timeout, "ready")
        if "fatal" in ready:
            raise RuntimeError(f"{self.label}: {ready['fatal']}")
        self.queue, self.host_id, self.version = ready["queue"], ready["host_id"], ready["version"]
        return self

    def cmd(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **kw) -> int:
        cid = next(self._ids)
        self.proc.send({"id": cid, "cmd": cmd, **kw})
        res = self.proc.wait_line(lambda l: l.get("done") == cid or l.get("error") == cid,
                                  timeout, f"command {cid} ({cmd})")
        if "error" in res:
            raise AssertionError(f"{self.label}: {cmd} {kw} failed: {res['message']}")
        return cid

    def emit(self, event, *args, to=None, skip_sid=None, callback=False) -> int:
        return self.cmd("emit", event=event, args=list(args), to=to, skip_sid=skip_sid,
                        callback=callback)

    def callbacks(self, cid) -> list[list]:
        return [decode(l["args"]) for l in list(self.proc.lines) if l.get("callback") == cid]

    def wait_callback(self, cid, timeout: float = DEFAULT_TIMEOUT) -> list:
        return self.proc.wait_line(lambda l: l.get("callback") == cid, timeout,
                                   f"the ack of emit {cid}") and self.callbacks(cid)[0]

    def connected_sids(self) -> list[str]:
        return [l["connected"] for l in list(self.proc.lines) if "connected" in l]

    def stop(self):
        if self.proc is not None:
            self.proc.stop(timeout=5)
        delete_queues(self.queue)


# ---------------------------------------------------------------------------
# the generic socketioxide server of the adapter crate
# ---------------------------------------------------------------------------
CLUSTER_NODE_TARGET = "cluster_processes"


def cluster_node_binary() -> Path:
    """The adapter crate's ``cluster_processes`` test binary, exactly:
    ``V6_TEST_CLUSTER_NODE_BIN`` when set, else the executable cargo reports
    for that test target (built first if it is stale)."""
    found = _cluster_node_binary()
    if isinstance(found, str):
        raise RuntimeError(found)
    return found


@functools.cache
def _cluster_node_binary() -> Path | str:
    """The binary, or why there is none; asked once per session, a failure too.
    ``--workspace`` builds the target with the features of ``cargo build
    --workspace --all-targets``: it is that build's binary, not a second one."""
    env = os.environ.get("V6_TEST_CLUSTER_NODE_BIN")
    if env:
        return Path(env)
    cmd = ["cargo", "test", "--workspace", "--locked", "--test", CLUSTER_NODE_TARGET, "--no-run",
           "--message-format=json"]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    except OSError as exc:
        return (f"cannot run cargo ({exc}): set V6_TEST_CLUSTER_NODE_BIN to the "
                f"{CLUSTER_NODE_TARGET} test binary of the adapter crate")
    executables = []
    for line in out.stdout.splitlines():
        msg = json.loads(line) if line.startswith("{") else {}
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and msg["target"]["name"] == CLUSTER_NODE_TARGET and "test" in msg["target"]["kind"]):
            executables.append(Path(msg["executable"]))
    if out.returncode != 0 or len(executables) != 1:
        return (f"`{' '.join(cmd)}` (exit {out.returncode}) named {len(executables)} "
                f"executables, not one:\n{out.stderr[-3000:]}")
    return executables[0]


class RustNode:
    """A socketioxide server process on the RabbitMQ adapter (namespace /cluster)."""

    READY = "CLUSTER_NODE_READY "

    def __init__(self, exchange: str, label: str = "rust-node", env: dict | None = None):
        """``env``: extra environment of the node, e.g. ``SIO_AMQP_NODE_PY_FORMAT``
        (``legacy``/``args``) or ``SIO_AMQP_NODE_WAIT_PY_ACKS=1``."""
        self.exchange = exchange
        self.label = label
        self.env = dict(env or {})
        self.port = None
        self.queue = None
        self.host_id = None
        self.proc = None
        self.stderr: list[str] = []

    def start(self, timeout: float = 15):
        binary = cluster_node_binary()
        env = dict(os.environ)
        env["SIO_AMQP_NODE_EXCHANGE"] = self.exchange
        env["SIO_AMQP_NODE_URI"] = AMQP_URL
        env.update(self.env)
        self.proc = subprocess.Popen(
            [str(binary), "cluster_node", "--exact", "--ignored", "--nocapture", "--test-threads=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        found = threading.Event()

        def read_out():
            for line in self.proc.stdout:
                at = line.find(self.READY)
                if at >= 0 and not found.is_set():
                    info = json.loads(line[at + len(self.READY):])
                    self.port, self.queue, self.host_id = info["port"], info["queue"], info["host_id"]
                    found.set()

        def read_err():
            for line in self.proc.stderr:
                self.stderr.append(line.rstrip())

        threading.Thread(target=read_out, daemon=True).start()
        threading.Thread(target=read_err, daemon=True).start()
        if not found.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.label} did not start:\n" + "\n".join(self.stderr[-20:]))
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()  # EOF: graceful close, the node deletes its queue
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        delete_queues(self.queue)


# ---------------------------------------------------------------------------
# clients
# ---------------------------------------------------------------------------
class AckRecorder(Recorder):
    """A Recorder on any namespace that records every event as
    ``(event, [arg, ...])`` (so one list argument and several arguments differ)
    and acknowledges it with the arguments ``"ack", <label>, <event>``."""

    def __init__(self, server_url: str, token: str | None = None, *, namespace: str = support.NS,
                 label: str = "", transports=None):
        self.namespace = namespace
        super().__init__(server_url, token, label=label, transports=transports)
        if namespace != support.NS:
            import socketio

            self.sio = socketio.Client(request_timeout=60, reconnection=False)
            self.sio.on("*", self._on_any, namespace=namespace)
            self.sio.on("connect", self._on_connect, namespace=namespace)
            self.sio.on("disconnect", self._on_disconnect, namespace=namespace)

    def _on_any(self, event, *args):
        with self.cond:
            self.events.append((event, list(args)))
            self.cond.notify_all()
        return "ack", self.label, event

    def connect(self, wait_ns=True):
        kw = {"transports": self.transports} if self.transports else {}
        self.sio.connect(self.url, headers=self.headers, namespaces=[self.namespace], wait=True,
                         wait_timeout=DEFAULT_TIMEOUT, **kw)
        if wait_ns:
            assert self.ns_connected.wait(DEFAULT_TIMEOUT), f"{self.label}: no CONNECT ack"
        return self

    @property
    def connected(self) -> bool:
        return self.sio.connected and self.namespace in self.sio.namespaces

    @property
    def sid(self) -> str:
        return self.sio.get_sid(self.namespace)

    def op(self, timeout: float = 10, **req):
        """An ``op`` call on a RustNode; returns its ``ok`` value or fails."""
        res = self.sio.call("op", req, namespace=self.namespace, timeout=timeout)
        assert isinstance(res, dict) and "ok" in res, f"{self.label}: op {req} failed: {res}"
        return res["ok"]
