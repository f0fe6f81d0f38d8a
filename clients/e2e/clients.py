"""The clients of the end-to-end scenarios.

`E2ENode` runs vantage6-node 4.15.2's real socket code: the
`vantage6.node.socket.NodeTaskNamespace` class, talking to the server through
the real `NodeClient` (REST authentication, token refresh, open runs). Only
the parts of vantage6's `Node` that need Docker are replaced by a stub
worker (`StubNodeWorker`), which keeps `Node`'s method names and behaviour:
`authenticate`, `connect_to_socket`, `sync_task_queue_with_server`,
`get_task_and_add_to_queue`, `share_node_details`, `kill_containers`.

`UiListener` is the vantage6 UI's way of listening: socket.io-client 4.x on
`/tasks` with `extraHeaders: {Authorization: "Bearer …"}` (clients/js).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import socketio
from vantage6.common.client.node_client import NodeClient
from vantage6.common.encryption import DummyCryptor
from vantage6.node.socket import NodeTaskNamespace

from e2e_nodes import EventLog, connect_socket, kill_is_for, own_open_runs, ping
from e2e_nodes import recording_namespace, status_change
from harness import DEFAULT_TIMEOUT, ROOT, wait_until
from lineproc import LineProcess
from sio_testkit import disconnect_after_sends
from rest import NodeAccount

#: Events every client sees about its own connection; scenario assertions
#: compare everything else.
LOCAL_EVENTS = {"connect", "disconnect", "connect_error", "upgrade", "__disconnect_final"}


@dataclass
class KilledRun:
    """What vantage6's DockerManager.kill_tasks returns for each container."""

    run_id: int
    task_id: int
    parent_id: int | None


class StubNodeWorker:
    """Stands in for `vantage6.node.Node` next to the real namespace class."""

    def __init__(self, account: NodeAccount, server_url: str, *, transports=None,
                 ping_interval: float = 10.0, label: str | None = None):
        self.account = account
        self.label = label or account.name
        self.config = {"api_key": account.api_key}
        parts = urlsplit(server_url)
        # vantage6 nodes are configured with server_url, port and api_path.
        self.client = NodeClient(f"{parts.scheme}://{parts.hostname}", parts.port, "/api")
        self.client.cryptor = DummyCryptor()  # unencrypted collaborations
        self.transports = transports
        self.ping_interval = ping_interval
        self.events = EventLog(self.label, LOCAL_EVENTS)
        self.queue: list[dict] = []  # open runs fetched from the server, like Node.queue
        self.killed_runs: list[KilledRun] = []
        self.sockets: list[socketio.Client] = []
        self.socketIO: socketio.Client | None = None
        self.node_details_shared = 0  # share_node_details calls that emitted
        self._shared_lock = threading.Lock()
        self._stopped = threading.Event()
        self.namespace_class = recording_namespace(NodeTaskNamespace, self, self.events)

    # --- what vantage6's Node does -------------------------------------
    def authenticate(self) -> None:
        self.client.authenticate(self.config["api_key"])

    def connect_to_socket(self) -> None:
        kwargs = {"transports": self.transports} if self.transports else {}
        connect_socket(self, url=f"{self.client.host}:{self.client.port}",
                       headers=self.client.headers, **kwargs)
        if len(self.sockets) == 1:
            threading.Thread(target=self._ping_worker, daemon=True).start()

    def _ping_worker(self) -> None:
        while not self._stopped.wait(self.ping_interval):
            ping(self.socketIO, self.label)

    def sync_task_queue_with_server(self) -> None:
        self.queue.extend(self.client.run.list(state="open", include_task=True))

    def get_task_and_add_to_queue(self, task_id: int) -> None:
        self.queue.extend(self.client.run.list(include_task=True, state="open", task_id=task_id))

    def share_node_details(self) -> None:
        self.socketIO.emit("node_info_update", {
            "database_labels": ["default"],
            "database_types": {"db_type_default": "csv"},
            "allowed_algorithms": ["harbor2.vantage6.ai/demo/*"],
        }, namespace="/tasks")
        with self._shared_lock:
            self.node_details_shared += 1

    def wait_synced(self, count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Until `on_sync` has run to its end `count` times (its REST call and
        `node_info_update`): a test that disconnects earlier cuts that handler
        off, and its emit then fails on a closed namespace."""
        wait_until(lambda: self.node_details_shared >= count, timeout=timeout,
                   what=f"{self.label}: on_sync done {count} time(s)")

    def kill_containers(self, kill_info: dict) -> list[KilledRun]:
        """vantage6's checks; the 'running containers' are the runs this node
        queued and has not killed yet (`running`)."""
        if not kill_is_for(kill_info, self.client):
            return []
        wanted = kill_info.get("kill_list")
        killed = []
        for run in self.running:
            if wanted is not None and not any(k["run_id"] == run["id"] for k in wanted):
                continue
            parent = run["task"].get("parent")
            killed.append(KilledRun(run["id"], run["task"]["id"], parent["id"] if parent else None))
        self.killed_runs.extend(killed)
        return killed

    @property
    def running(self) -> list[dict]:
        """Queued runs of this node's organisation not killed yet, oldest first."""
        return own_open_runs(self.queue, {k.run_id for k in self.killed_runs},
                             self.client.whoami.organization_id)

    # --- test conveniences -----------------------------------------------
    def start(self) -> "StubNodeWorker":
        """Node start-up: REST authentication, then the socket."""
        self.authenticate()
        self.connect_to_socket()
        return self

    def queued_run(self, task_id: int, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """This node's run of task `task_id`, once its `new_task` handler (or
        a sync) has fetched it from the server."""
        return wait_until(
            lambda: next((r for r in self.queue if r["task"]["id"] == task_id), None),
            timeout, what=f"{self.label} queued its run of task {task_id}")

    @property
    def authorization(self) -> str:
        return self.client.headers["Authorization"]

    @property
    def connected(self) -> bool:
        return self.socketIO is not None and self.socketIO.connected

    def emit(self, event: str, data=None) -> None:
        if data is None:
            self.socketIO.emit(event, namespace="/tasks")
        else:
            self.socketIO.emit(event, data, namespace="/tasks")

    def status_change(self, run: dict, status: str) -> None:
        """What Node.__speaking_worker emits when a container changes state."""
        self.emit("algorithm_status_change", status_change(self.client, run, status))

    def disconnect(self) -> None:
        """A test's own disconnect (see `sio_testkit.disconnect_after_sends`: vantage6's
        own disconnects, `on_expired_token` and `on_invalid_token`, run in the real namespace
        class and are not changed)."""
        if self.socketIO is not None:
            disconnect_after_sends(self.socketIO, 10.0)

    def close(self) -> None:
        self._stopped.set()
        for sio in self.sockets:
            try:
                disconnect_after_sends(sio, 10.0)
            except Exception:  # already gone
                pass


class UiListener:
    """The vantage6 UI's socket: socket.io-client on /tasks with extraHeaders."""

    def __init__(self, server_url: str, token: str, label: str, transport: str = "both"):
        self.label = label
        self.token = token
        self.server_url = server_url
        self.transport = transport
        self._offset = 0  # events of earlier processes (restart keeps the history)
        self._history: list[tuple[str, object]] = []
        self.reader = self._spawn()

    def _spawn(self) -> LineProcess:
        script = ROOT / "clients" / "js" / "client.js"
        return LineProcess(["node", str(script), "--url", self.server_url, "--token", self.token,
                            "--transport", self.transport], cwd=Path(script).parent, label=self.label)

    @property
    def alive(self) -> bool:
        """Process running and its socket connected (no reconnection, as
        configured for the probe)."""
        evs = self._own_events(include_local=True)
        last = [e for e, _ in evs if e in ("connect", "disconnect", "connect_error")]
        return self.reader.proc.poll() is None and bool(last) and last[-1] == "connect"

    def restart(self):
        self._history = self._events()
        self.reader.stop()
        self.reader = self._spawn()
        self.wait_connected()

    @property
    def authorization(self) -> str:
        return f"Bearer {self.token}"

    def _own_events(self, include_local=False) -> list[tuple[str, object]]:
        with self.reader.cond:
            return [(o["event"], o.get("data")) for o in self.reader.lines
                    if "event" in o and (include_local or o["event"] not in LOCAL_EVENTS)]

    def _events(self) -> list[tuple[str, object]]:
        return self._history + self._own_events()

    def mark(self) -> int:
        return len(self._events())

    def since(self, mark: int) -> list[tuple[str, object]]:
        return self._events()[mark:]

    def wait_connected(self, timeout: float = DEFAULT_TIMEOUT):
        self.reader.wait_line(lambda o: o.get("event") == "connect", timeout, what="connect")

    def close(self):
        self.reader.stop()

