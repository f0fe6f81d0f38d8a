"""Two v6-socketio instances on one RabbitMQ and one database (issue 3, the
vantage6 path).

Both instances serve ``/tasks`` for the same vantage6 database (SQLite file or
PostgreSQL, like the rest of the suite) and share their rooms over the
``flask-socketio`` exchange in python-socketio 5.15.0's format (vantage6
4.15.2). The nodes of collaboration 1 are split over the instances; a node of
collaboration 2 and the users sit on the other one. Every expectation is the
exact list of events each client receives, so a missing, duplicated or leaked
delivery fails.

The events vantage6's REST API emits (``new_task``) come from outside any
instance: the ``v6-socketio emit`` command and a python write-only
``KombuManager`` (what the API's ``SocketIO(app, message_queue=...)``
publishes).
"""
from __future__ import annotations

import json
import subprocess

import pytest

import mq_support
from compat_support import (
    a1_status_payload, assert_same_events_any_order, heard_when_a1_connects, heard_when_a1_leaves,
    node_connect_sequence, serving,
)
from mq_support import AMQP_URL
from support import Recorder, ServerProcess, expect_exact, join_msg, quiesce, server_binary, wait_until

pytestmark = pytest.mark.broker  # uses RabbitMQ: runs in the broker shard (conftest.py)
broker = pytest.fixture(scope="module")(mq_support.broker_fixture)


@pytest.fixture(scope="module")
def pair(broker, db, jwt_secret, tmp_path_factory):
    """Instances A and B on RabbitMQ and the session's database."""
    workdir = tmp_path_factory.mktemp(f"mq-pair-{db.backend}")
    procs = [ServerProcess(workdir, db, jwt_secret, sweep_interval=2,
                           extra={"rabbitmq": {"uri": broker}}, name=f"mq-{name}-{db.backend}")
             for name in ("a", "b")]
    with serving(*procs, stop=mq_support.stop_serve):
        yield tuple(procs)


@pytest.fixture()
def on(pair, tokens, world):
    """``on(instance, entity)``: connect a node or user to instance A or B and
    consume (and check) its own connect sequence."""
    made: list[Recorder] = []
    a, b = pair
    for p in pair:
        p.assert_alive()

    def go(where: str, ent, *, kind: str) -> Recorder:
        srv = a if where == "A" else b
        rec = Recorder(srv.url, tokens.access(ent), label=f"{ent.name}@{where}")
        made.append(rec)
        rec.connect()
        if kind == "node":
            expected = node_connect_sequence(ent)
        else:
            expected = [join_msg("User", ent.name, r) for r in world.user_rooms(ent)]
        rec.wait_count(len(expected))
        quiesce(settle=0.05)  # a duplicate through the other instance would be here by now
        assert_same_events_any_order(
            rec.snapshot(), expected, f"{rec.label}: own connect sequence (each join message "
            "exactly once, also with a second instance on the exchange)")
        rec.clear()
        return rec

    yield go
    for rec in made:
        try:
            rec.disconnect()
        except Exception:
            pass
    for p in pair:
        p.assert_alive()


@pytest.fixture()
def fleet(world, on):
    """collab-1 nodes split: a1 on A, b1 on B; c2 (collab 2) on B; u_glob
    (global scope) on B, u_col (collaboration scope, org_a) on A."""
    r = {
        "a1": on("A", world.node_a1, kind="node"),
        "b1": on("B", world.node_b1, kind="node"),
        "c2": on("B", world.node_c2, kind="node"),
        "glob": on("B", world.u_glob, kind="user"),
        "col": on("A", world.u_col, kind="user"),
    }
    quiesce(*r.values())
    return r


def relayed_status(world, status="completed"):
    return ("algorithm_status_change", {
        "status": status, "run_id": world.r_a.id, "task_id": world.task1.id,
        "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id,
        "node_id": world.node_a1.id, "organization_id": world.org_a.id, "parent_id": None,
    })


def test_algorithm_status_change_reaches_the_collaboration_on_the_other_instance(world, fleet):
    f = fleet
    f["a1"].emit("algorithm_status_change", a1_status_payload(world, status="completed"))
    relayed = relayed_status(world)
    expect_exact({
        f["a1"]: [relayed],    # sender (A) gets its echo once
        f["col"]: [relayed],   # user on A
        f["b1"]: [relayed],    # collaboration node on B, with job_id from the database
        f["glob"]: [relayed],  # global user on B
        f["c2"]: [],           # other collaboration
    })


def test_algorithm_log_from_instance_b_reaches_instance_a(world, db, fleet):
    f = fleet
    f["b1"].emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_b.id,
                                   "task_id": world.task1.id, "log": "from B"})
    ev = ("algorithm_log", {"run_id": world.r_b.id, "task_id": world.task1.id, "log": "from B"})
    expect_exact({f["a1"]: [ev], f["col"]: [ev], f["b1"]: [ev], f["glob"]: [ev], f["c2"]: []})
    wait_until(lambda: db.run_log(world.r_b.id) == "line one\nfrom B",
               what="algorithm_log appended once (not once per instance)")


def _emit_cli(*args, config=None):
    source = ["--config", str(config)] if config else ["--rabbitmq-uri", AMQP_URL]
    cmd = [str(server_binary()), "emit", *source, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"{cmd} exited with {res.returncode}:\n{res.stdout}\n{res.stderr}"


def test_emit_command_new_task_reaches_every_node_of_the_collaboration(world, fleet):
    f = fleet
    payload = {"id": world.task1.id, "parent_id": None}
    _emit_cli("--room", f"collaboration_{world.c1.id}", "--event", "new_task",
              "--data", json.dumps(payload))
    ev = ("new_task", payload)
    expect_exact({f["a1"]: [ev], f["b1"]: [ev], f["glob"]: [ev], f["col"]: [ev], f["c2"]: []})


def test_emit_command_room_list_delivers_once_per_client(world, fleet, pair):
    f = fleet
    payload = {"id": world.task2.id, "parent_id": world.task1.id}
    # the vantage6 configuration file of an instance gives the broker and the format
    _emit_cli("--room", f"collaboration_{world.c1.id}", "--room", f"collaboration_{world.c2.id}",
              "--event", "new_task", "--data", json.dumps(payload), config=pair[0].config_path)
    ev = ("new_task", payload)
    # u_glob and u_col are in both rooms: the union, each client once
    expect_exact({f["a1"]: [ev], f["b1"]: [ev], f["c2"]: [ev], f["glob"]: [ev], f["col"]: [ev]})


@pytest.mark.parametrize("emitter", ["kombu_write_only", "flask_socketio_no_app"])
def test_python_write_only_emitter_new_task(emitter, world, fleet):
    """vantage6's REST API side: python-socketio 5.15.0 publishing on the
    flask-socketio exchange without serving any client."""
    f = fleet
    payload = {"id": world.task1.id, "parent_id": None}
    room = f"collaboration_{world.c1.id}"
    if emitter == "kombu_write_only":
        import socketio

        mgr = socketio.KombuManager(AMQP_URL, channel="flask-socketio", write_only=True)
        try:
            mgr.emit("new_task", payload, namespace="/tasks", room=room)
        finally:
            mgr.publisher_connection.release()
    else:
        from flask_socketio import SocketIO

        sio = SocketIO(message_queue=AMQP_URL, async_mode="threading")
        try:
            sio.emit("new_task", payload, namespace="/tasks", to=room)
        finally:
            sio.server.manager.publisher_connection.release()
    ev = ("new_task", payload)
    expect_exact({f["a1"]: [ev], f["b1"]: [ev], f["glob"]: [ev], f["col"]: [ev], f["c2"]: []})


def test_node_connect_and_disconnect_on_a_are_seen_on_b(world, db, on):
    # observers on B
    o = {
        "b1": on("B", world.node_b1, kind="node"),
        "c2": on("B", world.node_c2, kind="node"),
        "glob": on("B", world.u_glob, kind="user"),
        "org": on("B", world.u_org, kind="user"),
    }
    quiesce(*o.values())
    a1 = world.node_a1

    rec = on("A", a1, kind="node")
    expect_exact({rec: [], **heard_when_a1_connects(world, o)})
    assert db.auth_row(a1.id)[0] == "online"

    rec.disconnect()
    expect_exact(heard_when_a1_leaves(world, o))
    wait_until(lambda: db.auth_row(a1.id)[0] == "offline", what="node_a1 offline after disconnect on A")


def test_instances_dropped_no_message_as_invalid(pair):
    """After the tests above: both instances understood every message they
    received and no publish failed."""
    for p in pair:
        m = {name: value for name, _, value in p.metrics() if name.startswith("v6_socketio_broker_")}
        assert m.get("v6_socketio_broker_received_total", 0) > 0, m
        assert m.get("v6_socketio_broker_invalid_total") == 0, m
        assert m.get("v6_socketio_broker_publish_errors_total") == 0, m
        assert m.get("v6_socketio_broker_connected") == 1, m


def test_graceful_stop_deletes_the_instance_queue(broker, db, jwt_secret, tmp_path_factory):
    """SIGTERM: the instance closes its adapter, which deletes its own queue
    (adapter README: "A graceful close deletes it"); otherwise every restart
    leaves a queue that collects the whole exchange's traffic for x-expires
    (5 minutes)."""
    srv = ServerProcess(tmp_path_factory.mktemp("mq-stop"), db, jwt_secret,
                        extra={"rabbitmq": {"uri": broker}}, name=f"mq-stop-{db.backend}")
    try:
        srv.start()
        queue = mq_support.serve_queue(srv)
        assert queue, "the instance did not log its queue:\n" + srv.log_tail(10)
        assert mq_support.queue_exists(queue)
        srv.stop()
        assert srv.proc.returncode == 0, f"exit status {srv.proc.returncode} after SIGTERM"
        wait_until(lambda: not mq_support.queue_exists(queue), timeout=3,
                   what=f"queue {queue} to be deleted after a graceful stop")
    finally:
        mq_support.stop_serve(srv)
