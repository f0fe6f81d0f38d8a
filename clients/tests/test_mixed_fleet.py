"""Mixed fleet (issue 3): python-socketio servers and Rust servers on one
RabbitMQ exchange, clients on both sides.

The python side is clients/mq_server.py: ``socketio.Server`` with
``socketio.KombuManager(url, channel=...)``, exactly what Flask-SocketIO builds
for ``SocketIO(app, message_queue='amqp://…')``. Two fleets:

* **v6-socketio** (``test_v6_*``, vantage6 semantics, on the test database):
  two python-socketio servers on the ``flask-socketio`` exchange next to a
  ``v6-socketio serve`` with the matching ``message_queue_format``: 5.15.0
  from clients/.venv with ``legacy`` (what vantage6 4.15.2 runs) and 5.18.1
  from clients/.venv-sio518 with ``args``. The second python server is the
  reference: a Rust-connected client must receive exactly what a client of
  another python host of the same version receives (python-socketio <= 5.15.0
  carries the data as one value, so several arguments arrive remotely as one
  list, and a tuple holding bytes cannot be published at all).
* **generic** (``test_518_*``): a python-socketio 5.18.1 server
  from clients/.venv-sio518 next to the adapter crate's generic socketioxide
  server (``cluster_node`` of the ``cluster_processes`` test binary: namespace
  ``/cluster``, an ``op`` event running adapter operations), on an exchange
  of its own.
* **Rust -> python** (``test_rust_*``): the same node with the python data
  format of its peer (``SIO_AMQP_NODE_PY_FORMAT``) and required python acks
  (``SIO_AMQP_NODE_WAIT_PY_ACKS=1``), next to python-socketio 5.18.1
  (``args``) and 5.15.0 (``legacy``): several arguments, binary data, acks.

Clients record ``(event, [arg, ...])`` and ack every event with
``"ack", <label>, <event>``. Every check compares the exact list each client
received after a quiet period: a missing, duplicated or leaked delivery fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid

import pytest

import mq_support
from mq_support import AMQP_URL, CLUSTER_NS, VENV_515, VENV_518, AckRecorder, PyServer, RustNode, b
from skip_policy import skip_by_design
from support import (
    ServerProcess, Unordered, World, expect_exact, join_msg, left_msg, node_status_payload, quiesce,
    server_binary,
)

pytestmark = pytest.mark.broker  # uses RabbitMQ: runs in the broker shard (conftest.py)
broker = pytest.fixture(scope="module")(mq_support.broker_fixture)


def args_form(events):
    """support's (event, data) expectations as (event, [data])."""
    return [(e, [] if d is None else [d]) for e, d in events]


# ===========================================================================
# python-socketio servers + v6-socketio serve with the matching
# message_queue_format: 5.15.0 / legacy (vantage6 4.15.2) and 5.18.1 / args
# ===========================================================================
FLEETS = {
    "sio5.15.0-legacy": ("5.15.0", "legacy", VENV_515),
    "sio5.18.1-args": ("5.18.1", "args", VENV_518),
}


# The database is not what these tests are about: they run on the first
# backend of the session only (test_multi_instance.py covers both).
FIRST_BACKEND = next(b for b in os.environ.get("V6_TEST_BACKENDS", "sqlite,postgres").split(",") if b)


def start_all(processes, cleanup):
    """Starts `processes` in order; if one fails, stops those that started,
    runs `cleanup` and fails the test."""
    started = []
    try:
        for p in processes:
            p.start()
            started.append(p)
    except Exception as exc:
        for p in started:
            p.stop()
        cleanup()
        pytest.fail(f"mixed fleet did not start: {exc}")


@pytest.fixture(scope="module", params=list(FLEETS))
def v6fleet(request, broker, db, jwt_secret, tmp_path_factory):
    """(version, format, v6-socketio serve, python server P, python reference server Q)."""
    if db.backend != FIRST_BACKEND:
        skip_by_design(f"mixed-fleet tests run on the {FIRST_BACKEND} backend only")
    version, fmt, python = FLEETS[request.param]
    workdir = tmp_path_factory.mktemp(f"mixed-{db.backend}-{fmt}")
    v6 = ServerProcess(workdir, db, jwt_secret, name=f"mixed-v6-{db.backend}-{fmt}", extra={
        "rabbitmq": {"uri": broker},
        "v6_socketio": {"ip": "127.0.0.1", "sweep_interval": 2, "message_queue_format": fmt},
    })
    py = PyServer(python, label=f"py-{version}")
    ref = PyServer(python, label=f"py-{version}-reference")
    start_all((v6, py, ref), cleanup=lambda: mq_support.stop_serve(v6))
    assert py.version == version and ref.version == version, (py.version, ref.version)
    yield version, fmt, v6, py, ref
    py.stop()
    ref.stop()
    mq_support.stop_serve(v6)


@pytest.fixture()
def lf(v6fleet, world, tokens):
    """Clients of the fleet.

    On v6-socketio: nodes a1, b1 (collaboration 1) and c2 (collaboration 2).
    On P: p1 in collaboration_<c1>, p2 in collaboration_<c2>, p0 in no room.
    On Q (reference python host): q1 in collaboration_<c1>.
    """
    version, fmt, v6, py, ref = v6fleet
    v6.assert_alive()
    made = []
    c1, c2 = f"collaboration_{world.c1.id}", f"collaboration_{world.c2.id}"

    def node(n):
        rec = AckRecorder(v6.url, tokens.access(n), label=n.name, transports=["websocket"])
        made.append(rec)
        rec.connect()
        rec.wait_count(1 + len(World.node_public_rooms(n)))
        return rec

    def pyclient(server, label, room):
        rec = AckRecorder(server.url, label=label, transports=["polling"])
        made.append(rec)
        rec.connect()
        if room:
            server.cmd("enter_room", sid=rec.sid, room=room)
        return rec

    r = {"a1": node(world.node_a1), "b1": node(world.node_b1), "c2": node(world.node_c2),
         "p1": pyclient(py, "p1", c1), "p2": pyclient(py, "p2", c2), "p0": pyclient(py, "p0", None),
         "q1": pyclient(ref, "q1", c1)}
    quiesce(*r.values())
    r.update(version=version, format=fmt, v6=v6, py=py, ref=ref, room1=c1, room2=c2)
    yield r
    for rec in made:
        try:
            rec.disconnect()
        except Exception:
            pass
    v6.assert_alive()


def test_v6_python_emit_reaches_rust_clients_of_the_room(lf):
    payload = {"id": 41, "parent_id": None}
    lf["py"].emit("new_task", payload, to=lf["room1"])
    ev = [("new_task", [payload])]
    expect_exact({lf["a1"]: ev, lf["b1"]: ev, lf["p1"]: ev, lf["q1"]: ev,
                  lf["c2"]: [], lf["p2"]: [], lf["p0"]: []})


def test_v6_python_emit_room_list_and_skip_sid(world, lf):
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    # a room list: the union, each client once (a1 via its organisation subroom)
    lf["py"].emit("kill_containers", {"collaboration_id": world.c2.id}, to=[c1_orga, lf["room2"]])
    ev = [("kill_containers", [{"collaboration_id": world.c2.id}])]
    expect_exact({lf["a1"]: ev, lf["c2"]: ev, lf["p2"]: ev,
                  lf["b1"]: [], lf["p1"]: [], lf["q1"]: [], lf["p0"]: []})
    # skip_sid names a client of the Rust instance
    lf["py"].emit("status_update", {"run_id": 5}, to=lf["room1"], skip_sid=lf["a1"].sid)
    ev = [("status_update", [{"run_id": 5}])]
    expect_exact({lf["b1"]: ev, lf["p1"]: ev, lf["q1"]: ev,
                  lf["a1"]: [], lf["c2"]: [], lf["p2"]: [], lf["p0"]: []})
    # a list of sids to skip, one of each server
    lf["py"].emit("status_update", {"run_id": 6}, to=lf["room1"],
                  skip_sid=[lf["b1"].sid, lf["p1"].sid])
    ev = [("status_update", [{"run_id": 6}])]
    expect_exact({lf["a1"]: ev, lf["q1"]: ev, lf["b1"]: [], lf["p1"]: [], lf["c2"]: []})


def test_v6_python_emit_to_a_rust_sid(lf):
    lf["py"].emit("sync", to=lf["b1"].sid)
    expect_exact({lf["b1"]: [("sync", [])], lf["a1"]: [], lf["p1"]: [], lf["q1"]: [], lf["p0"]: []})


def test_v6_binary_and_multiple_arguments_arrive_as_on_a_python_peer(lf):
    """Rust-connected clients get exactly what the reference python host's
    client gets. 5.15.0 publishes the data as one value: several arguments
    arrive remotely as one list (and a tuple holding bytes cannot be
    published); 5.15.1+ carries the argument list."""
    blob = {"blob": b(b"\x00\x01\xfe\xff"), "n": 1}
    want_blob = {"blob": b"\x00\x01\xfe\xff", "n": 1}
    lf["py"].emit("bin", blob, to=lf["room1"])
    lf["py"].emit("multi", "a", 2, None, to=lf["room1"])
    lf["py"].emit("list", [1, 2], to=lf["room1"])
    lf["py"].emit("none", to=lf["room1"])
    local = [("bin", [want_blob]), ("multi", ["a", 2, None]), ("list", [[1, 2]]), ("none", [])]
    if lf["format"] == "legacy":
        remote = [("bin", [want_blob]), ("multi", [["a", 2, None]]), ("list", [[1, 2]]),
                  ("none", [])]
    else:
        lf["py"].emit("bins", b(b"\x07"), "x", {"k": b(b"zz")}, to=lf["room1"])
        bins = ("bins", [b"\x07", "x", {"k": b"zz"}])
        remote = local + [bins]
        local = local + [bins]
    expect_exact({lf["q1"]: remote, lf["a1"]: remote, lf["b1"]: remote, lf["p1"]: local,
                  lf["c2"]: [], lf["p0"]: []})


def test_v6_python_emit_with_callback_to_a_rust_client_gets_its_ack(lf):
    cid = lf["py"].emit("ask", {"q": 1}, to=lf["a1"].sid, callback=True)
    assert lf["py"].wait_callback(cid) == ["ack", lf["a1"].label, "ask"]
    # and the same through the reference python host, for comparison
    cid2 = lf["py"].emit("ask", {"q": 2}, to=lf["q1"].sid, callback=True)
    assert lf["py"].wait_callback(cid2) == ["ack", "q1", "ask"]
    expect_exact({lf["a1"]: [("ask", [{"q": 1}])], lf["q1"]: [("ask", [{"q": 2}])],
                  lf["b1"]: [], lf["p1"]: []})
    assert len(lf["py"].callbacks(cid)) == 1, "one ack, one callback message"


def test_v6_rust_algorithm_status_change_reaches_python_clients(world, lf):
    """A node on v6-socketio reports a status: the python servers' clients of
    the collaboration get the relayed payload as the one argument, as from a
    python peer of the same version."""
    lf["a1"].emit("algorithm_status_change", {
        "run_id": world.r_a.id, "task_id": world.task1.id, "collaboration_id": world.c1.id,
        "status": "active", "node_id": world.node_a1.id, "organization_id": world.org_a.id,
        "parent_id": None,
    })
    relayed = [("algorithm_status_change", [{
        "status": "active", "run_id": world.r_a.id, "task_id": world.task1.id,
        "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id,
        "node_id": world.node_a1.id, "organization_id": world.org_a.id, "parent_id": None,
    }])]
    expect_exact({lf["a1"]: relayed, lf["b1"]: relayed, lf["p1"]: relayed, lf["q1"]: relayed,
                  lf["c2"]: [], lf["p2"]: [], lf["p0"]: []})


def test_v6_rust_node_departure_and_arrival_reach_python_clients(world, lf, tokens):
    b1 = world.node_b1
    lf["b1"].disconnect()
    gone = args_form([left_msg(b1.name, lf["room1"]), ("node-offline", node_status_payload(b1))])
    expect_exact({lf["a1"]: gone, lf["p1"]: gone, lf["q1"]: gone,
                  lf["c2"]: [], lf["p2"]: [], lf["p0"]: []})

    again = AckRecorder(lf["v6"].url, tokens.access(b1), label="b1-again", transports=["websocket"])
    try:
        again.connect()
        back = args_form([("node-online", node_status_payload(b1)),
                          join_msg("Node", b1.name, lf["room1"])])
        expect_exact({lf["a1"]: back, lf["p1"]: back, lf["q1"]: back,
                      lf["c2"]: [], lf["p2"]: [], lf["p0"]: []})
    finally:
        again.disconnect()


def test_v6_emit_command_reaches_both_sides(world, lf):
    """``v6-socketio emit`` with the fleet's format: what vantage6's REST API
    publishes, read by python servers and v6-socketio alike."""
    payload = {"id": world.task1.id, "parent_id": None}
    cmd = [str(server_binary()), "emit", "--rabbitmq-uri", AMQP_URL, "--room", lf["room1"],
           "--event", "new_task", "--data", json.dumps(payload),
           "--message-queue-format", lf["format"]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"{cmd}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    ev = [("new_task", [payload])]
    expect_exact({lf["a1"]: ev, lf["b1"]: ev, lf["p1"]: ev, lf["q1"]: ev,
                  lf["c2"]: [], lf["p2"]: [], lf["p0"]: []})


def test_v6_python_room_operations_act_on_rust_sockets(world, lf):
    py, a1, b1 = lf["py"], lf["a1"], lf["b1"]
    room = f"extra-{uuid.uuid4().hex[:8]}"
    others = {lf[k]: [] for k in ("c2", "p1", "q1", "p0")}

    py.cmd("enter_room", sid=a1.sid, room=room)
    py.emit("hello", 1, to=room)
    expect_exact({a1: [("hello", [1])], b1: []} | others)

    py.cmd("enter_room", sid=b1.sid, room=room)
    py.cmd("leave_room", sid=a1.sid, room=room)
    py.emit("hello", 2, to=room)
    expect_exact({a1: [], b1: [("hello", [2])]} | others)

    py.cmd("enter_room", sid=a1.sid, room=room)
    py.emit("hello", 3, to=room)
    expect_exact({a1: [("hello", [3])], b1: [("hello", [3])]} | others)
    py.cmd("close_room", room=room)
    py.emit("hello", 4, to=room)
    expect_exact({a1: [], b1: []} | others)

    # disconnect a Rust-connected node from the python server
    # disconnect a Rust-connected node from the python server: v6-socketio
    # runs its disconnect handler (departure messages to the node's rooms)
    py.cmd("disconnect", sid=a1.sid)
    assert a1.disconnected.wait(5), "python disconnect(sid) did not disconnect the Rust client"
    assert b1.connected
    expect_exact({b1: args_form([left_msg(world.node_a1.name, lf["room1"]),
                                 ("node-offline", node_status_payload(world.node_a1))]),
                  lf["c2"]: [], lf["p0"]: []})


_WRITE_ONLY = """
import json, sys, socketio
url, channel, ns, room, sid = sys.argv[1:6]
mgr = socketio.KombuManager(url, channel=channel, write_only=True)
mgr.emit("new_task", {"id": 9, "parent_id": 3}, namespace=ns, room=room)
mgr.emit("kill_containers", {"node_id": 1}, namespace=ns, room=sid)
mgr.publisher_connection.release()
"""


def test_v6_write_only_emitter_reaches_both_sides(lf):
    """A python process that serves no client publishes on flask-socketio, as
    vantage6's REST API does. 5.15.0: Flask-SocketIO 5.6.1's
    ``SocketIO(message_queue=...)`` without an app, in this process; 5.18.1:
    ``KombuManager(write_only=True)`` in the 5.18.1 virtualenv."""
    if lf["format"] == "legacy":
        from flask_socketio import SocketIO

        sio = SocketIO(message_queue=AMQP_URL, async_mode="threading")
        try:
            sio.emit("new_task", {"id": 9, "parent_id": 3}, namespace="/tasks", to=lf["room1"])
            sio.emit("kill_containers", {"node_id": 1}, namespace="/tasks", to=lf["b1"].sid)
        finally:
            sio.server.manager.publisher_connection.release()
    else:
        res = subprocess.run(
            [str(VENV_518), "-c", _WRITE_ONLY, AMQP_URL, "flask-socketio", "/tasks",
             lf["room1"], lf["b1"].sid],
            capture_output=True, text=True, timeout=30,
        )
        assert res.returncode == 0, f"write-only emitter failed:\n{res.stdout}\n{res.stderr}"
    nt = ("new_task", [{"id": 9, "parent_id": 3}])
    kc = ("kill_containers", [{"node_id": 1}])
    expect_exact({lf["a1"]: [nt], lf["b1"]: Unordered([nt, kc]), lf["p1"]: [nt], lf["q1"]: [nt],
                  lf["c2"]: [], lf["p2"]: [], lf["p0"]: []})


def test_v6_instance_dropped_no_python_message_as_invalid(v6fleet):
    """After the tests above: every python message the instance received was
    understood (none counted invalid) and no publish failed."""
    v6 = v6fleet[2]
    m = {name: value for name, _, value in v6.metrics() if name.startswith("v6_socketio_broker_")}
    assert m.get("v6_socketio_broker_received_total", 0) > 0, m
    assert m.get("v6_socketio_broker_invalid_total") == 0, m
    assert m.get("v6_socketio_broker_publish_errors_total") == 0, m
    assert m.get("v6_socketio_broker_connected") == 1, m


def start_fleet(exchange, rust, py):
    """Starts the Rust node and the python server; on failure stops what
    started, deletes the exchange and fails the test."""
    start_all((rust, py), cleanup=lambda: mq_support.delete_exchange(exchange))


def stop_fleet(exchange, rust, py):
    py.stop()
    rust.stop()
    mq_support.delete_exchange(exchange)


# ===========================================================================
# python-socketio 5.18.1 (args format) + the adapter's socketioxide server
# ===========================================================================
@pytest.fixture(scope="module")
def modern(broker):
    """(Rust node, python 5.18.1 server) on an exchange of their own."""
    exchange = mq_support.unique("v6sio-test-mixed")
    rust = RustNode(exchange, label="rust")
    py = PyServer(VENV_518, channel=exchange, namespace=CLUSTER_NS, label="py-5.18.1")
    start_fleet(exchange, rust, py)
    assert py.version == "5.18.1", py.version
    yield rust, py, exchange
    stop_fleet(exchange, rust, py)


@contextlib.contextmanager
def four_clients(rust, py, room_b=False):
    """r1, r2 on the Rust node (websocket), p1, p2 on python (polling); room
    A = {r1, p1}, and with `room_b` room B = {r2}."""
    made = []

    def client(url, label, transports):
        rec = AckRecorder(url, namespace=CLUSTER_NS, label=label, transports=transports)
        made.append(rec)
        return rec.connect()

    r1 = client(rust.url, "r1", ["websocket"])
    r2 = client(rust.url, "r2", ["websocket"])
    p1 = client(py.url, "p1", ["polling"])
    p2 = client(py.url, "p2", ["polling"])
    clients = {"r1": r1, "r2": r2, "p1": p1, "p2": p2, "A": f"A-{uuid.uuid4().hex[:8]}"}
    r1.op(op="join", rooms=[clients["A"]])
    if room_b:
        clients["B"] = f"B-{uuid.uuid4().hex[:8]}"
        r2.op(op="join", rooms=[clients["B"]])
    py.cmd("enter_room", sid=p1.sid, room=clients["A"])
    try:
        yield clients
    finally:
        for rec in made:
            try:
                rec.disconnect()
            except Exception:
                pass
    assert rust.proc.poll() is None, "the Rust node died:\n" + "\n".join(rust.stderr[-20:])


@pytest.fixture()
def mf(modern):
    """r1, r2 on the Rust node, p1, p2 on python; room A = {r1, p1}, room B = {r2}."""
    rust, py, exchange = modern
    with four_clients(rust, py, room_b=True) as clients:
        yield {"rust": rust, "py": py, "exchange": exchange, **clients}


def test_518_python_emit_multiple_arguments_and_binary_reach_rust_clients(mf):
    py = mf["py"]
    py.emit("multi", "a", 2, None, to=mf["A"])
    py.emit("bin", b(b"\x01\x02"), "x", {"k": b(b"zz")}, to=mf["A"])
    py.emit("list", [1, 2], to=mf["A"])
    py.emit("none", to=mf["A"])
    want = [("multi", ["a", 2, None]), ("bin", [b"\x01\x02", "x", {"k": b"zz"}]),
            ("list", [[1, 2]]), ("none", [])]
    expect_exact({mf["r1"]: want, mf["p1"]: want, mf["r2"]: [], mf["p2"]: []})


def test_518_python_emit_room_list_skip_sid_and_broadcast(mf):
    py, r1, r2, p1, p2 = (mf[k] for k in ("py", "r1", "r2", "p1", "p2"))
    py.emit("rooms", 1, to=[mf["A"], mf["B"]])
    expect_exact({r1: [("rooms", [1])], r2: [("rooms", [1])], p1: [("rooms", [1])], p2: []})
    py.emit("skip", 2, to=[mf["A"], mf["B"]], skip_sid=r1.sid)
    expect_exact({r1: [], r2: [("skip", [2])], p1: [("skip", [2])], p2: []})
    py.emit("skip", 3, to=[mf["A"], mf["B"]], skip_sid=[r2.sid, p1.sid])
    expect_exact({r1: [("skip", [3])], r2: [], p1: [], p2: []})
    py.emit("everyone", {"n": 4}, skip_sid=p2.sid)
    ev = [("everyone", [{"n": 4}])]
    expect_exact({r1: ev, r2: ev, p1: ev, p2: []})
    py.emit("direct", 5, to=r2.sid)
    expect_exact({r1: [], r2: [("direct", [5])], p1: [], p2: []})


def test_518_python_emit_with_callback_to_a_rust_client_gets_its_ack(mf):
    py = mf["py"]
    cid = py.emit("ask", {"q": 1}, to=mf["r2"].sid, callback=True)
    assert py.wait_callback(cid) == ["ack", "r2", "ask"]
    expect_exact({mf["r2"]: [("ask", [{"q": 1}])], mf["r1"]: [], mf["p1"]: [], mf["p2"]: []})
    assert len(py.callbacks(cid)) == 1


def test_518_rust_emits_reach_python_clients(mf):
    r1, r2, p1, p2 = (mf[k] for k in ("r1", "r2", "p1", "p2"))
    # to a room of both sides (the namespace-wide operator includes the caller)
    r1.op(op="emit", event="room", data={"x": 1}, to=mf["A"])
    expect_exact({r1: [("room", [{"x": 1}])], p1: [("room", [{"x": 1}])], r2: [], p2: []})
    # room list, one list argument
    r2.op(op="emit", event="rooms", data=[1, 2], to=[mf["A"], mf["B"]])
    ev = [("rooms", [[1, 2]])]
    expect_exact({r1: ev, r2: ev, p1: ev, p2: []})
    # socket.broadcast(): everyone but the sender, on both sides
    r1.op(op="emit", event="bcast", data="hi", from_socket=True)
    ev = [("bcast", ["hi"])]
    expect_exact({r1: [], r2: ev, p1: ev, p2: ev})
    # to one python client's sid (a room on the python host)
    r2.op(op="emit", event="direct", data=5, to=p2.sid)
    expect_exact({r1: [], r2: [], p1: [], p2: [("direct", [5])]})


def test_518_rust_emit_with_ack_reaches_python_clients(mf):
    """emit_with_ack on the Rust node to a room of both sides: every client
    gets the event once, the Rust client's ack comes back, and the python
    client's ack (a ``callback`` message to the node's host) is never turned
    into an error or a duplicate. Python acks carry no socketioxide sid
    (``Sid::ZERO``); the node does not set ``wait_for_python_acks``, so its
    stream may end before the python ack is in: it is allowed, not required
    (required: test_rust_emit_with_ack_requires_the_python_clients_ack)."""
    r1, r2, p1, p2 = (mf[k] for k in ("r1", "r2", "p1", "p2"))
    res = r2.op(op="emit_with_ack", event="ask", data={"q": 7}, to=mf["A"], timeout_ms=3000)
    acks = res["acks"]
    rust = [a for a in acks if a["sid"] == r1.sid]
    python = [a for a in acks if a["sid"] != r1.sid]
    assert rust == [{"sid": r1.sid, "value": "ack"}], res
    assert len(python) <= 1 and all(a["sid"] == "\x00" * 16 and a.get("value") == "ack"
                                    for a in python), res
    ev = [("ask", [{"q": 7}])]
    expect_exact({r1: ev, p1: ev, r2: [], p2: []})


def test_518_python_room_operations_act_on_rust_sockets(mf):
    py, r1, r2, p1, p2 = (mf[k] for k in ("py", "r1", "r2", "p1", "p2"))
    room = f"extra-{uuid.uuid4().hex[:8]}"
    py.cmd("enter_room", sid=r1.sid, room=room)
    py.emit("hello", 1, to=room)
    expect_exact({r1: [("hello", [1])], r2: [], p1: [], p2: []})
    assert room in r1.op(op="rooms", local=True), "enter_room did not reach the Rust adapter"

    py.cmd("enter_room", sid=r2.sid, room=room)
    py.cmd("leave_room", sid=r1.sid, room=room)
    py.emit("hello", 2, to=room)
    expect_exact({r1: [], r2: [("hello", [2])], p1: [], p2: []})

    py.cmd("enter_room", sid=r1.sid, room=room)
    py.cmd("enter_room", sid=p2.sid, room=room)
    py.emit("hello", 3, to=room)
    ev = [("hello", [3])]
    expect_exact({r1: ev, r2: ev, p2: ev, p1: []})
    py.cmd("close_room", room=room)
    py.emit("hello", 4, to=room)
    expect_exact({r1: [], r2: [], p1: [], p2: []})
    # the Rust side's own broadcast to that room now reaches nobody either
    r1.op(op="emit", event="hello", data=5, to=room)
    expect_exact({r1: [], r2: [], p1: [], p2: []})

    py.cmd("disconnect", sid=r1.sid)
    assert r1.disconnected.wait(5), "python disconnect(sid) did not disconnect the Rust client"
    assert r2.connected and p1.connected


_WRITE_ONLY_518 = """
import json, sys, socketio
url, channel, ns, room = sys.argv[1:5]
mgr = socketio.KombuManager(url, channel=channel, write_only=True)
mgr.emit("w1", ("a", {"b": 1}), namespace=ns, room=room)
mgr.emit("w2", {"only": "arg"}, namespace=ns, room=json.loads(sys.argv[5]))
mgr.emit("w3", (b"\\x07", 8), namespace=ns, room=room)
mgr.publisher_connection.release()
"""


def test_518_write_only_kombu_manager_reaches_both_sides(mf):
    res = subprocess.run(
        [str(VENV_518), "-c", _WRITE_ONLY_518, AMQP_URL, mf["exchange"], CLUSTER_NS, mf["A"],
         f'["{mf["B"]}", "{mf["p2"].sid}"]'],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 0, f"write-only emitter failed:\n{res.stdout}\n{res.stderr}"
    w1, w3 = ("w1", ["a", {"b": 1}]), ("w3", [b"\x07", 8])
    w2 = ("w2", [{"only": "arg"}])
    expect_exact({mf["r1"]: [w1, w3], mf["p1"]: [w1, w3], mf["r2"]: [w2], mf["p2"]: [w2]})


# ===========================================================================
# Rust -> python: several arguments, binary data, required acks, on a node
# with the python data format of its fleet and SIO_AMQP_NODE_WAIT_PY_ACKS=1
# ===========================================================================
R2P_FLEETS = {
    # python-socketio 5.15.1+ reads the argument list
    "sio5.18.1-args": ("5.18.1", VENV_518, "args"),
    # up to 5.15.0 python-socketio reads the data as the one argument
    "sio5.15.0-legacy": ("5.15.0", VENV_515, "legacy"),
}


@pytest.fixture(scope="module", params=list(R2P_FLEETS))
def r2p_fleet(request, broker):
    """(format, Rust node, python server) on an exchange of their own; the
    node publishes in the python server's data format and keeps its ack
    streams open for python acks until the timeout."""
    version, python, fmt = R2P_FLEETS[request.param]
    exchange = mq_support.unique("v6sio-test-r2p")
    rust = RustNode(exchange, label=f"rust-{fmt}", env={
        "SIO_AMQP_NODE_PY_FORMAT": fmt, "SIO_AMQP_NODE_WAIT_PY_ACKS": "1"})
    py = PyServer(python, channel=exchange, namespace=CLUSTER_NS, label=f"py-{version}")
    start_fleet(exchange, rust, py)
    assert py.version == version, py.version
    yield fmt, rust, py
    stop_fleet(exchange, rust, py)


@pytest.fixture()
def r2p(r2p_fleet):
    """r1, r2 on the Rust node, p1, p2 on python; room A = {r1, p1}."""
    fmt, rust, py = r2p_fleet
    with four_clients(rust, py) as clients:
        yield {"format": fmt, "rust": rust, "py": py, **clients}


def _b64(raw: bytes) -> str:
    return b(raw)["$bytes"]


def test_rust_emit_several_arguments_reaches_python_clients(r2p):
    """Several arguments, one list argument and no argument from the Rust
    side. 5.18.1 hands its clients the exact arguments; 5.15.0 can only read
    one value: several arguments arrive as one list, no argument as none."""
    r1, r2, p1, p2 = (r2p[k] for k in ("r1", "r2", "p1", "p2"))
    r2.op(op="emit", event="multi", args=["a", 2, None, {"k": [1]}], to=r2p["A"])
    r2.op(op="emit", event="list", args=[[1, 2]], to=r2p["A"])
    r2.op(op="emit", event="none", args=[], to=r2p["A"])
    # several arguments to everyone but the sender, on both sides
    r1.op(op="emit", event="bcast", args=["x", {"y": 1}], from_socket=True)
    exact = [("multi", ["a", 2, None, {"k": [1]}]), ("list", [[1, 2]]), ("none", [])]
    if r2p["format"] == "args":
        python = exact
        bcast = ("bcast", ["x", {"y": 1}])
        py_bcast = bcast
    else:
        python = [("multi", [["a", 2, None, {"k": [1]}]]), ("list", [[1, 2]]), ("none", [])]
        bcast = ("bcast", ["x", {"y": 1}])
        py_bcast = ("bcast", [["x", {"y": 1}]])
    expect_exact({r1: exact, p1: python + [py_bcast], r2: [bcast], p2: [py_bcast]})


def test_rust_emit_binary_reaches_python_clients(r2p):
    """Binary attachments from the Rust side arrive at python clients as
    ``bytes``. 5.15.0 reads one value: a lone binary argument arrives as is,
    binary next to other arguments as one list holding the bytes."""
    r1, r2, p1, p2 = (r2p[k] for k in ("r1", "r2", "p1", "p2"))
    blob, blob2 = b"\x00\x01\xfe\xff", b"\x07"
    r2.op(op="emit", event="blob", args=[], bin=[_b64(blob)], to=r2p["A"])
    r2.op(op="emit", event="bins", args=["x", {"n": 1}], bin=[_b64(blob), _b64(blob2)],
          to=r2p["A"])
    # to one python client's sid
    r2.op(op="emit", event="direct", args=[3], bin=[_b64(blob2)], to=p2.sid)
    exact = [("blob", [blob]), ("bins", ["x", {"n": 1}, blob, blob2])]
    if r2p["format"] == "args":
        python, direct = exact, [("direct", [3, blob2])]
    else:
        python = [("blob", [blob]), ("bins", [["x", {"n": 1}, blob, blob2]])]
        direct = [("direct", [[3, blob2]])]
    # (the comparison is by ==: a str or a {"_placeholder"} map is no bytes)
    expect_exact({r1: exact, p1: python, r2: [], p2: direct})


def test_rust_emit_with_ack_requires_the_python_clients_ack(r2p):
    """emit_with_ack on a node with SIO_AMQP_NODE_WAIT_PY_ACKS=1: the ack of
    the python server's client is required and comes back with all its
    arguments (a python sid is no socketioxide sid: ``Sid::ZERO``), next to
    the Rust client's, each exactly once; the same with several arguments
    and binary data to one python client's sid."""
    r1, r2, p1, p2 = (r2p[k] for k in ("r1", "r2", "p1", "p2"))
    zero = "\x00" * 16
    res = r2.op(op="emit_with_ack", event="ask", data={"q": 7}, to=r2p["A"], timeout_ms=3000,
                ack_args=True, timeout=15)
    acks = sorted(res["acks"], key=lambda a: a["sid"])
    assert acks == [{"sid": zero, "value": ["ack", "p1", "ask"]},
                    {"sid": r1.sid, "value": ["ack", "r1", "ask"]}], res
    blob = b"\x00\xff"
    res = r2.op(op="emit_with_ack", event="ask2", args=["a", 2], bin=[_b64(blob)], to=p2.sid,
                timeout_ms=3000, ack_args=True, timeout=15)
    assert res["acks"] == [{"sid": zero, "value": ["ack", "p2", "ask2"]}], res
    if r2p["format"] == "args":
        ask2 = ("ask2", ["a", 2, blob])
    else:
        ask2 = ("ask2", [["a", 2, blob]])
    expect_exact({r1: [("ask", [{"q": 7}])], p1: [("ask", [{"q": 7}])], r2: [], p2: [ask2]})
