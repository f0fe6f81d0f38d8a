"""What the stub nodes of both end-to-end suites share (``e2e/clients.py``
for vantage6-node 4.x, ``e2e_v5/nodes5.py`` for 5.x): the log of the events
a node's real namespace class received, that class's per-node subclass, and
the parts of vantage6's `Node` that are the same in both generations. Each
suite passes in its own vantage6 classes and clients.
"""
from __future__ import annotations

import logging
import threading
import time

import socketio

from e2e_harness import DEFAULT_TIMEOUT
from lineproc import wait_on

log = logging.getLogger("e2e.nodes")


class EventLog:
    """Received events of one node, in arrival order, thread-safe. The
    events in `local_events` (a client's own connection's) are left out of
    `snapshot` and `since` unless asked for."""

    def __init__(self, label: str, local_events: set[str]):
        self.label = label
        self.local_events = local_events
        self._events: list[tuple[str, object]] = []
        self.cond = threading.Condition()

    def append(self, event: str, data):
        with self.cond:
            self._events.append((event, data))
            self.cond.notify_all()

    def snapshot(self, include_local: bool = False) -> list[tuple[str, object]]:
        return self.since(0, include_local)

    def mark(self) -> int:
        with self.cond:
            return len(self._events)

    def since(self, mark: int, include_local: bool = False) -> list[tuple[str, object]]:
        with self.cond:
            return [e for e in self._events[mark:] if include_local or e[0] not in self.local_events]

    def wait_for(self, predicate, timeout: float = DEFAULT_TIMEOUT, what: str = ""):
        return wait_on(
            self.cond, lambda: predicate(list(self._events)), timeout,
            lambda: f"{self.label}: timed out after {timeout}s waiting for {what}; "
            f"received {self._events}")

    def wait_event(self, event: str, mark: int = 0, timeout: float = DEFAULT_TIMEOUT):
        """The data of the first `event` after `mark` (True when it has none)."""
        return self.wait_for(lambda evs: next((d for e, d in evs[mark:] if e == event), None)
                             or any(e == event for e, _ in evs[mark:]), timeout, event)


def recording_namespace(namespace_class, worker, events: EventLog):
    """vantage6 keeps the worker in a class attribute of its
    `NodeTaskNamespace` (`namespace_class`); a subclass per node keeps
    several nodes in one process apart, and records every event it gets."""

    class Namespace(namespace_class):
        node_worker_ref = worker

        def trigger_event(self, event, *args):
            events.append(event, args[0] if len(args) == 1 else (list(args) or None))
            return super().trigger_event(event, *args)

    return Namespace


def connect_socket(node, **connect_kwargs) -> None:
    """Node.connect_to_socket's socket: a python-socketio client with the
    node's namespace class on /tasks, made the node's current socket
    (`node.socketIO`, also kept in `node.sockets`) before it connects, since
    the handlers use it; connected as vantage6 does (`wait=False`), then
    waited for (30 s at most)."""
    sio = socketio.Client(request_timeout=60)
    sio.register_namespace(node.namespace_class("/tasks"))
    node.socketIO = sio
    node.sockets.append(sio)
    sio.connect(wait=False, **connect_kwargs)
    deadline = time.monotonic() + 30
    while not sio.connected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.label}: could not connect the websocket channel")
        time.sleep(0.05)


def ping(sio, label: str) -> None:
    """One round of vantage6's ping loop, on the node's current socket `sio`:
    a failure is logged and the loop goes on, as in vantage6."""
    try:
        if sio is not None and sio.connected:
            sio.emit("ping", namespace="/tasks")
    except Exception:
        log.exception("%s: ping failed", label)


def own_open_runs(queue: list[dict], killed_run_ids: set[int], organization_id: int) -> list[dict]:
    """The runs of `queue` of this organisation not killed yet, each once,
    oldest first: what a stub node counts as its running containers."""
    seen, out = set(), []
    for run in queue:
        if run["id"] in killed_run_ids or run["id"] in seen:
            continue
        if run["organization"]["id"] != organization_id:
            continue
        seen.add(run["id"])
        out.append(run)
    return out


def kill_is_for(kill_info: dict, client) -> bool:
    """vantage6's checks of a `kill_containers` message: the node's own
    collaboration and, when the message names a node, this node."""
    if kill_info["collaboration_id"] != client.collaboration_id:
        return False
    return "node_id" not in kill_info or kill_info["node_id"] == client.whoami.id_


def status_change(client, run: dict, status: str) -> dict:
    """The `algorithm_status_change` payload a node sends when one of its
    containers changes state (`client`: the node's NodeClient)."""
    return {
        "node_id": client.whoami.id_, "status": status, "run_id": run["id"],
        "task_id": run["task"]["id"], "collaboration_id": client.collaboration_id,
        "organization_id": client.whoami.organization_id, "parent_id": None,
    }
