"""5.x connect / disconnect sequences, rooms by rule scope, collaboration isolation and the DB
writes that go with them (docs/vantage6-5x-socket.md §2.4, §3.1-§3.4)."""
from __future__ import annotations

import pytest

from compat_support import (
    OBSERVERS, USERS_BY_SCOPE, a1_status_payload, heard_when_a1_connects, log_payload, node_arrives,
    node_connect_sequence, node_disconnect_sequence, node_leaves, second_node_and_reconnect,
    user_in_both_collaborations_leaves, user_rooms_by_event_receive_scope,
)
from sio_testkit import expect_exact, expect_silence, quiesce


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_node_connect_sequence_and_room_fanout(world, db, clients, tokens, connect_quiet, transport):
    o = connect_quiet(*OBSERVERS)
    a1 = world.node_a1
    assert db.auth_row(a1.id)[0] == "offline"

    rec = clients(tokens.access(a1), label="a1", transport=transport)
    expect_exact({
        # its own: sync, then "Node <name> joined room <room>" for its two rooms (not all_nodes)
        rec: node_connect_sequence(a1),
        # collaboration-1 members: node-online once (not via all_nodes), then the join message;
        # nothing for the other collaboration, the other organisation's subroom, no rule
        **heard_when_a1_connects(world, o),
    })
    status, last_seen = db.auth_row(a1.id)
    assert status == "online"
    assert last_seen is None  # HQ's on_connect does not touch last_seen; ping does


# duplicates: deliberate — each suite names its own tests of the scenarios compat_support shares
def test_node_disconnect_sequence(world, db, connect_node, connect_quiet):
    node_disconnect_sequence(world, db, connect_node, connect_quiet,
                             {"encryption": "False", "database_labels": ["default"]})


def test_reconnect_repeats_the_sequence(world, db, connect_node):
    second_node_and_reconnect(world, db, connect_node)


@pytest.mark.parametrize("who", USERS_BY_SCOPE)
def test_user_rooms_by_event_receive_scope(world, db, connect_user, connect_node, who):
    user_rooms_by_event_receive_scope(world, db, connect_user, connect_node, who)


def test_user_disconnect_messages(world, db, connect_quiet):
    # u_glob shares collaboration_<c1> and collaboration_<c2> with u_col
    user_in_both_collaborations_leaves(world, db, connect_quiet(*OBSERVERS), "col", other="glob")


def test_collaboration_isolation_full_lifecycle(world, db, connect_node, connect_user):
    """A node of collaboration 2 and an organisation-scope user of org_b receive nothing at all
    from a collaboration-1 node's whole life: connect, status, log, info, disconnect."""
    c2 = connect_node(world.node_c2)
    orgb = connect_user(world.u_orgb)
    quiesce(c2, orgb)
    a1 = connect_node(world.node_a1)
    b1 = connect_node(world.node_b1)
    a1.emit("algorithm_status_change", a1_status_payload(world))
    a1.emit("algorithm_log", log_payload(world, "x"))
    a1.emit("node_info_update", {"encryption": "False"})
    b1.wait_event("algorithm_log")
    a1.disconnect()
    b1.wait_event("node-offline")
    b1.disconnect()
    # org_b's subroom of collaboration 1 saw b1 itself arrive and leave, nothing of a1
    c1_orgb = f"collaboration_{world.c1.id}_organization_{world.org_b.id}"
    expect_exact({orgb: node_arrives(world.node_b1, c1_orgb) + node_leaves(world.node_b1, c1_orgb)})
    expect_silence(c2)
