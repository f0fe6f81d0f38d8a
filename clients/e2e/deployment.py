"""A whole deployment (database, vantage6-server, v6-socketio instances, nginx)
and the per-test world of collaborations, nodes and users on it."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import e2e_expect
import e2e_harness
from clients import StubNodeWorker, UiListener
from e2e_expect import SETTLE, joined, left, node_status  # noqa: F401  (re-exported)
from harness import (
    Broker,
    Database,
    Nginx,
    SocketioInstance,
    Vantage6Server,
    free_port,
    server_binary,
    wait_until,
    write_config,
)
from rest import Admin, Api, Collaboration, UserAccount


class Deployment(e2e_harness.Deployment):
    def __init__(self, backend: str, workdir: Path, *, secret: str, instances: int = 3):
        self.backend = backend
        self.workdir = workdir
        self.secret = secret
        self.db = Database(backend, workdir)
        self.broker = Broker()
        self.api_port = free_port()
        self.config = write_config(workdir / "vantage6-server.yaml", db=self.db, broker=self.broker,
                                   api_port=self.api_port, secret=secret)
        self.vantage6 = Vantage6Server(workdir, self.config, self.api_port)
        self.instances = [
            SocketioInstance(workdir, self.config, free_port(), f"v6-socketio-{i}")
            for i in range(instances)
        ]
        self.nginx = Nginx(workdir, free_port(), [i.addr for i in self.instances],
                           [f"127.0.0.1:{self.api_port}"])
        self.admin: Admin | None = None

    # --- life cycle ------------------------------------------------------
    def start(self):
        # vantage6 creates the tables, default roles and root user on its
        # first start; the instances refuse a database without them.
        self.vantage6.start()
        for inst in self.instances:
            inst.start()
        self.nginx.start()
        self.admin = Admin(self.api_url)

    def processes(self):
        return [self.vantage6, *self.instances, self.nginx]

    def stop(self):
        self.nginx.stop()
        for inst in self.instances:
            inst.stop()
        self.vantage6.stop()
        self.drop_storage()

    def emit(self, room: str, event: str, data) -> None:
        """Publish like vantage6's REST API: `v6-socketio emit` on the shared
        configuration (RabbitMQ URI and message format from the file)."""
        subprocess.run([str(server_binary()), "emit", "--config", str(self.config), "--room", room,
                        "--event", event, "--data", json.dumps(data)], check=True, timeout=30,
                       capture_output=True)

    @property
    def url(self) -> str:
        """What nodes and the UI are configured with: nginx."""
        return self.nginx.url

    @property
    def api_url(self) -> str:
        return f"{self.nginx.url}/api"

    # --- placing clients on instances ------------------------------------
    def instance_of(self, authorization: str) -> int:
        addr = self.nginx.upstream_of(authorization)
        return next(i for i, inst in enumerate(self.instances) if inst.addr == addr)

    def node_on(self, collab: Collaboration, organization_id: int, instance: int | None,
                *, transports=None, label: str = "") -> StubNodeWorker:
        """A node whose Authorization header nginx pins to `instance`
        (None: wherever it lands). Each login yields a new token, hence a new
        hash: log in again until the header lands on the wanted instance."""
        account = self.admin.node(collab, organization_id)
        node = StubNodeWorker(account, self.url, transports=transports,
                              label=label or account.name)
        for _ in range(60):
            node.authenticate()
            if instance is None or self.instance_of(node.authorization) == instance:
                break
        else:
            raise AssertionError(f"could not place {account.name} on instance {instance}")
        node.connect_to_socket()
        node.events.wait_for(lambda evs: any(e == "sync" for e, _ in evs), what="sync")
        return node

    def user_on(self, user: UserAccount, instance: int, label: str) -> UiListener:
        for _ in range(60):
            api = Api.login(self.api_url, user.username, user.password)
            if self.instance_of(api.authorization) == instance:
                break
        else:
            raise AssertionError(f"could not place {user.username} on instance {instance}")
        ui = UiListener(self.url, api.token, label)
        ui.wait_connected()
        ui.api = api
        # connected once its own join message (one collaboration) is in
        own_join = f"User <{user.username}> joined room <"
        wait_until(lambda: any(e == "message" and str(d).startswith(own_join)
                               for e, d in ui.since(0)), what=f"{label} joined its room")
        return ui

    def world(self) -> "World":
        return World(self)

    def extra_node(self, collab: Collaboration, label: str, instance: int | None = None):
        """One more node in `collab`, for its own new organisation."""
        org = self.admin.organization(f"org-{label}")
        self.admin.call("POST", f"collaboration/{collab.id}/organization", json={"id": org})
        collab.organization_ids.append(org)
        return self.node_on(collab, org, instance, label=label)


class World:
    """Collaboration A: three nodes a0, a1, a2 on instances 0, 1, 2 and a UI
    user (of a0's organisation) on instance 1. Collaboration B, the
    bystander: nodes b0, b1 on instances 0 and 2 and its own UI user on
    instance 2. Tests may disconnect or move clients; `heal` puts them back
    before the next test."""

    def __init__(self, dep: Deployment):
        self.dep = dep
        admin = dep.admin
        self.orgs_a = [admin.organization("org-a") for _ in range(3)]
        self.orgs_b = [admin.organization("org-b") for _ in range(2)]
        self.a = admin.collaboration(self.orgs_a, "collab-a")
        self.b = admin.collaboration(self.orgs_b, "collab-b")
        self.user_a = dep.user_on(admin.user(self.orgs_a[0]), 1, "user-a")
        self.user_b = dep.user_on(admin.user(self.orgs_b[0]), 2, "user-b")
        self.nodes_a = [dep.node_on(self.a, self.orgs_a[i], i, label=f"a{i}") for i in range(3)]
        self.nodes_b = [dep.node_on(self.b, self.orgs_b[j], i, label=f"b{j}")
                        for j, i in enumerate((0, 2))]
        self.placement = {
            **{n: i for i, n in enumerate(self.nodes_a)},
            self.nodes_b[0]: 0, self.nodes_b[1]: 2, self.user_a: 1, self.user_b: 2,
        }
        time.sleep(SETTLE)

    @property
    def everyone(self):
        return [self.user_a, self.user_b, *self.nodes_a, *self.nodes_b]

    def heal(self):
        """Reconnect whoever a test left disconnected (same token, so nginx
        pins it to the same instance) and let the reconnects' events pass."""
        for client in self.everyone:
            if isinstance(client, UiListener):
                if not client.alive:
                    client.restart()
            elif not client.connected or client.transports:
                client.transports = None
                client.disconnect()
                mark = client.events.mark()
                client.connect_to_socket()
                client.events.wait_for(lambda evs, m=mark: ("sync", None) in evs[m:], what="sync")
        for client, instance in self.placement.items():
            assert self.dep.instance_of(client.authorization) == instance, (
                f"{client.label} is no longer pinned to instance {instance}")
        # always: clients a test closed in its last moments are still
        # announcing their departure (node-offline, left messages)
        time.sleep(SETTLE)

    def close(self):
        for c in self.everyone:
            try:
                c.close()
            except Exception:
                pass


class Expect(e2e_expect.Expect):
    """e2e_expect.Expect; the nodes' pings (every 10 s) are not compared."""

    IGNORED = ("ping",)
