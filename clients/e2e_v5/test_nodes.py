"""vantage6-node 5.0.3's real NodeTaskNamespace on two v6-socketio instances,
with every REST event published by real HQ 5.0.3 through RabbitMQ.

Collaboration A: a0 and a2 on instance 0, a1 on instance 1, and a researcher
(a service-account user of a0's organisation) using HQ's REST API.
Collaboration B, the bystander: b0 on instance 1. Every delivery is asserted
exactly (who gets what, nobody else anything) and every database write is read
back from the database HQ and the instances share.
"""
from __future__ import annotations

import os
import time

import jwt
import pytest

from fleet import SETTLE, Expect, joined, left, node_status
from harness5 import wait_until
from rest5 import create_dataframe, create_session, create_task, runs_of_task

NODE_CONFIG = [("allowed_algorithms", "all"), ("database_labels", "default"),
               ("db_type_default", "csv")]


class World:
    def __init__(self, fleet):
        admin = fleet.admin
        self.orgs_a = [admin.organization("org-a") for _ in range(3)]
        self.orgs_b = [admin.organization("org-b")]
        self.a = admin.collaboration(self.orgs_a, "collab-a")
        self.b = admin.collaboration(self.orgs_b, "collab-b")
        self.researcher = admin.researcher(self.orgs_a[0])
        self.session = create_session(self.researcher, self.a)
        self.nodes_a = [fleet.node(self.a, org, inst, f"a{i}")
                        for i, (org, inst) in enumerate(zip(self.orgs_a, (0, 1, 0)))]
        self.b0 = fleet.node(self.b, self.orgs_b[0], 1, "b0")
        time.sleep(SETTLE)  # the join announcements pass

    @property
    def everyone(self):
        return [*self.nodes_a, self.b0]


@pytest.fixture(scope="module")
def world(fleet):
    w = World(fleet)
    yield w
    for n in w.everyone:  # later modules start from a quiet fleet
        n.close()
    time.sleep(SETTLE)


def test_connect_syncs_and_shares_node_details(world, fleet):
    for node in world.everyone:
        # the real on_sync: the open runs (REST), then node_info_update
        assert node.calls[:5] == ["authenticate", "obtain_new_token", "connect_to_socket",
                                  "sync_task_queue_with_HQ", "share_node_details"], node.calls
        first = node.events.since(0)
        assert first[0] == ("sync", None), first
        # its token is the stand-in's, for the Keycloak client HQ created
        claims = jwt.decode(node.client.token, options={"verify_signature": False})
        assert claims["sub"] == node.account.keycloak_id
        assert claims["vantage6_client_type"] == "node"
        assert claims["azp"] == f"{node.account.name}-node-client"
        wait_until(lambda n=node: fleet.nodeconfig(n.account.id) == NODE_CONFIG,
                   what=f"{node.label}'s node_info_update rows")
        assert fleet.node_db_status(node.account.id) == "online"
        collab = world.a if node in world.nodes_a else world.b
        assert joined(node, collab.room) in first
    # HQ's REST sees what the instances wrote
    body = fleet.admin.get(f"node/{world.nodes_a[1].account.id}")
    assert body["status"] == "online"
    assert sorted((c["key"], c["value"]) for c in body["config"]) == NODE_CONFIG


def test_new_task_update_reaches_every_node_of_the_collaboration(world, fleet):
    marks = Expect.mark(world.everyone)
    task = create_task(world.researcher, world.a, world.session, world.orgs_a)
    Expect.exactly(marks, {n: [("new_task_update", {"id": task["id"], "parent_id": None})]
                           for n in world.nodes_a})
    for node in world.nodes_a:
        assert f"get_task_and_add_to_queue({task['id']})" in node.calls
        run = node.queued_run(task["id"])
        assert run["organization"]["id"] == node.account.organization_id
    assert f"get_task_and_add_to_queue({task['id']})" not in world.b0.calls


def test_kill_task_reaches_the_nodes_and_their_status_changes_are_relayed(world, fleet):
    task = create_task(world.researcher, world.a, world.session, world.orgs_a)
    runs = {n: n.queued_run(task["id"]) for n in world.nodes_a}
    marks = Expect.mark(world.everyone)
    world.researcher.post("kill/task", {"id": task["id"]})
    kill = ("kill_containers", {
        "kill_list": [{"task_id": task["id"], "run_id": r["id"], "organization_id": org}
                      for r, org in sorted(((r, r["organization"]["id"]) for r in runs.values()),
                                           key=lambda x: x[0]["id"])],
        "collaboration_id": world.a.id})
    relayed = [("algorithm_status_change", {
        "status": "killed by user", "run_id": runs[n]["id"], "task_id": task["id"],
        "job_id": task["job_id"], "collaboration_id": world.a.id, "node_id": n.account.id,
        "organization_id": n.account.organization_id, "parent_id": None})
        for n in world.nodes_a]
    Expect.exactly(marks, {n: [kill, *relayed] for n in world.nodes_a})
    for node in world.nodes_a:
        assert [k.run_id for k in node.killed_runs] == [runs[node]["id"]]
    # the nodes' log PATCHes after the kill
    for node in world.nodes_a:
        wait_until(lambda n=node: fleet.db.query("SELECT status, log FROM run WHERE id = ?",
                                                 (runs[n]["id"],))
                   == [("killed by user", f"killed {runs[n]['id']}")],
                   what=f"{node.label}'s killed run and its log")


def test_kill_node_tasks_reaches_only_that_node(world, fleet):
    task = create_task(world.researcher, world.a, world.session, world.orgs_a)
    for n in world.nodes_a:
        n.queued_run(task["id"])
    target = world.nodes_a[1]
    others = [world.nodes_a[0], world.nodes_a[2]]
    # a node kill stops every algorithm the node runs: this task's and any
    # earlier open one's
    doomed = target.running
    assert task["id"] in [r["task"]["id"] for r in doomed], doomed
    before = {n: len(n.killed_runs) for n in others}
    marks = Expect.mark(world.everyone)
    world.researcher.post("kill/node/tasks", {"id": target.account.id})
    kill = ("kill_containers", {"node_id": target.account.id, "collaboration_id": world.a.id})
    expected = [kill]
    for run in doomed:
        common = {"run_id": run["id"], "task_id": run["task"]["id"],
                  "job_id": run["task"]["job_id"], "collaboration_id": world.a.id,
                  "node_id": target.account.id,
                  "organization_id": target.account.organization_id, "parent_id": None}
        expected += [
            # the node's socket event, relayed
            ("algorithm_status_change", {**common, "status": "killed by user"}),
            # its log PATCH: HQ publishes both REST events with the run's
            # unchanged status
            ("status_update", {"run_id": run["id"]}),
            ("algorithm_status_change", {**common, "status": run["status"]}),
        ]
    Expect.exactly(marks, {n: expected for n in world.nodes_a})
    assert sorted(k.run_id for k in target.killed_runs[-len(doomed):]) == sorted(
        r["id"] for r in doomed)
    assert {n: len(n.killed_runs) for n in others} == before
    for run in doomed:
        assert fleet.db.query("SELECT log FROM run WHERE id = ?", (run["id"],)) == [
            (f"killed {run['id']}",)]


def test_run_patch_publishes_status_update_and_algorithm_status_change(world, fleet):
    task = create_task(world.researcher, world.a, world.session, world.orgs_a)
    sender = world.nodes_a[2]
    run = sender.queued_run(task["id"])
    marks = Expect.mark(world.everyone)
    sender.client.run.patch(id_=run["id"], data={"status": "active"})
    Expect.exactly(marks, {n: [
        ("status_update", {"run_id": run["id"]}),
        ("algorithm_status_change", {
            "run_id": run["id"], "status": "active", "task_id": task["id"],
            "job_id": task["job_id"], "collaboration_id": world.a.id,
            "node_id": sender.account.id, "organization_id": sender.account.organization_id,
            "parent_id": None}),
    ] for n in world.nodes_a})
    assert fleet.db.query("SELECT status FROM run WHERE id = ?", (run["id"],)) == [("active",)]


def test_delete_dataframe_deletes_the_nodes_files_and_the_pending_rows(world, fleet):
    marks = Expect.mark(world.everyone)
    df = create_dataframe(world.researcher, world.session, world.orgs_a)
    extraction = df["last_session_task"]["id"]
    Expect.exactly(marks, {n: [("new_task_update", {"id": extraction, "parent_id": None})]
                           for n in world.nodes_a})
    # the extraction runs leave the dataframe's parquet file on every node
    files = {n: n.write_dataframe(world.session, df["name"]) for n in world.nodes_a}
    assert all(os.path.exists(f) for f in files.values())

    marks = Expect.mark(world.everyone)
    world.researcher.call("DELETE", f"session/dataframe/{df['id']}")
    Expect.exactly(marks, {n: [("delete_dataframe", {"df_name": df["name"],
                                                     "session_id": world.session})]
                           for n in world.nodes_a})
    for node, path in files.items():
        wait_until(lambda p=path: not os.path.exists(p), what=f"{node.label} deleted {path}")
    # every node answered dataframe_deleted: HQ's pending rows are gone
    wait_until(lambda: fleet.db.query(
        "SELECT node_id FROM dataframetobedeletedatnode WHERE dataframe_name = ?",
        (df["name"],)) == [], what="pending dataframe deletions removed")


def test_completed_run_announces_the_dependent_task(world, fleet):
    t1 = create_task(world.researcher, world.a, world.session, world.orgs_a)
    runs = {n: n.queued_run(t1["id"]) for n in world.nodes_a}
    marks = Expect.mark(world.everyone)
    t2 = create_task(world.researcher, world.a, world.session, world.orgs_a,
                     depends_on_ids=[t1["id"]])
    announce_t2 = ("new_task_update", {"id": t2["id"], "parent_id": None})
    Expect.exactly(marks, {n: [announce_t2] for n in world.nodes_a})
    assert fleet.db.query("SELECT task_id, depends_on_id FROM task_depends_on WHERE task_id = ?",
                          (t2["id"],)) == [(t2["id"], t1["id"])]
    sender = world.nodes_a[1]
    marks = Expect.mark(world.everyone)
    sender.status_change(runs[sender], "completed")
    # HQ 5.0.3's handler: the dependent task first, then the relay
    completed = ("algorithm_status_change", {
        "status": "completed", "run_id": runs[sender]["id"], "task_id": t1["id"],
        "job_id": t1["job_id"], "collaboration_id": world.a.id, "node_id": sender.account.id,
        "organization_id": sender.account.organization_id, "parent_id": None})
    Expect.exactly(marks, {n: [announce_t2, completed] for n in world.nodes_a})
    for node in world.nodes_a:
        wait_until(lambda n=node: n.count(f"get_task_and_add_to_queue({t2['id']})") == 2,
                   what=f"{node.label} fetched the dependent task twice")


def test_pending_delete_dataframe_reaches_the_reconnecting_node(world, fleet):
    df = create_dataframe(world.researcher, world.session, world.orgs_a)
    wait_until(lambda: all(f"get_task_and_add_to_queue({df['last_session_task']['id']})"
                           in n.calls for n in world.nodes_a), what="extraction task fetched")
    files = {n: n.write_dataframe(world.session, df["name"]) for n in world.nodes_a}
    away = world.nodes_a[1]  # instance 1
    present = [world.nodes_a[0], world.nodes_a[2]]  # instance 0
    marks = Expect.mark(world.everyone)
    away.close()
    Expect.exactly(marks, {n: [("node-offline", node_status(away)), left(away, world.a.room)]
                           for n in present})

    marks = Expect.mark(world.everyone)
    world.researcher.call("DELETE", f"session/dataframe/{df['id']}")
    instruction = ("delete_dataframe", {"df_name": df["name"], "session_id": world.session})
    Expect.exactly(marks, {n: [instruction] for n in present})
    pending = "SELECT node_id FROM dataframetobedeletedatnode WHERE dataframe_name = ?"
    wait_until(lambda: fleet.db.query(pending, (df["name"],)) == [(away.account.id,)],
               what="only the absent node's deletion pending")
    assert [os.path.exists(files[n]) for n in world.nodes_a] == [False, True, False]

    # it comes back (a restart: a new token): its own instruction, after its
    # rooms, to its socket only
    away.client.obtain_new_token()
    marks = Expect.mark(world.everyone)
    away.connect_to_socket()
    Expect.exactly(marks, {
        away: [("sync", None), joined(away, world.a.room),
               joined(away, f"{world.a.room}_organization_{away.account.organization_id}"),
               instruction],
        **{n: [("node-online", node_status(away)), joined(away, world.a.room)] for n in present},
    })
    wait_until(lambda: not os.path.exists(files[away]), what=f"{away.label} deleted its file")
    wait_until(lambda: fleet.db.query(pending, (df["name"],)) == [],
               what="the reconnected node's pending deletion removed")


def test_ping_recovers_a_node_the_offline_sweep_caught(world, fleet):
    node = world.nodes_a[0]
    others = [n for n in world.nodes_a if n is not node]
    shared = node.count("share_node_details")
    # what HQ's node-status worker writes for a node whose ping came late
    fleet.db.execute("UPDATE authenticatable SET status = 'offline' WHERE id = ?",
                     (node.account.id,))
    marks = Expect.mark(world.everyone)
    node.socketIO.emit("ping", namespace="/tasks")  # Node.__socket_ping_worker
    online = ("node-online", node_status(node))
    Expect.exactly(marks, {
        # the recovering socket is still in its rooms: it hears its own
        # node-online once per announced room (collaboration, organisation);
        # HQ 5.0.3 sends it once per entry of its grown room list (6 times)
        node: [("sync", None), online, online, joined(node, world.a.room),
               joined(node, f"{world.a.room}_organization_{node.account.organization_id}")],
        **{n: [("node-online", node_status(node)), joined(node, world.a.room)] for n in others},
    })
    node.wait_calls("share_node_details", shared + 1)
    assert fleet.node_db_status(node.account.id) == "online"
    assert fleet.db.query("SELECT last_seen FROM authenticatable WHERE id = ?",
                          (node.account.id,))[0][0] is not None
    wait_until(lambda: fleet.nodeconfig(node.account.id) == NODE_CONFIG, what="node details")
    # the recovery did not add rooms: its departure is announced once per room
    marks = Expect.mark(world.everyone)
    node.close()
    Expect.exactly(marks, {n: [("node-offline", node_status(node)), left(node, world.a.room)]
                           for n in others})
    marks = Expect.mark(world.everyone)
    node.connect_to_socket()
    Expect.exactly(marks, {
        node: [("sync", None), joined(node, world.a.room),
               joined(node, f"{world.a.room}_organization_{node.account.organization_id}")],
        **{n: [("node-online", node_status(node)), joined(node, world.a.room)] for n in others},
    })


def test_expired_token_relogin_reconnects_and_syncs(world, fleet, figures):
    node = world.nodes_a[2]
    others = [n for n in world.everyone if n is not node]
    marks = Expect.mark(others)
    node.close()
    Expect.exactly(marks, {n: [("node-offline", node_status(node)), left(node, world.a.room)]
                           for n in world.nodes_a if n is not node})
    # a Keycloak token that expired 30 s ago (beyond HQ's 10 s leeway, within
    # python-keycloak's 60 s validation leeway)
    fleet.kc.lifetime = -30
    try:
        node.client.obtain_new_token()
    finally:
        fleet.kc.lifetime = 300
    calls, mark, t0 = len(node.calls), node.events.mark(), time.monotonic()
    marks = Expect.mark(others)
    node.connect_to_socket()
    # the real on_expired_token: disconnect, new token, connect, sync; then the
    # new socket's `sync`: sync again and node_info_update
    node.wait_calls("share_node_details", node.count("share_node_details") + 1)
    figures(f"expired token -> re-login -> synced: {time.monotonic() - t0:.2f} s")
    seq = node.calls[calls:]
    assert seq[:3] == ["connect_to_socket", "obtain_new_token", "connect_to_socket"], seq
    assert sorted(seq[3:]) == ["share_node_details", "sync_task_queue_with_HQ",
                               "sync_task_queue_with_HQ"], seq
    got = [e for e, _ in node.events.since(mark)]
    assert got[0] == "expired_token" and "sync" in got[1:], got
    assert len(node.sockets) >= 2 and node.connected and not node.sockets[-2].connected
    Expect.exactly(marks, {n: [("node-online", node_status(node)), joined(node, world.a.room)]
                           for n in world.nodes_a if n is not node})
    assert fleet.node_db_status(node.account.id) == "online"
    # the new socket is identified: it gets the collaboration's events
    marks = Expect.mark(world.everyone)
    task = create_task(world.researcher, world.a, world.session, world.orgs_a)
    Expect.exactly(marks, {n: [("new_task_update", {"id": task["id"], "parent_id": None})]
                           for n in world.nodes_a})
    assert len(runs_of_task(world.researcher, task["id"])) == 3
