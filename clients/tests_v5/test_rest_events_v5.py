"""Events HQ 5.0.3's REST API emits (docs/vantage6-5x-socket.md §4), published on RabbitMQ the
way HQ publishes them: Flask-SocketIO over python-socketio 5.16.2's `KombuManager` on the
`flask-socketio` exchange, `data` as the argument list (`[payload]`). They must reach the
v6-socketio clients in the named room, and no one else."""
from __future__ import annotations

import pytest

from sio_testkit import expect_exact, quiesce
from support_v5 import HQPublisher


@pytest.fixture(scope="module")
def hq():
    return HQPublisher()


def rest_events(world):
    """(event, payload) as HQ 5.0.3's REST resources build them, for collaboration 1."""
    return {
        # POST /task (TaskPostBase.post_task)
        "new_task_update": {"id": world.dep.id, "parent_id": world.task1.id},
        # PATCH /run/<id> (after the save)
        "status_update": {"run_id": world.r_a.id},
        "algorithm_status_change": {
            "run_id": world.r_a.id, "status": "completed", "task_id": world.task1.id,
            "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id,
            "node_id": world.node_a1.id, "organization_id": world.org_a.id, "parent_id": None},
        # POST /kill/task
        "kill_containers": {"kill_list": [
            {"task_id": world.task1.id, "run_id": world.r_a.id, "organization_id": world.org_a.id},
            {"task_id": world.task1.id, "run_id": world.r_b.id, "organization_id": world.org_b.id}],
            "collaboration_id": world.c1.id},
        # POST /kill/node/tasks
        "kill_containers_node": {"node_id": world.node_a1.id, "collaboration_id": world.c1.id},
        # DELETE /session/dataframe/<id>
        "delete_dataframe": {"df_name": world.df1.name, "session_id": world.sess1.id},
    }


@pytest.mark.parametrize("name", ["new_task_update", "status_update", "algorithm_status_change",
                                  "kill_containers", "kill_containers_node", "delete_dataframe"])
def test_rest_event_reaches_the_collaboration_room(world, db, hq, connect_node, connect_user, name):
    a1 = connect_node(world.node_a1)
    b1 = connect_node(world.node_b1)
    c2 = connect_node(world.node_c2)
    glob = connect_user(world.u_glob)
    org = connect_user(world.u_org)  # organisation-scope: not in collaboration_<c1>
    quiesce(a1, b1, c2, glob, org)
    event = "kill_containers" if name == "kill_containers_node" else name
    payload = rest_events(world)[name]
    hq.emit(event, payload, room=f"collaboration_{world.c1.id}")
    ev = (event, payload)
    expect_exact({a1: [ev], b1: [ev], glob: [ev], c2: [], org: []})


def test_rest_event_to_an_organisation_subroom(world, db, hq, connect_node, connect_user):
    """A room of one organisation in a collaboration reaches that organisation only."""
    a1 = connect_node(world.node_a1)
    b1 = connect_node(world.node_b1)
    org = connect_user(world.u_org)
    glob = connect_user(world.u_glob)
    quiesce(a1, b1, org, glob)
    payload = {"id": world.dep.id, "parent_id": world.task1.id}
    hq.emit("new_task_update", payload,
            room=f"collaboration_{world.c1.id}_organization_{world.org_a.id}")
    ev = ("new_task_update", payload)
    expect_exact({a1: [ev], org: [ev], b1: [], glob: []})


def test_rest_event_for_the_other_collaboration(world, db, hq, connect_node, connect_user):
    a1 = connect_node(world.node_a1)
    c2 = connect_node(world.node_c2)
    col = connect_user(world.u_col)  # collaboration scope of org_a: in c1 and c2
    quiesce(a1, c2, col)
    payload = {"id": world.task2.id, "parent_id": None}
    hq.emit("new_task_update", payload, room=f"collaboration_{world.c2.id}")
    ev = ("new_task_update", payload)
    expect_exact({c2: [ev], col: [ev], a1: []})
