#!/usr/bin/env python3
"""A stand-in for the socket side of vantage6-node 4.15.2.

It connects to the ``/tasks`` namespace exactly like ``Node.connect_to_socket``
(vantage6/node/__init__.py) and reacts to events like ``NodeTaskNamespace``
(vantage6/node/socket.py) does, minus Docker and the REST API:

* ``socketio.Client(request_timeout=60)``, one namespace ``/tasks`` registered,
  ``connect(url, headers={"Authorization": "Bearer <token>"}, wait=False)``,
  then it polls ``connected`` (the node gives up after 60 s with exit 1);
* a background ``ping`` emitter: first after 5 s, then every 60 s (flags);
* ``sync`` -> emits ``node_info_update`` with a typical 4.x payload
  (``share_node_details``);
* ``expired_token`` / ``invalid_token`` -> disconnect, obtain a token again
  (re-read ``--token-file`` until it holds a token different from the rejected
  one; the real node asks the REST API), connect a NEW Client.  Without
  ``--token-file`` the simulator exits with status 3;
* ``kill_containers`` -> like ``Node.kill_containers``: ignored unless the
  collaboration matches and ``node_id`` is absent or ours; then every "running"
  run (``--running-runs``) that is in the kill list for our organisation (or
  all of them without a kill list) is reported with ``algorithm_status_change``
  status "killed by user".

Every event received on ``/tasks`` is printed to ``--events-out`` as one JSON
line ``{"event": ..., "data": ...}`` (flushed); local connection changes are
printed as ``{"event": "connect"|"disconnect", "data": {...}, "local": true}``
and everything the simulator emits as ``{"sent": ..., "data": ...}``.

JSON lines on stdin (``--stdin-commands``) make it emit arbitrary events:
``{"emit": "algorithm_log", "data": {...}}``, ``{"cmd": "disconnect"}``.

Works with python-socketio 5.15.0 (what vantage6-node 4.15.2 pins) and newer
5.x releases.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import threading
import time

import socketio
from socketio import packet as socketio_packet

log = logging.getLogger("node_simulator")

KILLED = "killed by user"  # vantage6.common.task_status.TaskStatus.KILLED

DEFAULT_NODE_INFO = {
    # what share_node_details() sends for a node with encryption disabled, a
    # policy, two databases (one csv with known columns) in 4.15.2
    "encryption": False,
    "allowed_algorithms": [
        "harbor2.vantage6.ai/demo/average",
        r"^harbor2\.vantage6\.ai/algorithms/.*",
    ],
    "allowed_orgs": [1, 2],
    "database_labels": ["default", "omop"],
    "database_types": {"db_type_default": "csv", "db_type_omop": "sql"},
    "database_columns": {"columns_default": ["age", "weight", "isOld"]},
}


class Output:
    """Thread-safe JSON-lines writer."""

    def __init__(self, target: str | None):
        self.lock = threading.Lock()
        if target is None:
            self.fh = None
        elif target == "-":
            self.fh = sys.stdout
        else:
            self.fh = open(target, "a", buffering=1)

    def write(self, obj: dict) -> None:
        if self.fh is None:
            return
        line = json.dumps(obj, default=str)
        with self.lock:
            self.fh.write(line + "\n")
            self.fh.flush()


def jwt_sub(token: str):
    """The (unverified) ``sub`` claim of a JWT, or None."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return json.loads(base64.urlsafe_b64decode(payload)).get("sub")
    except Exception:
        return None


def _data_of(args) -> object:
    return None if not args else (args[0] if len(args) == 1 else list(args))


def _has_bytes(value) -> bool:
    """Whether a decoded event carries binary (only binary packets do)."""
    if isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_bytes(v) for v in value)
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    return False


def record_in_arrival_order(sio: socketio.Client, out) -> None:
    """Writes every event packet of /tasks to ``out`` as it arrives, in the
    read loop, before its handler runs. python-engineio's client hands every
    message to a thread of its own, so handlers (vantage6's too) may run in
    another order than the server sent: the record must not depend on that.
    Handlers still run as vantage6-node runs them. Binary events (none in
    vantage6) are recorded at dispatch instead."""
    trigger = sio.eio._trigger_event

    def in_arrival_order(event, *args, **kwargs):
        if event == "message" and args and isinstance(args[0], str):
            try:
                pkt = socketio_packet.Packet(encoded_packet=args[0])
            except Exception:  # not ours to judge: the client reports it
                pkt = None
            if (pkt is not None and pkt.packet_type == socketio_packet.EVENT
                    and (pkt.namespace or "/") == "/tasks" and isinstance(pkt.data, list)
                    and pkt.data and not str(pkt.data[0]).startswith("__")):
                out.write({"event": pkt.data[0], "data": _data_of(pkt.data[1:])})
        return trigger(event, *args, **kwargs)

    sio.eio._trigger_event = in_arrival_order


class NodeTaskNamespace(socketio.ClientNamespace):
    """Mirror of vantage6.node.socket.NodeTaskNamespace (4.15.2)."""

    node_worker_ref: "SimulatedNode" = None

    def trigger_event(self, event, *args):
        # binary events are recorded here, at dispatch; the others in arrival
        # order by `record_in_arrival_order`
        node = self.node_worker_ref
        if (_has_bytes(args) and event not in ("connect", "disconnect", "connect_error")
                and not event.startswith("__")):
            node.out.write({"event": event, "data": _data_of(args)})
        return super().trigger_event(event, *args)

    def on_message(self, msg):
        log.info(msg)

    def on_connect(self):
        node = self.node_worker_ref
        transport = None
        try:
            transport = node.sio.transport()
        except Exception:
            pass
        node.out.write({"event": "connect", "data": {"transport": transport}, "local": True})
        log.info("Websocket connection established")

    def on_connect_error(self, data=None):
        self.node_worker_ref.out.write(
            {"event": "connect_error", "data": data, "local": True}
        )

    def on_disconnect(self, *args):
        self.node_worker_ref.out.write(
            {"event": "disconnect", "data": list(args) or None, "local": True}
        )
        log.info("Disconnected from the server")

    def on_sync(self):
        log.info("Received sync: (re)connected to the /tasks namespace, sharing node details")
        # the real node first syncs its task queue over REST
        self.node_worker_ref.share_node_details()

    def on_new_task(self, data):
        log.info("New task has been added task_id=%s", (data or {}).get("id"))

    def on_algorithm_status_change(self, data):
        status = (data or {}).get("status")
        if status in (
            "failed", "crashed", "start failed", "non-existing Docker image",
            "not allowed", KILLED,
        ):
            log.critical(
                "A container on a node within your collaboration part of job_id=%s "
                "has exited with status %s", (data or {}).get("job_id"), status,
            )

    def on_expired_token(self):
        log.warning("Your token is no longer valid... reconnecting")
        self.node_worker_ref.recover("expired_token")

    def on_invalid_token(self):
        log.warning("Node has invalid token. Reauthenticating...")
        self.node_worker_ref.recover("invalid_token")

    def on_kill_containers(self, kill_info):
        log.info("Received instruction to kill task: %s", kill_info)
        node = self.node_worker_ref
        for killed in node.kill_containers(kill_info or {}):
            node.emit(
                "algorithm_status_change",
                {
                    "run_id": killed["run_id"],
                    "task_id": killed["task_id"],
                    "collaboration_id": node.collaboration_id,
                    "node_id": node.node_id,
                    "status": KILLED,
                    "organization_id": node.organization_id,
                    "parent_id": killed.get("parent_id"),
                },
                sio=self.client,
            )


class SimulatedNode:
    def __init__(self, args):
        self.args = args
        self.out = Output(args.events_out)
        self.token = self._initial_token()
        self.node_id = args.node_id if args.node_id is not None else jwt_sub(self.token)
        self.collaboration_id = args.collaboration_id
        self.organization_id = args.organization_id
        self.running = parse_runs(args.running_runs)
        self.node_info = json.loads(args.node_info) if args.node_info else DEFAULT_NODE_INFO
        self.sio: socketio.Client | None = None
        self.exit_code: int | None = None
        self.done = threading.Event()
        self.lock = threading.RLock()
        self.generation = 0

    # -- token handling ---------------------------------------------------
    def _initial_token(self) -> str:
        if self.args.token:
            return self.args.token
        if self.args.token_file:
            with open(self.args.token_file) as fh:
                return fh.read().strip()
        return ""

    def _new_token(self, rejected: str) -> str | None:
        """Re-read --token-file until it holds another token (the real node
        asks the server: POST /api/token/refresh or /api/token/node)."""
        deadline = time.monotonic() + self.args.token_wait
        while time.monotonic() < deadline and not self.done.is_set():
            try:
                with open(self.args.token_file) as fh:
                    token = fh.read().strip()
                if token and token != rejected:
                    return token
            except OSError:
                pass
            time.sleep(0.05)
        return None

    # -- socket ----------------------------------------------------------
    def transports(self):
        return {
            "polling": ["polling"],
            "websocket": ["websocket"],
            "both": None,  # python-socketio default: polling, then upgrade
        }[self.args.transport]

    def connect_to_socket(self) -> bool:
        """Node.connect_to_socket(): a new Client object every time."""
        with self.lock:
            self.generation += 1
            generation = self.generation
            sio = socketio.Client(
                request_timeout=60,
                logger=self.args.debug,
                engineio_logger=self.args.debug,
            )
            sio.register_namespace(NodeTaskNamespace("/tasks"))
            record_in_arrival_order(sio, self.out)
            NodeTaskNamespace.node_worker_ref = self
            self.sio = sio
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        kwargs = {}
        if self.transports() is not None:
            kwargs["transports"] = self.transports()
        try:
            sio.connect(url=self.args.url, headers=headers, wait=False, **kwargs)
        except Exception as exc:  # connection refused etc.
            log.error("connect failed: %s", exc)
            self.out.write({"event": "connect_failed", "data": str(exc), "local": True})
            return False
        deadline = time.monotonic() + self.args.connect_timeout
        while not sio.connected:
            if time.monotonic() > deadline:
                log.critical(
                    "Could not connect to the websocket channels, do you have a slow connection?"
                )
                return False
            time.sleep(0.02)
        log.info("Connected to %s", self.args.url)
        threading.Thread(target=self._ping_worker, args=(sio, generation), daemon=True).start()
        if self.args.metrics_interval > 0:
            threading.Thread(
                target=self._metrics_worker, args=(sio, generation), daemon=True
            ).start()
        return True

    def _alive(self, generation: int) -> bool:
        return generation == self.generation and not self.done.is_set()

    def _ping_worker(self, sio: socketio.Client, generation: int) -> None:
        if self.done.wait(self.args.ping_first):
            return
        while self._alive(generation):
            try:
                if sio.connected:
                    self.emit("ping", sio=sio)
                else:
                    log.debug("SocketIO is not connected, skipping ping")
            except Exception:
                log.exception("Ping thread had an exception")
            if self.done.wait(self.args.ping_interval):
                return

    def _metrics_worker(self, sio: socketio.Client, generation: int) -> None:
        while self._alive(generation):
            if self.done.wait(self.args.metrics_interval):
                return
            if sio.connected and self._alive(generation):
                self.emit(
                    "node_metrics_update",
                    {
                        "cpu_percent": 12.5,
                        "memory_percent": 40.25,
                        "num_algorithm_containers": len(self.running),
                        "os": sys.platform,
                        "platform": os.uname().machine if hasattr(os, "uname") else "unknown",
                        "cpu_count": os.cpu_count() or 1,
                        "memory_total": 8 * 1024**3,
                        "memory_available": 5 * 1024**3,
                    },
                    sio=sio,
                )

    def emit(self, event: str, data=None, sio: socketio.Client | None = None) -> None:
        sio = sio or self.sio
        self.out.write({"sent": event, "data": data})
        if data is None:
            sio.emit(event, namespace="/tasks")
        else:
            sio.emit(event, data, namespace="/tasks")

    def share_node_details(self) -> None:
        if self.args.no_share_config:
            return
        self.emit("node_info_update", self.node_info)

    def kill_containers(self, kill_info: dict) -> list[dict]:
        if kill_info.get("collaboration_id") != self.collaboration_id:
            log.debug("Not killing tasks as this node is in another collaboration.")
            return []
        if "node_id" in kill_info and kill_info["node_id"] != self.node_id:
            log.debug("Not killing tasks: instructions directed at another node.")
            return []
        kill_list = kill_info.get("kill_list")
        killed = []
        for run in list(self.running):
            if kill_list:
                hit = any(
                    k.get("run_id") == run["run_id"]
                    and k.get("organization_id") == self.organization_id
                    for k in kill_list
                )
            else:
                hit = True
            if hit:
                killed.append(run)
                self.running.remove(run)
        return killed

    def recover(self, reason: str) -> None:
        """on_expired_token / on_invalid_token: disconnect, new token, new Client."""
        rejected = self.token
        old = self.sio
        if not self.args.token_file:
            log.error("%s and no --token-file to obtain a new token: exiting", reason)
            self.finish(3)
            return
        try:
            old.disconnect()
        except Exception:
            log.exception("disconnect failed")
        token = self._new_token(rejected)
        if token is None:
            log.error("no new token appeared in %s", self.args.token_file)
            self.finish(4)
            return
        self.token = token
        if not self.connect_to_socket():
            self.finish(1)

    def finish(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self.done.set()

    def stdin_loop(self) -> None:
        # duplicates: deliberate — the simulator is a standalone tool (clients/simulate-node) and
        # reads its JSON-line commands itself, without the test helpers (lineproc).
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
            except ValueError:
                log.error("bad command: %s", line)
                continue
            if cmd.get("cmd") == "disconnect" or cmd.get("cmd") == "exit":
                self.finish(0)
                return
            if "emit" in cmd:
                try:
                    self.emit(cmd["emit"], cmd.get("data"))
                except Exception as exc:
                    log.error("emit failed: %s", exc)
        # stdin closed: stop like a node being shut down
        self.finish(0)

    def run(self) -> int:
        if not self.connect_to_socket():
            return 1
        if self.args.stdin_commands:
            threading.Thread(target=self.stdin_loop, daemon=True).start()
        timeout = self.args.duration if self.args.duration > 0 else None
        self.done.wait(timeout)
        try:
            if self.sio is not None and self.sio.connected:
                self.sio.disconnect()
        except Exception:
            log.exception("Error disconnecting socketIO during cleanup")
        return self.exit_code or 0


def parse_runs(spec: str | None) -> list[dict]:
    """``run_id:task_id[:parent_id],...`` -> list of runs 'running' here."""
    runs = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        runs.append(
            {
                "run_id": int(parts[0]),
                "task_id": int(parts[1]),
                "parent_id": int(parts[2]) if len(parts) > 2 and parts[2] else None,
            }
        )
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="server URL, e.g. http://127.0.0.1:7601")
    p.add_argument("--token", help="access token (JWT)")
    p.add_argument("--token-file", help="file holding the access token; re-read on expired/invalid token")
    p.add_argument("--token-wait", type=float, default=30.0,
                   help="seconds to wait for a new token in --token-file")
    p.add_argument("--transport", choices=["polling", "websocket", "both"], default="both")
    p.add_argument("--duration", type=float, default=0, help="exit after this many seconds (0: run until stopped)")
    p.add_argument("--events-out", default=None, help="'-' for stdout, or a file to append JSON lines to")
    p.add_argument("--ping-first", type=float, default=5.0, help="seconds before the first ping (node: 5)")
    p.add_argument("--ping-interval", type=float, default=60.0, help="seconds between pings (node: 60)")
    p.add_argument("--metrics-interval", type=float, default=0,
                   help="emit node_metrics_update every N seconds (0: never; node default 45 when prometheus is enabled)")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="give up if not connected after this many seconds (node: 60)")
    p.add_argument("--node-id", type=int, help="own node id (default: the token's sub)")
    p.add_argument("--collaboration-id", type=int, help="own collaboration id (for kill_containers)")
    p.add_argument("--organization-id", type=int, help="own organization id (for kill_containers)")
    p.add_argument("--running-runs", help="runs 'running' here: run_id:task_id[:parent_id],...")
    p.add_argument("--node-info", help="JSON payload for node_info_update (default: a typical 4.x payload)")
    p.add_argument("--no-share-config", action="store_true", help="like share_config: false")
    p.add_argument("--stdin-commands", action="store_true", help="read JSON emit commands from stdin")
    p.add_argument("--debug", action="store_true", help="python-socketio/engineio loggers on")
    args = p.parse_args(argv)
    if not args.token and not args.token_file:
        p.error("one of --token or --token-file is required")

    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s node_simulator %(levelname)s %(message)s",
    )
    node = SimulatedNode(args)
    try:
        return node.run()
    except KeyboardInterrupt:
        node.finish(0)
        return 0


if __name__ == "__main__":
    sys.exit(main())
