"""Connect-time race stress for plain python-socketio clients (5.15 and 5.18).

Each cycle opens a new `socketio.Client` the way vantage6-node 4.15.2 does
(`connect(..., wait=False)`, then waiting for `connected`) and handles the
first event the server sends like the node's `NodeTaskNamespace`:

* with an expired or forged token, `expired_token` / `invalid_token` calls
  `disconnect()` from the handler thread (`on_expired_token`,
  `on_invalid_token`);
* with a valid node token, `sync` emits `node_info_update` from the handler
  thread (`on_sync` -> `share_node_details`).

An exception in any handler thread (python-socketio runs each packet's
handler in a thread of its own) is caught by `threading.excepthook` and
counted. Prints one JSON object with the counts; the test asserts on them.

    race_stress.py --url URL --transport polling|websocket --cycles 12 \
        --tokens '[{"valid": T, "expired": T, "forged": T}, ...]'

Each worker (thread) uses a node of its own, alone in its collaboration: a
node's connect announces it to its rooms, and python-engineio's client
refuses a polling response of more than 16 packets, which many sockets of
one room connecting at once would produce.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import threading
import time
from collections import Counter

import socketio

from sio_testkit import disconnect_after_sends

NS = "/tasks"
DEBUG = bool(__import__("os").environ.get("RACE_STRESS_DEBUG"))
if DEBUG:
    import engineio.payload

    _decode = engineio.payload.Payload.decode

    def _logged_decode(self, encoded_payload):
        try:
            return _decode(self, encoded_payload)
        except ValueError:
            errors.append(f"undecodable payload {encoded_payload!r}")
            raise

    engineio.payload.Payload.decode = _logged_decode
TIMEOUT = 10.0

counts: Counter = Counter()
errors: list[str] = []
latencies: list[float] = []  # connect() called -> sync handled, valid cycles
lock = threading.Lock()


def count(key: str, n: int = 1) -> None:
    with lock:
        counts[key] += n


def excepthook(args) -> None:
    name = type(args.exc_value).__name__
    count(f"thread_crash:{name}")
    with lock:
        if len(errors) < 20:
            errors.append(f"{name}: {args.exc_value}")


class Namespace(socketio.ClientNamespace):
    def __init__(self, done: threading.Event):
        super().__init__(NS)
        self.done = done
        self.sync_at: float | None = None

    def _disconnect_like_the_node(self, event: str) -> None:
        count(f"{event}_received")
        self.client.disconnect()  # what on_expired_token / on_invalid_token do first
        count(f"{event}_disconnected")
        self.done.set()

    def on_expired_token(self):
        self._disconnect_like_the_node("expired_token")

    def on_invalid_token(self):
        self._disconnect_like_the_node("invalid_token")

    def on_sync(self):
        self.sync_at = time.monotonic()
        count("sync_received")
        try:
            self.client.emit("node_info_update", {"database_labels": ["default"]}, namespace=NS)
        except socketio.exceptions.BadNamespaceError:
            count("bad_namespace")
            raise
        finally:
            self.done.set()
        count("sync_shared")


def one_cycle(url: str, transport: str, kind: str, token: str) -> None:
    done = threading.Event()
    records: list[str] = []
    kw = {}
    if DEBUG:
        import logging

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(f"{record.threadName} {self.format(record)}")

        lg = logging.getLogger(f"eio-{id(done)}")
        lg.propagate = False
        lg.setLevel(logging.INFO)
        lg.addHandler(Keep())
        kw = {"engineio_logger": lg, "logger": lg}
    sio = socketio.Client(request_timeout=60, reconnection=False, **kw)
    namespace = Namespace(done)
    sio.register_namespace(namespace)
    count(f"{kind}_cycles")
    started = time.monotonic()
    sio.connect(url, headers={"Authorization": f"Bearer {token}"}, transports=[transport],
                wait=False)
    deadline = time.monotonic() + TIMEOUT
    while not sio.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    if not done.wait(TIMEOUT):
        count(f"{kind}_no_first_event")
        with lock:
            errors.append(f"{kind}: no first event; engine.io sid {sio.eio.sid}, "
                          f"namespaces {dict(sio.namespaces)}, state {sio.eio.state}; "
                          + " | ".join(records[-30:]))
    if kind == "valid":
        if namespace.sync_at is not None:
            with lock:
                latencies.append(namespace.sync_at - started)
        disconnect_after_sends(sio, TIMEOUT)
    else:
        # the handler disconnected; wait for the read loop to end
        end = time.monotonic() + TIMEOUT
        while sio.eio.state != "disconnected" and time.monotonic() < end:
            time.sleep(0.01)
        if sio.eio.state != "disconnected":
            count(f"{kind}_still_connected")
            sio.disconnect()


def worker(args, tokens: dict[str, str]) -> None:
    for _ in range(args.cycles):
        for kind, token in tokens.items():
            try:
                one_cycle(args.url, args.transport, kind, token)
            except Exception as exc:  # a failed connect counts, the loop goes on
                count(f"{kind}_connect_failed:{type(exc).__name__}")


def _quantiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {}
    q = statistics.quantiles(values, n=20)
    return {"median": round(statistics.median(values) * 1000, 1), "p95": round(q[18] * 1000, 1),
            "n": len(values)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--transport", choices=["polling", "websocket"], required=True)
    p.add_argument("--cycles", type=int, default=25, help="cycles per worker and kind")
    p.add_argument("--tokens", required=True,
                   help="JSON list, one {valid, expired, forged} per worker (a node each)")
    args = p.parse_args()
    threading.excepthook = excepthook
    per_worker = json.loads(args.tokens)
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(args, tokens)) for tokens in per_worker]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.2)  # late handler threads
    print(json.dumps({"version": importlib.metadata.version("python-socketio"),
                      "transport": args.transport, "seconds": round(time.monotonic() - started, 2),
                      "counts": dict(counts), "errors": errors,
                      "connect_to_sync_ms": _quantiles(latencies)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
