"""5.x connect / disconnect sequences, rooms by rule scope, collaboration isolation and the DB
writes that go with them (docs/vantage6-5x-socket.md §2.4, §3.1-§3.4)."""
from __future__ import annotations

import pytest

from compat_support import node_connect_sequence
from sio_testkit import (
    Unordered,
    expect_exact,
    expect_silence,
    join_msg,
    left_msg,
    node_status_payload,
    quiesce,
    wait_until,
)
from support_v5 import World, wait_db


def observers(world, connect_node, connect_user):
    """Everybody except node_a1, connected and quiet."""
    obs = {
        "b1": connect_node(world.node_b1),
        "c2": connect_node(world.node_c2),
        "glob": connect_user(world.u_glob),
        "col": connect_user(world.u_col),
        "org": connect_user(world.u_org),
        "orgb": connect_user(world.u_orgb),
        "none": connect_user(world.u_none),
    }
    quiesce(*obs.values())
    return obs


def wait_status(db, auth_id, status):
    wait_until(lambda: db.auth_row(auth_id)[0] == status, what=f"authenticatable {auth_id} status {status}")


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_node_connect_sequence_and_room_fanout(world, db, clients, tokens, connect_node, connect_user,
                                               transport):
    o = observers(world, connect_node, connect_user)
    a1 = world.node_a1
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    online = ("node-online", node_status_payload(a1))
    assert db.auth_row(a1.id)[0] == "offline"

    rec = clients(tokens.access(a1), label="a1", transport=transport)
    expect_exact({
        # its own: sync, then "Node <name> joined room <room>" for its two rooms (not all_nodes)
        rec: node_connect_sequence(a1),
        # collaboration members: node-online once (not via all_nodes), then the join message
        o["b1"]: [online, join_msg("Node", a1.name, c1)],
        o["glob"]: [online, join_msg("Node", a1.name, c1)],
        o["col"]: [online, join_msg("Node", a1.name, c1)],
        # organisation-scope user of org_a: via collaboration_<c1>_organization_<a>
        o["org"]: [online, join_msg("Node", a1.name, c1_orga)],
        # nothing for the other collaboration, the other organisation's subroom, no rule
        o["c2"]: [],
        o["orgb"]: [],
        o["none"]: [],
    })
    status, last_seen = db.auth_row(a1.id)
    assert status == "online"
    assert last_seen is None  # HQ's on_connect does not touch last_seen; ping does


def test_node_disconnect_sequence(world, db, connect_node, connect_user):
    a1 = world.node_a1
    rec = connect_node(a1)
    rec.emit("node_info_update", {"encryption": "False", "database_labels": ["default"]})
    wait_db(lambda: sum(db.node_config(a1.id).values()) == 2, "node_config rows of node_a1",
            show=lambda: db.node_config(a1.id))
    o = observers(world, connect_node, connect_user)
    rec.clear()  # it saw the observers arrive
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    offline = ("node-offline", node_status_payload(a1))

    rec.disconnect()
    expect_exact({
        o["b1"]: [left_msg(a1.name, c1), offline],
        o["glob"]: [left_msg(a1.name, c1), offline],
        o["col"]: [left_msg(a1.name, c1), offline],
        o["org"]: [left_msg(a1.name, c1_orga), offline],
        o["c2"]: [],
        o["orgb"]: [],
        o["none"]: [],
        rec: [],  # the departing client hears nothing about its own departure
    })
    wait_status(db, a1.id, "offline")
    wait_db(lambda: not db.node_config(a1.id), "node_config rows deleted on disconnect",
            show=lambda: db.node_config(a1.id))


def test_reconnect_repeats_the_sequence(world, db, connect_node):
    a1, b1 = world.node_a1, world.node_b1
    c1 = f"collaboration_{world.c1.id}"
    ra = connect_node(a1)
    rb = connect_node(b1)
    expect_exact({ra: [("node-online", node_status_payload(b1)), join_msg("Node", b1.name, c1)],
                  rb: []})
    rb.disconnect()
    expect_exact({ra: [left_msg(b1.name, c1), ("node-offline", node_status_payload(b1))]})
    wait_status(db, b1.id, "offline")
    rb2 = connect_node(b1, label="b1-again")
    expect_exact({ra: [("node-online", node_status_payload(b1)), join_msg("Node", b1.name, c1)],
                  rb2: []})
    assert db.auth_row(b1.id)[0] == "online"


@pytest.mark.parametrize("who", ["u_glob", "u_col", "u_org", "u_orgb", "u_none"])
def test_user_rooms_by_event_receive_scope(world, db, connect_user, connect_node, who):
    user = getattr(world, who)
    expected_rooms = world.user_rooms(user)
    # the fixture itself (so the test cannot pass vacuously): 5.x string rules at each scope
    expected_shape = {
        "u_glob": [f"collaboration_{c}" for c in db.collaboration_ids()],
        "u_col": [f"collaboration_{world.c1.id}", f"collaboration_{world.c2.id}"],
        "u_org": [f"collaboration_{world.c1.id}_organization_{world.org_a.id}",
                  f"collaboration_{world.c2.id}_organization_{world.org_a.id}"],
        "u_orgb": [f"collaboration_{world.c1.id}_organization_{world.org_b.id}"],
        "u_none": [],
    }[who]
    assert sorted(expected_rooms) == sorted(expected_shape)

    rec = connect_user(user)  # asserts "User <name> joined room <room>" per room, nothing else
    wait_status(db, user.id, "online")

    # membership: a node of each collaboration announces itself
    for node in (world.node_a1, world.node_c2):
        rn = connect_node(node)
        shared = [r for r in World.node_public_rooms(node) if r in expected_rooms]
        exp = [("node-online", node_status_payload(node))] * len(shared)
        exp += [join_msg("Node", node.name, r) for r in shared]
        expect_exact({rec: exp, rn: []})

    rec.disconnect()
    wait_status(db, user.id, "offline")


def test_user_disconnect_messages(world, db, connect_node, connect_user):
    o = observers(world, connect_node, connect_user)
    col = world.u_col
    c1, c2 = f"collaboration_{world.c1.id}", f"collaboration_{world.c2.id}"
    o["col"].disconnect()
    expect_exact({
        o["b1"]: [left_msg(col.name, c1)],
        o["c2"]: [left_msg(col.name, c2)],
        o["glob"]: Unordered([left_msg(col.name, c1), left_msg(col.name, c2)]),
        o["org"]: [],
        o["orgb"]: [],
        o["none"]: [],
    })
    wait_status(db, col.id, "offline")


def test_collaboration_isolation_full_lifecycle(world, db, connect_node, connect_user):
    """A node of collaboration 2 and an organisation-scope user of org_b receive nothing at all
    from a collaboration-1 node's whole life: connect, status, log, info, disconnect."""
    c2 = connect_node(world.node_c2)
    orgb = connect_user(world.u_orgb)
    quiesce(c2, orgb)
    a1 = connect_node(world.node_a1)
    b1 = connect_node(world.node_b1)
    a1.emit("algorithm_status_change", {
        "run_id": world.r_a.id, "task_id": world.task1.id, "collaboration_id": world.c1.id,
        "status": "active", "node_id": world.node_a1.id, "organization_id": world.org_a.id,
        "parent_id": None,
    })
    a1.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_a.id,
                              "task_id": world.task1.id, "log": "x"})
    a1.emit("node_info_update", {"encryption": "False"})
    b1.wait_event("algorithm_log")
    a1.disconnect()
    b1.wait_event("node-offline")
    b1.disconnect()
    # org_b's subroom of collaboration 1 saw b1 itself arrive and leave, nothing of a1
    c1_orgb = f"collaboration_{world.c1.id}_organization_{world.org_b.id}"
    expect_exact({orgb: [("node-online", node_status_payload(world.node_b1)),
                         join_msg("Node", world.node_b1.name, c1_orgb),
                         left_msg(world.node_b1.name, c1_orgb),
                         ("node-offline", node_status_payload(world.node_b1))]})
    expect_silence(c2)
