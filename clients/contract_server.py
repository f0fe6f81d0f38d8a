#!/usr/bin/env python3
"""Development aid: a Python implementation of the v6-socketio CONTRACT.

NOT the product.  It exists so the compatibility suite can be checked
against something that implements the contract (vantage6 4.15.2 behaviour
plus the deliberate v6-socketio differences) while the Rust server is being
written, and so a failing test can be triaged ("does the contract model
pass it too?").  It has the same command line as the Rust binary:

    contract_server.py serve --config FILE [--ip IP] [--port PORT]

Run the suite against it with
    V6_SOCKETIO_BIN=clients/contract_server.py clients/.venv/bin/python -m pytest clients/tests

It uses python-socketio's Server (gevent, simple-websocket), the vantage6 4.15.2
models for all DB access, PyJWT for tokens (HS256, like flask-jwt-extended).
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import jwt  # noqa: E402
import socketio  # noqa: E402
import yaml  # noqa: E402
from gevent import pywsgi  # noqa: E402
from prometheus_client import CollectorRegistry, Gauge, generate_latest  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

os.environ["READTHEDOCS"] = "1"  # importing vantage6.server must not monkey-patch again
from vantage6.server import db as v6db  # noqa: E402
from vantage6.server.model.rule import Operation, Scope  # noqa: E402

log = logging.getLogger("contract_server")
ALL_NODES = "all_nodes"
NS = "/tasks"


def utcnow():
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        own = cfg.get("v6_socketio", {}) or {}
        self.secret = cfg.get("jwt_secret_key")
        self.engine = create_engine(cfg["uri"], poolclass=NullPool)
        cors = cfg.get("cors_allowed_origins", "*")
        self.sio = socketio.Server(
            async_mode="gevent", cors_allowed_origins=cors, cors_credentials=True,
            ping_interval=own.get("ping_interval", 25), ping_timeout=own.get("ping_timeout", 60),
            always_connect=True, namespaces=[NS],
        )
        self.sweep_interval = float(own.get("sweep_interval", 65))
        self.state = {}  # sid -> dict(auth_id, type, name, rooms)
        self.registry = CollectorRegistry()
        labels = ["node_id", "platform", "os"]
        self.gauges = {}
        for name in ["cpu_percent", "memory_percent", "num_algorithm_containers", "cpu_count",
                     "memory_total", "memory_available", "gpu_count"]:
            self.gauges[name] = (Gauge(name, name, labelnames=labels, registry=self.registry), False)
        for name in ["gpu_load", "gpu_memory_used", "gpu_memory_free", "gpu_temperature"]:
            self.gauges[name] = (Gauge(name, name, labelnames=labels + ["gpu_id"], registry=self.registry), True)
        self.sio_app = socketio.WSGIApp(self.sio, socketio_path=own.get("path", "/socket.io/").strip("/"))
        for ev in ("connect", "disconnect", "ping", "algorithm_status_change", "algorithm_log",
                   "node_info_update", "node_metrics_update", "message", "error"):
            self.sio.on(ev, getattr(self, "on_" + ev), namespace=NS)

    # ---------------------------------------------------------------- http
    def wsgi(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/health":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status":"ok"}']
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4")])
            return [generate_latest(self.registry)]
        if path.startswith("/socket.io"):
            return self.sio_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    # ---------------------------------------------------------------- db
    def session(self):
        return Session(bind=self.engine, expire_on_commit=False)

    # ---------------------------------------------------------------- events
    def on_connect(self, sid, environ, auth=None):
        header = environ.get("HTTP_AUTHORIZATION", "")
        try:
            if not header.startswith("Bearer "):
                raise ValueError("no bearer token")
            claims = jwt.decode(header[7:], self.secret, algorithms=["HS256"],
                                options={"verify_sub": False})
            if claims.get("type") != "access":
                raise ValueError("not an access token")
            sub = claims["sub"]
            if not isinstance(sub, int):
                raise ValueError("container token")
        except jwt.ExpiredSignatureError:
            self.sio.emit("expired_token", to=sid, namespace=NS)
            return
        except jwt.InvalidSignatureError:
            self.sio.emit("invalid_token", to=sid, namespace=NS)
            return
        except Exception as exc:
            log.info("unidentified client %s: %s", sid, exc)
            return
        with self.session() as s:
            auth = s.get(v6db.Authenticatable, sub)
            if auth is None:
                return
            auth.status = "online"
            s.commit()
            st = {"auth_id": auth.id, "type": auth.type, "rooms": []}
            if auth.type == "node":
                st["name"] = auth.name
                st["rooms"] = [ALL_NODES, f"collaboration_{auth.collaboration_id}",
                               f"collaboration_{auth.collaboration_id}_organization_{auth.organization_id}"]
                payload = {"id": auth.id, "name": auth.name, "org_id": auth.organization_id}
            else:
                st["name"] = auth.username
                st["rooms"] = self.user_rooms(s, auth)
        self.state[sid] = st
        if st["type"] == "node":
            self.sio.emit("sync", to=sid, namespace=NS)
            for room in st["rooms"]:
                if room != ALL_NODES:
                    self.sio.emit("node-online", payload, room=room, namespace=NS)
        for room in st["rooms"]:
            self.sio.enter_room(sid, room, namespace=NS)
            if room != ALL_NODES:
                self.sio.emit("message", f"{st['type'].title()} <{st['name']}> joined room <{room}>",
                              room=room, namespace=NS)

    @staticmethod
    def user_rooms(s, user):
        def has(scope):
            rule = s.query(v6db.Rule).filter_by(name="event", operation=Operation.RECEIVE, scope=scope).first()
            return rule is not None and (rule in user.rules or any(rule in r.rules for r in user.roles))

        if has(Scope.GLOBAL):
            return [f"collaboration_{c.id}" for c in s.query(v6db.Collaboration).all()]
        collabs = user.organization.collaborations if user.organization else []
        if has(Scope.COLLABORATION):
            return [f"collaboration_{c.id}" for c in collabs]
        if has(Scope.ORGANIZATION):
            return [f"collaboration_{c.id}_organization_{user.organization_id}" for c in collabs]
        return []

    def on_disconnect(self, sid, *args):
        st = self.state.pop(sid, None)
        if st is None:
            return
        for room in st["rooms"]:
            self.sio.leave_room(sid, room, namespace=NS)
            if room != ALL_NODES:
                self.sio.emit("message", f"{st['name']} left room {room}", room=room,
                              skip_sid=sid, namespace=NS)
        with self.session() as s:
            auth = s.get(v6db.Authenticatable, st["auth_id"])
            auth.status = "offline"
            if st["type"] == "node":
                payload = {"id": auth.id, "name": auth.name, "org_id": auth.organization_id}
                for conf in list(auth.config):
                    s.delete(conf)
            s.commit()
        if st["type"] == "node":
            for room in st["rooms"]:
                if room != ALL_NODES:
                    self.sio.emit("node-offline", payload, room=room, skip_sid=sid, namespace=NS)

    def _node(self, sid):
        st = self.state.get(sid)
        return st if st and st["type"] == "node" else None

    def on_ping(self, sid, *args):
        st = self.state.get(sid)
        if not st:
            return
        with self.session() as s:
            auth = s.get(v6db.Authenticatable, st["auth_id"])
            auth.status = "online"
            auth.last_seen = utcnow()
            s.commit()

    def on_algorithm_status_change(self, sid, data):
        if not self._node(sid):
            return
        with self.session() as s:
            run = s.get(v6db.Run, data.get("run_id"))
            if run is None:
                return
            job_id = run.task.job_id
        keys = ["status", "run_id", "task_id", "job_id", "collaboration_id", "node_id",
                "organization_id", "parent_id"]
        out = {k: (job_id if k == "job_id" else data.get(k)) for k in keys}
        self.sio.emit("algorithm_status_change", out, room=f"collaboration_{data.get('collaboration_id')}",
                      namespace=NS)

    def on_algorithm_log(self, sid, data):
        if not self._node(sid):
            return
        with self.session() as s:
            run = s.get(v6db.Run, data.get("run_id"))
            if run is None:
                return
            msg = data.get("log")
            if run.log:
                if not run.log.endswith("\n"):
                    run.log += "\n"
                run.log += msg
            else:
                run.log = msg
            s.commit()
        self.sio.emit("algorithm_log", {"run_id": data.get("run_id"), "task_id": data.get("task_id"),
                                        "log": data.get("log")},
                      room=f"collaboration_{data.get('collaboration_id')}", namespace=NS)

    def on_node_info_update(self, sid, config):
        st = self._node(sid)
        if not st:
            return
        with self.session() as s:
            node = s.get(v6db.Node, st["auth_id"])
            for conf in list(node.config):
                s.delete(conf)
            s.flush()
            rows = []
            for k, v in config.items():
                if isinstance(v, list):
                    rows += [v6db.NodeConfig(node_id=node.id, key=k, value=i) for i in v]
                elif isinstance(v, dict):
                    for ik, iv in v.items():
                        if isinstance(iv, list):
                            rows += [v6db.NodeConfig(node_id=node.id, key=ik, value=x) for x in iv]
                        else:
                            rows.append(v6db.NodeConfig(node_id=node.id, key=ik, value=iv))
                else:
                    rows.append(v6db.NodeConfig(node_id=node.id, key=k, value=v))
            s.add_all(rows)
            s.commit()

    def on_node_metrics_update(self, sid, data):
        st = self._node(sid)
        if not st:
            return
        data = dict(data)
        os_label = data.pop("os", "unknown")
        platform = data.pop("platform", "unknown")
        labels = {"node_id": str(st["auth_id"]), "os": os_label, "platform": platform}
        for name, value in data.items():
            if name not in self.gauges:
                log.warning("unknown metric %s", name)
                continue
            gauge, is_list = self.gauges[name]
            try:
                if is_list:
                    for i, v in enumerate(value):
                        gauge.labels(**labels, gpu_id=str(i)).set(v)
                else:
                    gauge.labels(**labels).set(value)
            except Exception as exc:
                log.warning("bad metric %s: %s", name, exc)

    def on_message(self, sid, msg=None):
        log.info("received message: %s", msg)

    def on_error(self, sid, msg=None):
        log.error("client error: %s", msg)

    # ---------------------------------------------------------------- sweep
    def sweeper(self):
        before = utcnow()
        while True:
            time.sleep(self.sweep_interval)
            with self.session() as s:
                for node in s.query(v6db.Node).filter(v6db.Node.status == "online",
                                                       v6db.Node.last_seen < before).all():
                    node.status = "offline"
                s.commit()
            # reference: `before` is taken at the start of each sleep
            before = utcnow()


def main(argv=None):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("--config", required=True)
    sp.add_argument("--ip")
    sp.add_argument("--port", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    own = cfg.get("v6_socketio", {}) or {}
    app = App(cfg)
    threading.Thread(target=app.sweeper, daemon=True).start()
    ip = args.ip or own.get("ip", "127.0.0.1")
    port = args.port or own.get("port", 7601)
    pywsgi.WSGIServer((ip, port), app.wsgi, log=None).serve_forever()


if __name__ == "__main__":
    main()
