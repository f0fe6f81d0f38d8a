"""A fleet in the middle of a migration: vantage6 4.15.2's own Flask-SocketIO
(the REST server process, which also serves /socket.io/) keeps some nodes,
v6-socketio instances behind nginx serve the others; both sit on the same
RabbitMQ exchange and database.

Collaboration M: f0 and f1 on vantage6's Flask-SocketIO, r0 (instance 0)
and r1 (instance 2) on v6-socketio, UI user-m on instance 1. The world's
collaborations A and B are bystanders.

vantage6's own server keeps its 4.15.2 behaviour here, and the assertions
say so: it sends node-online / node-offline to every room of the node,
`all_nodes` included, so every node of the fleet (any collaboration, any
server) hears about Flask-served nodes, and a node in both `all_nodes` and
the collaboration room hears it twice. v6-socketio sends these to the
collaboration rooms only (README, "Differences").
"""
from __future__ import annotations

import time

from clients import StubNodeWorker
from deployment import SETTLE, Expect, joined, left, node_status
from harness import wait_until
from rest import Api, create_task


def _flask_node(deployment, collab, org, label) -> StubNodeWorker:
    """A node configured with vantage6's own server address (no nginx)."""
    account = deployment.admin.node(collab, org)
    node = StubNodeWorker(account, deployment.vantage6.url, label=label)
    node.start()
    node.events.wait_for(lambda evs: ("sync", None) in evs, what=f"{label} sync from Flask-SocketIO")
    return node


def test_mixed_fleet_with_vantage6_flask_socketio(world, deployment):
    admin = deployment.admin
    orgs = [admin.organization("org-m") for _ in range(4)]
    m = admin.collaboration(orgs, "collab-m")
    user = admin.user(orgs[0])
    bystanders = [*world.nodes_a, *world.nodes_b]
    clients = []
    try:
        user_m = deployment.user_on(user, 1, "user-m")
        clients.append(user_m)

        # f0 on Flask-SocketIO first
        marks = Expect.mark([*world.everyone, user_m])
        f0 = _flask_node(deployment, m, orgs[0], "f0")
        clients.append(f0)
        marks[f0] = 0
        Expect.exactly(marks, {
            f0: [("sync", None), joined(f0, m.room), joined(f0, m.org_room(orgs[0]))],
            user_m: [("node-online", node_status(f0)), joined(f0, m.room)],
            # vantage6's all_nodes leak reaches nodes of every collaboration
            **{n: [("node-online", node_status(f0))] for n in bystanders},
        })

        # r0 on v6-socketio: Flask-served f0 hears it through the exchange
        marks = Expect.mark([*world.everyone, user_m, f0])
        r0 = deployment.node_on(m, orgs[2], 0, label="r0")
        clients.append(r0)
        marks[r0] = 0
        Expect.exactly(marks, {
            r0: [("sync", None), joined(r0, m.room), joined(r0, m.org_room(orgs[2]))],
            f0: [("node-online", node_status(r0)), joined(r0, m.room)],
            user_m: [("node-online", node_status(r0)), joined(r0, m.room)],
        })

        # f1 on Flask-SocketIO: v6-served r0 hears it as vantage6 sends it
        marks = Expect.mark([*world.everyone, user_m, f0, r0])
        f1 = _flask_node(deployment, m, orgs[1], "f1")
        clients.append(f1)
        marks[f1] = 0
        online_f1 = ("node-online", node_status(f1))
        Expect.exactly(marks, {
            f1: [("sync", None), joined(f1, m.room), joined(f1, m.org_room(orgs[1]))],
            f0: [online_f1, online_f1, joined(f1, m.room)],
            r0: [online_f1, online_f1, joined(f1, m.room)],
            user_m: [online_f1, joined(f1, m.room)],
            **{n: [online_f1] for n in bystanders},
        })

        r1 = deployment.node_on(m, orgs[3], 2, label="r1")
        clients.append(r1)
        time.sleep(SETTLE)
        members = [f0, f1, r0, r1, user_m]

        # a task through the REST API reaches both servers' nodes
        api = Api(deployment.api_url, user_m.token)
        marks = Expect.mark([*world.everyone, *members])
        task = create_task(api, m, orgs)
        Expect.exactly(marks, {c: [("new_task", {"id": task["id"], "parent_id": None})]
                               for c in members})
        runs = {n: n.queued_run(task["id"]) for n in (f0, f1, r0, r1)}

        # algorithm_status_change handled by vantage6's Flask handler, relayed by v6-socketio
        for sender in (f0, r0):
            run = runs[sender]
            marks = Expect.mark([*world.everyone, *members])
            sender.status_change(run, "active")
            relayed = ("algorithm_status_change", {
                "status": "active", "run_id": run["id"], "task_id": task["id"],
                "job_id": task["job_id"], "collaboration_id": m.id, "node_id": sender.account.id,
                "organization_id": sender.account.organization_id, "parent_id": None})
            Expect.exactly(marks, {c: [relayed] for c in members})

        # algorithm_log from a Flask-served node reaches everyone, stored once
        run = runs[f1]
        marks = Expect.mark([*world.everyone, *members])
        f1.emit("algorithm_log", {"run_id": run["id"], "task_id": task["id"],
                                  "collaboration_id": m.id, "log": "from flask"})
        Expect.exactly(marks, {c: [("algorithm_log", {"run_id": run["id"], "task_id": task["id"],
                                                      "log": "from flask"})] for c in members})
        assert api.get(f"run/{run['id']}")["log"] == "from flask"

        # r1 leaves v6-socketio: Flask-served nodes are told once, like everyone
        marks = Expect.mark([*world.everyone, f0, f1, r0, user_m])
        r1.disconnect()
        gone = [("node-offline", node_status(r1)), left(r1, m.room)]
        Expect.exactly(marks, {c: gone for c in (f0, f1, r0, user_m)})

        # f1 leaves Flask-SocketIO: vantage6 tells every room of the node
        marks = Expect.mark([*world.everyone, f0, r0, user_m])
        f1.disconnect()
        offline_f1 = ("node-offline", node_status(f1))
        Expect.exactly(marks, {
            f0: [offline_f1, offline_f1, left(f1, m.room)],
            r0: [offline_f1, offline_f1, left(f1, m.room)],
            user_m: [offline_f1, left(f1, m.room)],
            **{n: [offline_f1] for n in bystanders},
        })
        wait_until(lambda: admin.node_status(f1.account.id) == "offline", what="f1 offline")
        wait_until(lambda: admin.node_status(r1.account.id) == "offline", what="r1 offline")
    finally:
        for c in clients:
            c.close()


def test_migration_upstream_with_flask_socketio_and_v6_socketio(world, deployment, tmp_path):
    """README "Migrating", step 3: one /socket.io/ upstream holding vantage6's
    own server and a v6-socketio instance, behind the same template. Nodes as
    vantage6 ships them (polling, then websocket) land on either and get the
    same events; vantage6 sets no instance cookie, so a session it holds
    relies on the Authorization hash for its handshake and upgrade."""
    from harness import Nginx, free_port

    flask_addr = f"127.0.0.1:{deployment.vantage6.port}"
    v6_addr = deployment.instances[0].addr
    nginx = Nginx(tmp_path, free_port(), [flask_addr, v6_addr],
                  [f"127.0.0.1:{deployment.vantage6.port}"], name="nginx-migration")
    nginx.start()
    admin = deployment.admin
    orgs = [admin.organization("org-mig") for _ in range(2)]
    collab = admin.collaboration(orgs, "collab-mig")
    nodes = []
    try:
        for org, target, label in ((orgs[0], flask_addr, "on-flask"), (orgs[1], v6_addr, "on-v6")):
            account = admin.node(collab, org)
            node = StubNodeWorker(account, nginx.url, label=label)
            for _ in range(60):
                node.authenticate()
                if nginx.upstream_of(node.authorization) == target:
                    break
            else:
                raise AssertionError(f"could not place {label} on {target}")
            node.connect_to_socket()
            node.events.wait_for(lambda evs: ("sync", None) in evs, what=f"{label} sync")
            nodes.append(node)
        on_flask, on_v6 = nodes
        time.sleep(SETTLE)
        assert on_flask.socketIO.transport() == on_v6.socketIO.transport() == "websocket"
        user = admin.user(orgs[0])
        api = Api.login(f"{nginx.url}/api", user.username, user.password)
        marks = Expect.mark([*world.everyone, *nodes])
        task = create_task(api, collab, orgs)
        Expect.exactly(marks, {n: [("new_task", {"id": task["id"], "parent_id": None})]
                               for n in nodes})
        wait_until(lambda: all(n.running for n in nodes), what="runs queued")
        for sender in nodes:
            run = sender.running[0]
            marks = Expect.mark([*world.everyone, *nodes])
            sender.status_change(run, "completed")
            relayed = ("algorithm_status_change", {
                "status": "completed", "run_id": run["id"], "task_id": task["id"],
                "job_id": task["job_id"], "collaboration_id": collab.id,
                "node_id": sender.account.id, "organization_id": sender.account.organization_id,
                "parent_id": None})
            Expect.exactly(marks, {n: [relayed] for n in nodes})
    finally:
        for n in nodes:
            n.close()
        nginx.stop()
