"""Generation-neutral machinery of the compatibility suites (clients/tests for vantage6 4.x,
clients/tests_v5 for 5.x): nothing here imports vantage6.

* ``Recorder``: an in-process python-socketio client that records every event of ``/tasks`` in
  arrival order; ``wait_for`` never sleeps longer than needed; ``expect_exact`` /
  ``expect_silence`` compare exact event lists;
* ``ServerProcess``: runs ``v6-socketio serve --config FILE``;
* small process, HTTP and Prometheus helpers.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import socketio

from lineproc import DEFAULT_TIMEOUT, wait_on, wait_until  # noqa: F401  (wait_until: for the tests)

REPO = Path(__file__).resolve().parents[1]
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

@contextlib.contextmanager
def broker_lock():
    """The lock the adapter's RabbitMQ tests hold shared (broker_restart holds
    it exclusive while it stops the broker)."""
    import fcntl
    import tempfile

    path = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "socketioxide-amqp-rabbitmq.lock"
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)



@dataclass
class Ent:
    id: int
    name: str
    org_id: int | None = None
    collab_id: int | None = None
    extra: dict = field(default_factory=dict)


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
    def __init__(self, workdir: Path, db, secret: str | None, *, sweep_interval: float = 2,
                 cors="*", uri: str | None = None, extra: dict | None = None, name="server",
                 socketio_extra: dict | None = None, env: dict | None = None):
        """``db``: anything with ``.uri``; ``secret``: the 4.x ``jwt_secret_key`` (None: not
        written); ``extra``: top-level config keys; ``socketio_extra``: keys of the
        ``v6_socketio`` section; ``env``: added to the server's environment."""
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
        if secret is not None:
            cfg["jwt_secret_key"] = secret
        cfg["v6_socketio"].update(socketio_extra or {})
        if extra:
            cfg.update(extra)
        self.env = dict(env or {})
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
        env.update(self.env)
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
