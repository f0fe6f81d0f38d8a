"""A whole vantage6 5.x fleet (Keycloak stand-in, RabbitMQ, database, HQ,
two v6-socketio instances) and the ways a test places nodes on it."""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from harness5 import (
    ADMIN_CLIENT,
    ADMIN_SECRET,
    ADMIN_USER,
    DEFAULT_TIMEOUT,
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

SETTLE = 1.5  # seconds of silence after the last expected event


class Fleet:
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
        try:
            self.db.drop()
        except Exception as exc:  # leave the database behind, say so
            print(f"could not drop {self.db.name}: {exc}")
        self.broker.drop()
        self.kc.stop()

    def describe_failure(self) -> str:
        return "\n".join(f"--- {p.name} (alive={p.alive()}) ---\n{p.log_tail()}"
                         for p in self.processes())

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


def node_status(node: Node5) -> dict:
    """node-online / node-offline payload (HQ: id, name, org_id)."""
    return {"id": node.account.id, "name": node.account.name,
            "org_id": node.account.organization_id}


def joined(node: Node5, room: str):
    return ("message", f"Node <{node.account.name}> joined room <{room}>")


def left(node: Node5, room: str):
    return ("message", f"{node.account.name} left room {room}")


def canon(events) -> Counter:
    """Events as a multiset (order across rooms and servers is not something
    vantage6 promises)."""
    return Counter(json.dumps([e, d], sort_keys=True) for e, d in events)


class Expect:
    """Exactly who receives what after an action: `marks = Expect.mark(nodes)`
    before it, then `Expect.exactly(marks, {node: [events…]})`: every listed
    node must receive exactly these events (a multiset) and every other marked
    node nothing, within `timeout`, with `SETTLE` seconds of silence after."""

    @staticmethod
    def mark(nodes) -> dict:
        return {n: n.events.mark() for n in nodes}

    @staticmethod
    def exactly(marks: dict, expected: dict, timeout: float = DEFAULT_TIMEOUT,
                settle: float = SETTLE, ignore=()):
        for n in expected:
            if n not in marks:
                raise AssertionError(f"{n.label} was not marked before the action")
        want = {n: canon(expected.get(n, [])) for n in marks}

        def got(n):
            return canon([e for e in n.events.since(marks[n]) if e[0] not in ignore])

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(not (want[n] - got(n)) for n in marks):
                break
            time.sleep(0.05)
        time.sleep(settle)
        problems = []
        for n in marks:
            g = got(n)
            missing, extra = want[n] - g, g - want[n]
            if missing or extra:
                problems.append(f"{n.label}: missing {dict(missing)} extra {dict(extra)}")
        if problems:
            raise AssertionError("wrong deliveries:\n  " + "\n  ".join(problems))
