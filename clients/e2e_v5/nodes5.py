"""vantage6-node 5.0.3's real socket code with its Kubernetes parts stubbed.

`Node5` runs the real `vantage6.node.socket.NodeTaskNamespace` on a real
python-socketio 5.16.2 client, with the real `NodeClient` (Keycloak
client-credentials token from the realm stand-in, `node/me`, open runs,
run PATCHes) and the real `SessionFileManager` for session files (under a
temporary TASK_FILES_ROOT). Only what vantage6's `Node` does with Kubernetes
is replaced, keeping `Node`'s method names and checks
(docs/vantage6-5x-socket.md §7.4): `sync_task_queue_with_HQ`,
`get_task_and_add_to_queue`, `share_node_details`, `kill_containers` (the
"running containers" are the runs it queued), `connect_to_socket`,
`authenticate`. Each connect starts vantage6's ping loop (first ping after
5 s, then every 60 s, one more loop per reconnect as in vantage6), which keeps
the node `online` through HQ's and v6-socketio's offline sweeps (65 s).

One difference from a deployed node, on purpose: REST goes to HQ and the
socket to `socket_url` (a v6-socketio instance, or HQ itself), where a
deployment routes `/socket.io/` of the one HQ address through its ingress.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace

import pyarrow as pa
import socketio
from vantage6.common.client.node_client import NodeClient
from vantage6.common.globals import PING_INTERVAL_SECONDS
from vantage6.node.k8s import session_manager
from vantage6.node.k8s.session_manager import SessionFileManager
from vantage6.node.socket import NodeTaskNamespace

from e2e_nodes import EventLog, connect_socket, kill_is_for, own_open_runs, ping
from e2e_nodes import recording_namespace, status_change
from harness5 import DEFAULT_TIMEOUT, wait_until
from rest5 import NodeAccount

#: Events every client sees about its own connection.
LOCAL_EVENTS = {"connect", "disconnect", "connect_error", "__disconnect_final"}
#: Database labels the stub node reports, as a node with one CSV database.
DATABASES = {"default": "csv"}


@dataclass
class KilledRun:
    """What ContainerManager.kill_algorithm_runs returns per killed run."""

    run_id: int
    task_id: int
    parent_id: int | None
    logs: str


def use_task_files_root(path) -> None:
    """vantage6.node.globals.TASK_FILES_ROOT is /app/tasks, bound by name in
    the session manager; the suite's nodes keep their files under `path`."""
    session_manager.TASK_FILES_ROOT = str(path)


class Node5:
    """Stands in for `vantage6.node.Node` next to the real namespace class."""

    def __init__(self, account: NodeAccount, hq_api_url: str, kc_url: str, socket_url: str,
                 label: str):
        self.account = account
        self.label = label
        self.socket_url = socket_url
        self.client = NodeClient(node_account_name=account.name, api_key=account.api_key,
                                 hq_url=hq_api_url, auth_url=kc_url)
        # vantage6 keeps each node's session files apart with dev.task_dir_extension
        self.ctx = SimpleNamespace(config={"dev": {"task_dir_extension": label}})
        self.events = EventLog(label, LOCAL_EVENTS)
        self.calls: list[str] = []  # Node methods the namespace called, in order
        self.queue: list[dict] = []  # open runs fetched from HQ, like Node.runs_queue
        self.killed_runs: list[KilledRun] = []
        self.sockets: list[socketio.Client] = []
        self.socketIO: socketio.Client | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        real_obtain = self.client.obtain_new_token

        def obtain_new_token():
            self._called("obtain_new_token")
            real_obtain()

        self.client.obtain_new_token = obtain_new_token
        self.namespace_class = recording_namespace(NodeTaskNamespace, self, self.events)

    def _called(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)

    def count(self, name: str) -> int:
        with self._lock:
            return self.calls.count(name)

    # --- what vantage6's Node does -------------------------------------
    def authenticate(self) -> None:
        """Node.authenticate: Keycloak token, node/me, organisation; then
        the unencrypted collaboration's cryptor (Node.setup_encryption)."""
        self._called("authenticate")
        self.client.authenticate()
        self.client.setup_encryption(None)

    def connect_to_socket(self) -> None:
        self._called("connect_to_socket")
        self._stopped = threading.Event()  # a reconnect after close() pings again
        connect_socket(self, url=self.socket_url, headers=self.client.headers)
        threading.Thread(target=self._ping_worker, daemon=True).start()

    def _ping_worker(self) -> None:
        """Node.__socket_ping_worker: on whatever socket is current."""
        if self._stopped.wait(5):
            return
        while True:
            ping(self.socketIO, self.label)
            if self._stopped.wait(PING_INTERVAL_SECONDS):
                return

    def sync_task_queue_with_HQ(self) -> None:  # noqa: N802 (vantage6's name)
        assert self.client.cryptor, "Encryption has not been setup"
        runs = self.client.run.list(state="open", include_task=True)
        with self._lock:
            self.queue.extend(runs)
        self._called("sync_task_queue_with_HQ")

    def get_task_and_add_to_queue(self, task_id: int) -> None:
        runs = self.client.run.list(state="open", include_task=True, task_id=task_id)
        with self._lock:
            self.queue.extend(runs)
        self._called(f"get_task_and_add_to_queue({task_id})")

    def share_node_details(self) -> None:
        """What Node.share_node_details emits for a node with the default
        policies and one database."""
        self.socketIO.emit("node_info_update", {
            "allowed_algorithms": "all",
            "database_labels": list(DATABASES),
            "database_types": {f"db_type_{k}": v for k, v in DATABASES.items()},
        }, namespace="/tasks")
        self._called("share_node_details")

    def kill_containers(self, kill_info: dict) -> list[KilledRun]:
        """Node.kill_containers: its checks, then the 'containers' (queued
        runs) named in the kill list, then their logs PATCHed to HQ."""
        self._called("kill_containers")
        if not kill_is_for(kill_info, self.client):
            return []
        wanted = kill_info.get("kill_list")
        killed = []
        for run in self.running:
            if wanted and not any(k["run_id"] == run["id"] for k in wanted):
                continue
            parent = run["task"].get("parent")
            killed.append(KilledRun(run["id"], run["task"]["id"],
                                    parent["id"] if parent else None, f"killed {run['id']}"))
        with self._lock:
            self.killed_runs.extend(killed)
        for k in killed:
            if wanted:
                # a task kill: a Kubernetes kill takes longer than HQ's own
                # bookkeeping, which marks the runs killed right after publishing
                # kill_containers (a log-only PATCH of a killed run sends no
                # event). A node kill leaves the runs' status alone at HQ.
                wait_until(lambda k=k: self.client.request(f"run/{k.run_id}")["status"]
                           == "killed by user", what=f"{self.label}: run {k.run_id} killed at HQ")
            self.client.run.patch(id_=k.run_id, data={"log": k.logs})
        return killed

    @property
    def running(self) -> list[dict]:
        """Queued runs of this node's organisation not killed yet."""
        with self._lock:
            gone = {k.run_id for k in self.killed_runs}
            queue = list(self.queue)
        return own_open_runs(queue, gone, self.client.whoami.organization_id)

    # --- test conveniences -----------------------------------------------
    def start(self) -> "Node5":
        """Node start-up: authentication, then the socket; returns once the
        `sync` handler has run (its REST call and node_info_update)."""
        self.authenticate()
        mark = self.count("share_node_details")
        self.connect_to_socket()
        self.wait_calls("share_node_details", mark + 1)
        return self

    def wait_calls(self, name: str, count: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        wait_until(lambda: self.count(name) >= count, timeout=timeout,
                   what=f"{self.label}: {name} called {count} time(s); calls {self.calls}")

    def queued_run(self, task_id: int, timeout: float = DEFAULT_TIMEOUT) -> dict:
        return wait_until(
            lambda: next((r for r in self.running if r["task"]["id"] == task_id), None),
            timeout, what=f"{self.label} queued its run of task {task_id}")

    def write_dataframe(self, session_id: int, df_name: str) -> str:
        """The parquet file a data-extraction run leaves on the node."""
        files = SessionFileManager(session_id, task_dir_extension=self.label)
        files.write_dataframe_file(pa.table({"age": [41, 52]}), df_name)
        return f"{files.local_session_folder}/{df_name}.parquet"

    def status_change(self, run: dict, status: str) -> None:
        """What Node.__emit_algorithm_status_change sends."""
        self.socketIO.emit("algorithm_status_change", data=status_change(self.client, run, status),
                           namespace="/tasks")

    def log_line(self, run: dict, line: str) -> None:
        """What the container manager sends per algorithm log line."""
        self.socketIO.emit("algorithm_log", {
            "collaboration_id": self.client.collaboration_id, "run_id": run["id"],
            "task_id": run["task"]["id"], "log": line}, namespace="/tasks")

    @property
    def connected(self) -> bool:
        return self.socketIO is not None and self.socketIO.connected

    def close(self) -> None:
        """Disconnects; a later connect_to_socket pings again."""
        self._stopped.set()
        for sio in self.sockets:
            try:
                sio.disconnect()
            except Exception:  # already gone
                pass
