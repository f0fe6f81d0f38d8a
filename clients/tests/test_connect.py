"""Connect / disconnect sequences, rooms, and DB status (design doc §2, §3, §9)."""
from __future__ import annotations

import pytest

from support import (
    Unordered,
    World,
    expect_exact,
    expect_silence,
    join_msg,
    left_msg,
    node_status_payload,
    quiesce,
)


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


def test_node_connect_sequence_and_room_fanout(world, db, connect_node, connect_user):
    o = observers(world, connect_node, connect_user)
    a1 = world.node_a1
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    online = ("node-online", node_status_payload(a1))

    # connect_node asserts the node's own exact sequence: sync, then
    # "Node <name> joined room <room>" for its two rooms (not all_nodes), and no node-online
    rec = connect_node(a1)

    expect_exact({
        rec: [],
        # collab-1 members: node-online once (all_nodes is not announced), then the join message
        o["b1"]: [online, join_msg("Node", a1.name, c1)],
        o["glob"]: [online, join_msg("Node", a1.name, c1)],
        o["col"]: [online, join_msg("Node", a1.name, c1)],
        # organisation-scope user of org_a: via collaboration_<c1>_organization_<a>
        o["org"]: [online, join_msg("Node", a1.name, c1_orga)],
        # no leak to the other collaboration or to unrelated subrooms
        o["c2"]: [],
        o["orgb"]: [],
        o["none"]: [],
    })
    assert db.auth_row(a1.id)[0] == "online"


def test_node_disconnect_sequence(world, db, connect_node, connect_user):
    a1 = world.node_a1
    rec = connect_node(a1)
    rec.emit("node_info_update", {"encryption": False, "database_labels": ["default"]})
    from support import wait_until

    wait_until(lambda: db.node_config_count(a1.id) == 2, what="node_config rows of node_a1")
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
        # the departing client hears nothing about its own departure
        rec: [],
    })
    wait_until(lambda: db.auth_row(a1.id)[0] == "offline", what="node_a1 status offline")
    wait_until(lambda: db.node_config_count(a1.id) == 0, what="node_config rows deleted on disconnect")


def test_second_node_sees_first_and_reconnect_repeats_sequence(world, db, connect_node, connect_user):
    a1, b1 = world.node_a1, world.node_b1
    c1 = f"collaboration_{world.c1.id}"
    ra = connect_node(a1)
    rb = connect_node(b1)  # checks b1's own sequence
    expect_exact({ra: [("node-online", node_status_payload(b1)), join_msg("Node", b1.name, c1)]})
    rb.disconnect()
    expect_exact({ra: [left_msg(b1.name, c1), ("node-offline", node_status_payload(b1))]})
    wait_until_status(db, b1.id, "offline")
    rb2 = connect_node(b1, label="b1-again")
    expect_exact({ra: [("node-online", node_status_payload(b1)), join_msg("Node", b1.name, c1)], rb2: []})
    assert db.auth_row(b1.id)[0] == "online"


def wait_until_status(db, auth_id, status):
    from support import wait_until

    wait_until(lambda: db.auth_row(auth_id)[0] == status, what=f"authenticatable {auth_id} status {status}")


@pytest.mark.parametrize("who", ["u_glob", "u_col", "u_org", "u_orgb", "u_none"])
def test_user_rooms_by_event_receive_scope(world, db, connect_user, connect_node, who):
    user = getattr(world, who)
    expected_rooms = world.user_rooms(user)
    # sanity of the fixture itself (so the test cannot pass vacuously)
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
    wait_until_status(db, user.id, "online")

    # membership check: a node of every collaboration announces itself
    for node in (world.node_a1, world.node_c2):
        rn = connect_node(node)
        shared = [r for r in World.node_public_rooms(node) if r in expected_rooms]
        exp = []
        if shared:
            exp = [("node-online", node_status_payload(node))] * len(shared)
            exp += [join_msg("Node", node.name, r) for r in shared]
        expect_exact({rec: exp, rn: []})

    rec.disconnect()
    wait_until_status(db, user.id, "offline")


def test_user_disconnect_messages(world, db, connect_node, connect_user):
    o = observers(world, connect_node, connect_user)
    glob = world.u_glob
    c1, c2 = f"collaboration_{world.c1.id}", f"collaboration_{world.c2.id}"
    o["glob"].disconnect()
    expect_exact({
        o["b1"]: [left_msg(glob.name, c1)],
        o["c2"]: [left_msg(glob.name, c2)],
        # u_col shares collaboration_<c1> and collaboration_<c2> with u_glob
        o["col"]: Unordered([left_msg(glob.name, c1), left_msg(glob.name, c2)]),
        o["org"]: [],
        o["orgb"]: [],
        o["none"]: [],
    })
    wait_until_status(db, glob.id, "offline")


def test_no_cross_collaboration_leak_for_full_lifecycle(world, db, connect_node, connect_user):
    """A node of collaboration 2 receives NOTHING at all from collaboration 1."""
    c2 = connect_node(world.node_c2)
    quiesce(c2)
    a1 = connect_node(world.node_a1)
    b1 = connect_node(world.node_b1)
    a1.emit("algorithm_status_change", {
        "run_id": world.r_a.id, "task_id": world.task1.id, "collaboration_id": world.c1.id,
        "status": "active", "node_id": world.node_a1.id, "organization_id": world.org_a.id,
        "parent_id": None,
    })
    a1.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_a.id,
                              "task_id": world.task1.id, "log": "x"})
    b1.wait_event("algorithm_log")
    a1.disconnect()
    b1.disconnect()
    expect_silence(c2)


def test_rooms_are_computed_at_connect(world, db, tokens, connect_node, connect_user, clients):
    """Reference §2.7: a user's rooms are fixed when it connects; a collaboration
    created later is only joined after a reconnect."""
    from support import v6db

    glob = connect_user(world.u_glob)
    with db.session() as s:
        org = s.get(v6db.Organization, world.org_c.id)
        late = v6db.Collaboration(name=db.unique("collab-twin-late"), organizations=[org], encrypted=False)
        s.add(late)
        s.flush()
        node = v6db.Node(name=db.unique("node-late"), organization_id=org.id, collaboration_id=late.id,
                         status="offline")
        s.add(node)
        s.flush()
        late_id, node_ent = late.id, None
        from support import Ent

        node_ent = Ent(node.id, node.name, org.id, late.id)
    # (named collab-twin-*: the next world's cleanup removes it, after this
    # test's clients are gone, so its id is never reused while they linger)
    rn = connect_node(node_ent)
    expect_silence(glob, rn)
    glob.disconnect()
    glob2 = connect_user(world.u_glob, label="glob-reconnected")  # asserts it joins collaboration_<late>
    assert f"collaboration_{late_id}" in world.user_rooms(world.u_glob)
    rn.disconnect()
    expect_exact({glob2: [left_msg(node_ent.name, f"collaboration_{late_id}"),
                          ("node-offline", node_status_payload(node_ent))]})
