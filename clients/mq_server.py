#!/usr/bin/env python3
"""A python-socketio server on RabbitMQ, driven over stdin: the Python half of
the mixed-fleet tests (clients/tests/test_mixed_fleet.py).

It is what Flask-SocketIO builds for ``SocketIO(app, message_queue='amqp://…')``:
a ``socketio.Server`` whose client manager is
``socketio.KombuManager(url, channel='flask-socketio')`` (channel overridable),
served over WSGI (threading, HTTP long-polling). It runs under python-socketio
5.15.0 (clients/.venv) and 5.18.1 (clients/.venv-sio518, with kombu).

Output: one JSON object per line on stdout.
  {"ready": true, "port": N, "queue": NAME, "host_id": HEX, "version": V}
      once the manager's queue consumes (a probe it published came back);
  {"connected": SID} / {"disconnected": SID}   a client of NAMESPACE;
  {"client_event": E, "sid": SID, "args": [...]} an event a client sent;
  {"callback": ID, "args": [...]}              the ack of an emit with callback;
  {"done": ID} / {"error": ID, "message": M}   a command's result.
Bytes anywhere are written as {"$bytes": "<base64>"}.

Input: one JSON command per line on stdin (bytes as {"$bytes": ...}):
  {"id": N, "cmd": "emit", "event": E, "args": [...], "to": room|[rooms]|null,
   "skip_sid": sid|[sids]|null, "callback": bool}
      ``args`` of one element is sent as that value, several as a tuple
      (python-socketio's multiple arguments), none as no data;
  {"id": N, "cmd": "enter_room"|"leave_room", "sid": SID, "room": R}
  {"id": N, "cmd": "close_room", "room": R}
  {"id": N, "cmd": "disconnect", "sid": SID}
EOF on stdin stops the server; its queue is deleted.
"""
from __future__ import annotations

import argparse
import json
import os
import socketserver
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import kombu
import socketio

from jsonbytes import decode, encode

_out_lock = threading.Lock()


def out(obj):
    line = json.dumps(encode(obj))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


PROBE = "__mq_server_probe__"


class Manager(socketio.KombuManager):
    """KombuManager that remembers its queue and reports when it consumes
    (a probe sent to the queue itself came back)."""

    queue = None
    ready = threading.Event()

    def _queue(self):
        q = super()._queue()
        self.queue = q
        return q

    def _listen(self):
        for message in super()._listen():
            try:
                data = message if isinstance(message, dict) else json.loads(message)
            except Exception:
                data = None
            if isinstance(data, dict) and data.get("method") == PROBE:
                if data.get("host_id") == self.host_id:
                    self.ready.set()
                continue
            yield message


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--amqp", required=True)
    p.add_argument("--channel", default="flask-socketio")
    p.add_argument("--namespace", default="/tasks")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    ns = args.namespace

    mgr = Manager(args.amqp, channel=args.channel)
    sio = socketio.Server(client_manager=mgr, async_mode="threading",
                          namespaces=[ns], cors_allowed_origins="*")

    @sio.on("connect", namespace=ns)
    def on_connect(sid, environ, auth=None):
        out({"connected": sid})

    @sio.on("disconnect", namespace=ns)
    def on_disconnect(sid, *a):
        out({"disconnected": sid})

    @sio.on("*", namespace=ns)
    def on_any(event, sid, *a):
        out({"client_event": event, "sid": sid, "args": list(a)})

    # Start the listener now (python-socketio starts it on the first
    # Engine.IO connection), then wait until a probe comes back through it.
    sio.manager_initialized = True
    mgr.initialize()
    # The probe goes straight to our own queue (default exchange), so no other
    # server on the exchange sees it; kombu declares and binds the queue
    # before it consumes.
    deadline = time.monotonic() + 20
    with kombu.Connection(args.amqp) as conn:
        producer = conn.Producer()
        while not mgr.ready.wait(0.1):
            if time.monotonic() > deadline:
                out({"fatal": "the KombuManager queue did not consume within 20 s"})
                sys.exit(1)
            if mgr.queue is not None:
                producer.publish(json.dumps({"method": PROBE, "host_id": mgr.host_id}),
                                 exchange="", routing_key=mgr.queue.name)

    httpd = make_server("127.0.0.1", args.port, socketio.WSGIApp(sio),
                        server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    out({"ready": True, "port": args.port, "queue": mgr.queue.name,
         "host_id": mgr.host_id, "version": getattr(socketio, "__version__", None)
         or _version()})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        cid = cmd.get("id")
        try:
            run(sio, ns, cmd)
            out({"done": cid})
        except Exception as exc:  # reported, the server goes on
            out({"error": cid, "message": f"{type(exc).__name__}: {exc}"})

    httpd.shutdown()
    try:
        with kombu.Connection(args.amqp) as conn:
            mgr.queue.bind(conn).delete()
    except Exception:
        pass
    out({"stopped": True})
    # the listener thread would log the cancelled consumer: leave at once
    os._exit(0)


def _version():
    try:
        from importlib.metadata import version

        return version("python-socketio")
    except Exception:
        return None


def run(sio, ns, cmd):
    what = cmd["cmd"]
    if what == "emit":
        a = decode(cmd.get("args", []))
        data = None if not a else (a[0] if len(a) == 1 else tuple(a))
        callback = None
        if cmd.get("callback"):
            cid = cmd.get("id")

            def callback(*ack, _cid=cid):
                out({"callback": _cid, "args": list(ack)})

        sio.emit(cmd["event"], data, to=cmd.get("to"), skip_sid=cmd.get("skip_sid"),
                 namespace=ns, callback=callback)
    elif what == "enter_room":
        sio.enter_room(cmd["sid"], cmd["room"], namespace=ns)
    elif what == "leave_room":
        sio.leave_room(cmd["sid"], cmd["room"], namespace=ns)
    elif what == "close_room":
        sio.close_room(cmd["room"], namespace=ns)
    elif what == "disconnect":
        sio.disconnect(cmd["sid"], namespace=ns)
    else:
        raise ValueError(f"unknown command {what!r}")


if __name__ == "__main__":
    main()
