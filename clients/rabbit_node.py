"""A private RabbitMQ node for the tests that kill or stop a broker.

The machine's shared RabbitMQ (127.0.0.1:5672) serves every other test and is never stopped;
a ``RabbitNode`` is a broker of the test's own: its own node name, AMQP and distribution ports,
data and log directories in a temporary directory, no plugins, and the configuration file
written here (the system's ``/etc/rabbitmq`` files are not read). ``kill()`` SIGKILLs its
``beam.smp`` (a crash), ``stop()`` ends it gracefully, and ``start()`` again reuses the same
data directory, so durable queues and their persistent messages survive as on a real restart.

    node = RabbitNode("outage").start()
    node.url            # amqp://guest:guest@127.0.0.1:<port>/%2f
    node.kill()         # SIGKILL the broker
    node.start()        # same data, same port; node.accepting_at: when it took connections
    node.stop(); node.cleanup()
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sio_testkit import free_port

# The script itself, not /usr/sbin's wrapper (which may switch to the rabbitmq user).
SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


def server_script() -> str | None:
    env = os.environ.get("V6_TEST_RABBITMQ_SERVER")
    if env:
        return env
    for p in SERVER_SCRIPTS:
        if Path(p).exists():
            return p
    return shutil.which("rabbitmq-server")


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def port_open(port: int, timeout: float = 0.2) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


class RabbitNode:
    def __init__(self, label: str = "node"):
        self.label = label
        self.name = f"v6t-{label}-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"v6-rabbit-{label}-"))
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # the machine may be busy: no memory or disk alarm for a test broker
            "vm_memory_high_watermark.relative = 0.9\n"
            "disk_free_limit.absolute = 1MB\n"
        )
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"
        self.proc: subprocess.Popen | None = None
        self.accepting_at: float | None = None
        self._out = None

    def __repr__(self):
        return f"<RabbitNode {self.label} :{self.port}>"

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "HOME": str(self.dir),  # the Erlang cookie goes here
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
        })
        return env

    def start(self, timeout: float = 60) -> "RabbitNode":
        """Starts the node (again, on the same data) and waits until it accepts connections."""
        script = server_script()
        if script is None:
            raise RuntimeError("rabbitmq-server not found (set V6_TEST_RABBITMQ_SERVER)")
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self} is running")
        self._out = open(self.dir / "server.out", "ab")
        self.proc = subprocess.Popen([script], env=self.env(), cwd=self.dir, stdout=self._out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if port_open(self.port):
                self.accepting_at = time.monotonic()
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self} did not accept connections in {timeout}s:\n{self.log_tail()}")

    def beam_pid(self) -> int | None:
        """The Erlang VM of this node (a child of the start script)."""
        if self.proc is None:
            return None
        todo, seen = [self.proc.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            if _comm(pid).startswith("beam"):
                return pid
            todo.extend(_children(pid))
        return None

    def kill(self):
        """SIGKILL: the broker dies at once, as in a crash (its clients see a reset)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        beam = self.beam_pid()
        if beam is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 30):
        """A graceful stop (SIGTERM to the VM), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        beam = self.beam_pid()
        if beam is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # What the node started in its session (erl_child_setup, inet_gethost) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log_tail(self, n: int = 30) -> str:
        lines = []
        for f in [self.dir / "server.out", *sorted((self.dir / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                lines += f.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines[-2 * n:])

    def cleanup(self):
        self.kill()
        if self._out:
            self._out.close()
        shutil.rmtree(self.dir, ignore_errors=True)
