"""Drop-in proof: vantage6-server 4.15.2 and vantage6-node 4.15.2's socket code
against three v6-socketio instances behind nginx.

Each test asserts exactly who received what (`Expect.exactly`): a missing,
wrong or extra event at any client fails it. World (deployment.World):
collaboration A has nodes a0, a1, a2 on instances 0, 1, 2 and UI user-a on
instance 1; collaboration B has nodes b0, b1 (instances 0, 2) and UI user-b
(instance 2).
"""
from __future__ import annotations

import time

import jwt
import pytest
import requests
from vantage6.common.task_status import TaskStatus

from clients import StubNodeWorker
from deployment import SETTLE, Expect, joined, left, node_status
from harness import wait_until
from rest import create_task, runs_of_task


def a_room_events_for_connect(node: StubNodeWorker, collab) -> list:
    """What the others in a node's collaboration room receive when it connects."""
    return [("node-online", node_status(node)), joined(node, collab.room)]


def own_connect_events(node: StubNodeWorker, collab) -> list:
    """What a connecting node receives itself: sync and its own join messages
    (the all_nodes room gets no message)."""
    return [("sync", None), joined(node, collab.room),
            joined(node, collab.org_room(node.account.organization_id))]


def test_node_connect(world, deployment):
    a0, a1, a2 = world.nodes_a
    marks = Expect.mark(world.everyone)
    # a fresh node of collaboration A, on instance 2
    a3 = deployment.extra_node(world.a, "a3", 2)
    try:
        marks[a3] = 0
        Expect.exactly(marks, {
            a3: own_connect_events(a3, world.a),
            a0: a_room_events_for_connect(a3, world.a),
            a1: a_room_events_for_connect(a3, world.a),
            a2: a_room_events_for_connect(a3, world.a),
            world.user_a: a_room_events_for_connect(a3, world.a),
        })
        assert deployment.admin.node_status(a3.account.id) == "online"
        # the node's own reaction to sync (share_node_details): its configuration is stored
        config = wait_until(lambda: deployment.admin.get(f"node/{a3.account.id}")["config"],
                            what="node config stored")
        assert {"key": "database_labels", "value": "default"} in [
            {"key": c["key"], "value": c["value"]} for c in config]
    finally:
        a3.close()


def _task_for(world, collab, orgs):
    return create_task(world.user_a.api if collab is world.a else world.user_b.api, collab, orgs)


def test_task_creation_reaches_every_node_of_the_collaboration(world, deployment):
    marks = Expect.mark(world.everyone)
    task = _task_for(world, world.a, world.orgs_a)
    new_task = ("new_task", {"id": task["id"], "parent_id": None})
    Expect.exactly(marks, {c: [new_task] for c in [*world.nodes_a, world.user_a]})
    # the real on_new_task fetched each node's open run through the REST API
    for node in world.nodes_a:
        node.queued_run(task["id"])
        assert {r["organization"]["id"] for r in node.queue if r["task"]["id"] == task["id"]} == {
            node.account.organization_id}


def test_kill_containers(world, deployment):
    task = _task_for(world, world.a, world.orgs_a)
    for node in world.nodes_a:
        node.queued_run(task["id"])
    runs = {r["organization"]["id"]: r for r in runs_of_task(world.user_a.api, task["id"])}
    marks = Expect.mark(world.everyone)
    world.user_a.api.post("kill/task", {"id": task["id"]})
    kill = ("kill_containers", {
        "kill_list": [{"task_id": task["id"], "run_id": r["id"], "organization_id": o}
                      for o, r in sorted(runs.items(), key=lambda kv: kv[1]["id"])],
        "collaboration_id": world.a.id,
    })
    # every node's real on_kill_containers reports its killed run with
    # algorithm_status_change, which the server relays with the task's job_id
    killed = [("algorithm_status_change", {
        "status": TaskStatus.KILLED.value, "run_id": runs[n.account.organization_id]["id"], "task_id": task["id"],
        "job_id": task["job_id"], "collaboration_id": world.a.id, "node_id": n.account.id,
        "organization_id": n.account.organization_id, "parent_id": None,
    }) for n in world.nodes_a]
    Expect.exactly(marks, {c: [kill, *killed] for c in [*world.nodes_a, world.user_a]})
    for node in world.nodes_a:
        assert task["id"] not in [r["task"]["id"] for r in node.running]


def test_kill_node_tasks(world, deployment):
    """kill_containers aimed at one node: every node of the collaboration
    receives it, only the named node's real handler kills and reports.

    vantage6 4.15.2's POST /kill/node/tasks answers 500 for every caller (its
    permission lookup raises AttributeError before it emits), so the event
    is then published the way that endpoint would, by `v6-socketio emit` on
    the same exchange."""
    target = world.nodes_a[2]
    task = _task_for(world, world.a, world.orgs_a)
    for node in world.nodes_a:
        node.queued_run(task["id"])
    running = list(target.running)  # this task's run and any earlier still running
    assert task["id"] in [r["task"]["id"] for r in running]
    others_killed = [list(n.killed_runs) for n in world.nodes_a[:2]]
    time.sleep(SETTLE)
    marks = Expect.mark(world.everyone)
    payload = {"node_id": target.account.id, "collaboration_id": world.a.id}
    api = world.user_a.api
    r = requests.post(f"{api.base}/kill/node/tasks", json={"id": target.account.id},
                      headers={"Authorization": api.authorization}, timeout=30)
    assert r.status_code in (200, 500), r.text
    if r.status_code == 500:
        deployment.emit(world.a.room, "kill_containers", payload)
    killed = [("algorithm_status_change", {
        "status": TaskStatus.KILLED.value, "run_id": run["id"], "task_id": run["task"]["id"],
        "job_id": run["task"]["job_id"], "collaboration_id": world.a.id,
        "node_id": target.account.id, "organization_id": target.account.organization_id,
        "parent_id": None}) for run in running]
    Expect.exactly(marks, {c: [("kill_containers", payload), *killed]
                           for c in [*world.nodes_a, world.user_a]})
    assert target.running == []
    # the other nodes' handlers saw the event and killed nothing
    assert [list(n.killed_runs) for n in world.nodes_a[:2]] == others_killed


def test_algorithm_status_change_relayed_with_job_id(world, deployment):
    task = _task_for(world, world.a, world.orgs_a)
    sender = world.nodes_a[0]
    run = sender.queued_run(task["id"])
    marks = Expect.mark(world.everyone)
    sender.status_change(run, "active")
    relayed = ("algorithm_status_change", {
        "status": "active", "run_id": run["id"], "task_id": task["id"], "job_id": task["job_id"],
        "collaboration_id": world.a.id, "node_id": sender.account.id,
        "organization_id": sender.account.organization_id, "parent_id": None,
    })
    # vantage6 emits to the collaboration room, the sender included
    Expect.exactly(marks, {c: [relayed] for c in [*world.nodes_a, world.user_a]})


def test_algorithm_log(world, deployment):
    task = _task_for(world, world.a, world.orgs_a)
    sender = world.nodes_a[1]
    run = sender.queued_run(task["id"])
    marks = Expect.mark(world.everyone)
    lines = [f"step {i}: ok" for i in range(5)]
    for line in lines:
        # what vantage6's TaskManager streams while a container runs
        sender.emit("algorithm_log", {"run_id": run["id"], "task_id": task["id"],
                                      "collaboration_id": world.a.id, "log": line})
    expected = [("algorithm_log", {"run_id": run["id"], "task_id": task["id"], "log": line})
                for line in lines]
    Expect.exactly(marks, {c: expected for c in [*world.nodes_a, world.user_a]})
    stored = world.user_a.api.get(f"run/{run['id']}")["log"]
    assert stored.splitlines() == lines


def test_node_disconnect(world, deployment):
    leaving = world.nodes_a[1]
    others = [n for n in world.nodes_a if n is not leaving]
    marks = Expect.mark(world.everyone)
    leaving.disconnect()
    after_leave = [("node-offline", node_status(leaving)), left(leaving, world.a.room)]
    # the departing node receives none of its own departure events
    Expect.exactly(marks, {c: after_leave for c in [*others, world.user_a]})
    wait_until(lambda: deployment.admin.node_status(leaving.account.id) == "offline",
               what="node offline in the database")
    assert deployment.admin.get(f"node/{leaving.account.id}")["config"] == []


def _token_like(token: str, secret: str, **changes) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    return jwt.encode(claims, secret, algorithm="HS256")


def _recover_from(world, node: StubNodeWorker, bad_token: str, signal_event: str):
    """Reconnects `node` with `bad_token` and checks, recipient by recipient,
    the whole recovery its real handler performs: the rejected connection
    gets `signal_event` and announces nothing; the handler's new connection
    is announced once, like any connect."""
    node.wait_synced()  # the first connect's on_sync, which a disconnect would cut off
    node.disconnect()
    wait_until(lambda: not node.connected, what="old socket closed")
    time.sleep(SETTLE)  # its departure announced
    marks = Expect.mark([*world.everyone, node])
    node.client._access_token = bad_token
    node.connect_to_socket()
    node.events.wait_for(lambda evs: ("sync", None) in evs[marks[node]:], timeout=30,
                         what=f"sync after {signal_event}")
    Expect.exactly(marks, {
        node: [(signal_event, None), *own_connect_events(node, world.a)],
        **{c: a_room_events_for_connect(node, world.a) for c in [*world.nodes_a, world.user_a]},
    })
    events = [e for e, _ in node.events.since(marks[node])]
    assert events.index(signal_event) < events.index("sync")
    assert node.client.token != bad_token


def test_expired_token_recovered_by_the_node_handler(world, deployment):
    node = deployment.extra_node(world.a, "expiring")
    try:
        past = int(time.time()) - 3600
        expired = _token_like(node.client.token, deployment.secret,
                              iat=past - 60, nbf=past - 60, exp=past)
        # on_expired_token: disconnect, refresh the token through the REST
        # API (the refresh token is still valid), reconnect, sync
        _recover_from(world, node, expired, "expired_token")
        assert jwt.decode(node.client.token, options={"verify_signature": False})["exp"] > time.time()
        _assert_delivers_again(world, node)
    finally:
        node.close()


def test_forged_token_recovered_by_the_node_handler(world, deployment):
    node = deployment.extra_node(world.a, "forged")
    try:
        forged = _token_like(node.client.token, "not-the-server-secret-but-just-as-long-0123456789")
        # on_invalid_token: disconnect, authenticate with the API key, reconnect
        _recover_from(world, node, forged, "invalid_token")
        _assert_delivers_again(world, node)
    finally:
        node.close()


def _assert_delivers_again(world, node):
    time.sleep(SETTLE)
    marks = Expect.mark([*world.everyone, node])
    task = _task_for(world, world.a, world.orgs_a)
    new_task = ("new_task", {"id": task["id"], "parent_id": None})
    Expect.exactly(marks, {c: [new_task] for c in [*world.nodes_a, node, world.user_a]})


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_transports(world, deployment, transport):
    """Nodes that only poll, or only use websockets, on every instance
    (same tokens, so nginx keeps each on its instance)."""
    nodes = world.nodes_a
    for n in nodes:
        n.transports = [transport]
        n.disconnect()
        mark = n.events.mark()
        n.connect_to_socket()
        n.events.wait_for(lambda evs, m=mark: ("sync", None) in evs[m:], what="sync")
    for n in nodes:
        assert n.socketIO.transport() == transport
        assert deployment.instance_of(n.authorization) == world.placement[n]
    time.sleep(SETTLE)
    marks = Expect.mark(world.everyone)
    task = _task_for(world, world.a, world.orgs_a)
    new_task = ("new_task", {"id": task["id"], "parent_id": None})
    Expect.exactly(marks, {c: [new_task] for c in [*nodes, world.user_a]})
    run = [n.queued_run(task["id"]) for n in nodes][1]  # every node queued; node 1 reports
    marks = Expect.mark(world.everyone)
    nodes[1].status_change(run, "completed")
    relayed = ("algorithm_status_change", {
        "status": "completed", "run_id": run["id"], "task_id": task["id"],
        "job_id": task["job_id"], "collaboration_id": world.a.id,
        "node_id": nodes[1].account.id, "organization_id": nodes[1].account.organization_id,
        "parent_id": None})
    Expect.exactly(marks, {c: [relayed] for c in [*nodes, world.user_a]})


def test_sigkill_instance_and_recovery_through_nginx(world, deployment):
    victim_index = 2
    victim = deployment.instances[victim_index]
    a2 = world.nodes_a[2]  # on the victim, like b1 and user-b
    b1 = world.nodes_b[1]
    survivors_a = world.nodes_a[:2]
    marks = Expect.mark(world.everyone)
    first_socket = a2.socketIO
    victim.kill()
    try:
        # python-socketio reconnects on its own; nginx re-hashes onto the others
        for node in (a2, b1):
            node.events.wait_for(lambda evs, m=marks[node]: ("sync", None) in evs[m:], timeout=40,
                                 what="sync after the instance died")
        assert a2.socketIO is first_socket  # the client's own reconnection, not a new client
        assert deployment.instance_of(a2.authorization) != victim_index
        # the others saw it come back (once: a SIGKILLed instance says nothing)
        Expect.exactly(marks, {
            **{n: a_room_events_for_connect(a2, world.a) for n in survivors_a},
            world.user_a: a_room_events_for_connect(a2, world.a),
            a2: own_connect_events(a2, world.a),
            b1: own_connect_events(b1, world.b),
            world.nodes_b[0]: a_room_events_for_connect(b1, world.b),
        }, ignore=("ping", "disconnect"))
        assert deployment.admin.node_status(a2.account.id) == "online"
        marks = Expect.mark([*world.nodes_a, *world.nodes_b, world.user_a])
        task = _task_for(world, world.a, world.orgs_a)
        new_task = ("new_task", {"id": task["id"], "parent_id": None})
        Expect.exactly(marks, {c: [new_task] for c in [*world.nodes_a, world.user_a]})
    finally:
        victim.start()
        # give the clients back their places for the next tests: once nginx
        # tries the restarted instance again, the same headers hash to it
        for client in (a2, b1, world.user_b):
            wait_until(lambda c=client: deployment.instance_of(c.authorization) == victim_index,
                       timeout=40, interval=0.5, what="nginx using the restarted instance")
        a2.disconnect()
        b1.disconnect()
