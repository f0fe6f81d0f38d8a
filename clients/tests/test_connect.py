"""Connect / disconnect sequences, rooms, and DB status (design doc §2, §3, §9)."""
from __future__ import annotations

import pytest

from compat_support import (
    OBSERVERS, USERS_BY_SCOPE, a1_status_payload, heard_when_a1_connects, log_payload,
    node_disconnect_sequence, second_node_and_reconnect, user_in_both_collaborations_leaves,
    user_rooms_by_event_receive_scope,
)
from support import expect_exact, expect_silence, left_msg, node_status_payload, quiesce


def test_node_connect_sequence_and_room_fanout(world, db, connect_node, connect_quiet):
    o = connect_quiet(*OBSERVERS)
    a1 = world.node_a1

    # connect_node asserts the node's own exact sequence: sync, then
    # "Node <name> joined room <room>" for its two rooms (not all_nodes), and no node-online
    rec = connect_node(a1)

    # collaboration-1 members hear node-online once, then the join message; no leak to the
    # other collaboration or to unrelated subrooms
    expect_exact({rec: [], **heard_when_a1_connects(world, o)})
    assert db.auth_row(a1.id)[0] == "online"


def test_node_disconnect_sequence(world, db, connect_node, connect_quiet):
    node_disconnect_sequence(world, db, connect_node, connect_quiet,
                             {"encryption": False, "database_labels": ["default"]})


def test_second_node_sees_first_and_reconnect_repeats_sequence(world, db, connect_node):
    second_node_and_reconnect(world, db, connect_node)


@pytest.mark.parametrize("who", USERS_BY_SCOPE)
def test_user_rooms_by_event_receive_scope(world, db, connect_user, connect_node, who):
    user_rooms_by_event_receive_scope(world, db, connect_user, connect_node, who)


def test_user_disconnect_messages(world, db, connect_quiet):
    # u_col shares collaboration_<c1> and collaboration_<c2> with u_glob
    user_in_both_collaborations_leaves(world, db, connect_quiet(*OBSERVERS), "glob", other="col")


def test_no_cross_collaboration_leak_for_full_lifecycle(world, db, connect_node, connect_user):
    """A node of collaboration 2 receives NOTHING at all from collaboration 1."""
    c2 = connect_node(world.node_c2)
    quiesce(c2)
    a1 = connect_node(world.node_a1)
    b1 = connect_node(world.node_b1)
    a1.emit("algorithm_status_change", a1_status_payload(world))
    a1.emit("algorithm_log", log_payload(world, "x"))
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
