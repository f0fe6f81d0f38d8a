"""A whole vantage6 5.x fleet (Keycloak stand-in, RabbitMQ, database, HQ,
two v6-socketio instances) and the ways a test places nodes on it."""
from __future__ import annotations

import os
from pathlib import Path

import e2e_harness
from e2e_expect import SETTLE, Expect, joined, left, node_status  # noqa: F401  (re-exported)
from harness5 import (
    ADMIN_CLIENT,
    ADMIN_SECRET,
    ADMIN_USER,
    HQ,
    REALM,
    Broker,
    Database,
    SocketioInstance,
    free_port,
    write_hq_config,
)
from keycloak_standin import KeycloakStandIn
from nodes5 import Node5, use_task_files_root
from rest5 import Admin, Collaboration


class Fleet(e2e_harness.Deployment):
    def __init__(self, backend: str, workdir: Path, instances: int = 2):
        self.backend = backend
        self.workdir = workdir
        self.kc = KeycloakStandIn(REALM, admin_user=ADMIN_USER, admin_client=ADMIN_CLIENT,
                                  admin_secret=ADMIN_SECRET)
        self.db = Database(backend, workdir)
        self.broker = Broker()
        self.api_port = free_port()
        self.config = write_hq_config(workdir / "hq.yaml", db=self.db, broker=self.broker,
                                      api_port=self.api_port)
        self.hq = HQ(workdir, self.config, self.api_port, self.kc)
        self.instances = [SocketioInstance(workdir, self.config, free_port(), f"v6-socketio-{i}",
                                           self.kc) for i in range(instances)]
        self.admin: Admin | None = None
        self.nodes: list[Node5] = []
        self.task_files = workdir / "tasks"

    # --- life cycle ------------------------------------------------------
    def start(self):
        self.kc.start()
        # NodeClient reads the realm from the environment, as a node does
        os.environ["KEYCLOAK_REALM"] = REALM
        use_task_files_root(self.task_files)
        # HQ creates the 5.x tables, default roles and root user (init_db);
        # the instances find the generation from that schema.
        self.hq.start()
        for inst in self.instances:
            inst.start()
        self.admin = Admin(self.hq.api_url, self.kc.url)

    def processes(self):
        return [self.hq, *self.instances]

    def stop(self):
        for n in self.nodes:
            n.close()
        for inst in self.instances:
            inst.stop()
        self.hq.stop()
        self.drop_storage()
        self.kc.stop()

    # --- nodes -------------------------------------------------------------
    def socket_url(self, where) -> str:
        """`where`: an instance index, or "hq" for HQ's own Flask-SocketIO."""
        return self.hq.url if where == "hq" else self.instances[where].url

    def node(self, collab: Collaboration, organization_id: int, where, label: str,
             start: bool = True) -> Node5:
        """A node created through HQ's REST (POST /node), its real socket
        code connected to `where`; started: `sync` handled."""
        account = self.admin.node(collab, organization_id)
        node = Node5(account, self.hq.api_url, self.kc.url, self.socket_url(where), label)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def nodeconfig(self, node_id: int) -> list[tuple[str, str]]:
        return sorted(self.db.query("SELECT key, value FROM nodeconfig WHERE node_id = ?",
                                    (node_id,)))

    def node_db_status(self, node_id: int) -> str | None:
        rows = self.db.query("SELECT status FROM authenticatable WHERE id = ?", (node_id,))
        return rows[0][0] if rows else None
