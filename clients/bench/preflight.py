"""The check before a deployment is measured: a node (a python-socketio client, websocket
transport only, no long-polling fallback) connects to every instance's ``/tasks`` with a vantage6
4.15.2 access token minted from the configuration's secret, receives ``sync``; then, with a
broker, ``new_task`` published on RabbitMQ the way vantage6's REST API does (``v6-socketio emit``:
the adapter's Emitter, the load generator's publisher) reaches the nodes on every instance.

For vantage6 under uWSGI this proves what the comparison relies on: its gevent_uwsgi mode serves
the websocket on /socket.io/ and its Flask-SocketIO consumes the broker's messages.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import jwt
import socketio


def node_token(secret: str, node_id: int) -> str:
    """A vantage6 4.15.2 node access token as flask-jwt-extended mints it (HS256)."""
    now = int(time.time())
    claims = {"fresh": False, "iat": now, "jti": str(uuid.uuid4()), "type": "access", "sub": node_id,
              "nbf": now, "exp": now + 6 * 3600, "client_type": "node", "roles": []}
    return jwt.encode(claims, secret, algorithm="HS256")


class _Node:
    def __init__(self, url: str, token: str):
        self.sio = socketio.Client(reconnection=False)
        self.events: dict[str, list] = {}
        self.cond = threading.Condition()
        self.url, self.token = url, token

        @self.sio.on("*", namespace="/tasks")
        def any_event(event, *args):
            with self.cond:
                self.events.setdefault(event, []).append(args[0] if args else None)
                self.cond.notify_all()

    def connect(self) -> None:
        self.sio.connect(self.url, namespaces=["/tasks"], transports=["websocket"],
                         headers={"Authorization": f"Bearer {self.token}"}, wait_timeout=20)

    def wait(self, event: str, timeout: float, match=lambda data: True):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for data in self.events.get(event, []):
                    if match(data):
                        return data
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.url}: no {event!r} within {timeout:.0f} s "
                                       f"(got {sorted(self.events)})")
                self.cond.wait(left)

    @property
    def transport(self) -> str:
        return self.sio.transport()


def check(*, urls: list[str], fixture: dict, emit_argv: list[str] | None) -> dict:
    """Runs the check; returns what it found (a JSON line for the results file). Raises
    RuntimeError naming what did not work. ``emit_argv``: ``v6-socketio emit --config F``
    (None: no broker)."""
    collab = fixture["collaborations"][0]
    node_ids = collab["nodes"][: max(1, len(urls))]
    if len(node_ids) < len(urls):
        node_ids = node_ids * len(urls)
    nodes = [_Node(url, node_token(fixture["jwt_secret_key"], nid)) for url, nid in zip(urls, node_ids)]
    found: dict = {"scenario": "preflight", "urls": urls}
    try:
        for n in nodes:
            n.connect()
            if n.transport != "websocket":
                raise RuntimeError(f"{n.url}: transport {n.transport}, not websocket")
            n.wait("sync", 20)
        found["transport"] = "websocket"
        found["sync"] = True
        if emit_argv:
            time.sleep(1)  # the room joins ride on the connect handlers; let them settle
            marker = 900_000_000 + int(time.time()) % 1_000_000
            subprocess.run([*emit_argv, "--room", f"collaboration_{collab['id']}", "--event", "new_task",
                            "--data", json.dumps({"id": marker, "parent_id": None})],
                           check=True, capture_output=True, timeout=30)
            for n in nodes:
                n.wait("new_task", 20, lambda d: isinstance(d, dict) and d.get("id") == marker)
            found["new_task_from_broker"] = True
        return found
    finally:
        for n in nodes:
            n.sio.disconnect()


def main() -> None:  # python preflight.py FIXTURE URL... [-- EMIT ARGV]
    import sys

    args = sys.argv[1:]
    emit = None
    if "--" in args:
        i = args.index("--")
        args, emit = args[:i], args[i + 1:]
    fixture = json.loads(Path(args[0]).read_text())
    print(json.dumps(check(urls=args[1:], fixture=fixture, emit_argv=emit)))


if __name__ == "__main__":
    main()
