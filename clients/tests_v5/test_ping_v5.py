"""5.x `ping` (docs/vantage6-5x-socket.md §3.5): `last_seen` and `status`, and the recovery of a
node the offline sweep marked offline while its socket stayed connected: `sync` again,
`node-online` once per room, the join messages, without HQ 5.0.3's duplication of the rooms on
every recovery; a user's ping never runs the recovery."""
from __future__ import annotations

import datetime as dt

import pytest

from sio_testkit import (
    expect_exact, expect_silence, join_msg, left_msg, node_status_payload, quiesce, utcnow_naive,
    wait_until,
)
from support_v5 import wait_db


def pinged_since(db, auth_id, since):
    status, last_seen = db.auth_row(auth_id)
    return status == "online" and last_seen is not None and last_seen >= since


def ping_and_wait(db, rec, ent):
    # last_seen is written as naive UTC; the database may round to whole seconds
    before = utcnow_naive().replace(microsecond=0) - dt.timedelta(seconds=1)
    rec.emit("ping")
    wait_db(lambda: pinged_since(db, ent.id, before), f"{ent.name}'s ping recorded",
            show=lambda: f"row {db.auth_row(ent.id)}, before {before}")
    last_seen = db.auth_row(ent.id)[1]
    assert last_seen <= utcnow_naive() + dt.timedelta(seconds=1)
    return last_seen


def test_ping_sets_last_seen_and_online(world, db, connect_node):
    a1 = world.node_a1
    rec = connect_node(a1)
    assert db.auth_row(a1.id) == ("online", None)
    first = ping_and_wait(db, rec, a1)
    expect_silence(rec)
    db.set_auth(a1.id, last_seen=first - dt.timedelta(hours=1))
    second = ping_and_wait(db, rec, a1)
    assert second >= first
    expect_silence(rec)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_ping_recovery_after_offline_in_db(world, db, clients, tokens, connect_node, connect_user,
                                           transport):
    a1 = world.node_a1
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    online = ("node-online", node_status_payload(a1))
    rec = connect_node(a1, transport=transport)
    b1 = connect_node(world.node_b1)
    c2 = connect_node(world.node_c2)
    glob = connect_user(world.u_glob)
    org = connect_user(world.u_org)
    quiesce(rec, b1, c2, glob, org)  # they saw each other arrive
    ping_and_wait(db, rec, a1)
    expect_silence(rec, b1, c2, glob, org)

    for round_ in (1, 2):  # the second recovery announces exactly as often as the first
        db.set_auth(a1.id, status="offline")  # what the offline sweep does when a ping is late
        ping_and_wait(db, rec, a1)
        expect_exact({
            # its own: sync, then its node-online via each announced room it is in, then a join
            # message per room (all_nodes is neither announced nor messaged)
            rec: [("sync", None), online, online,
                  join_msg("Node", a1.name, c1), join_msg("Node", a1.name, c1_orga)],
            b1: [online, join_msg("Node", a1.name, c1)],
            glob: [online, join_msg("Node", a1.name, c1)],
            org: [online, join_msg("Node", a1.name, c1_orga)],
            c2: [],
        })
        assert db.auth_row(a1.id)[0] == "online", f"recovery {round_}"

    # an online node's ping recovers nothing
    ping_and_wait(db, rec, a1)
    expect_silence(rec, b1, c2, glob, org)

    # after the recoveries each room is still left once
    rec.disconnect()
    offline = ("node-offline", node_status_payload(a1))
    expect_exact({
        b1: [left_msg(a1.name, c1), offline],
        glob: [left_msg(a1.name, c1), offline],
        org: [left_msg(a1.name, c1_orga), offline],
        c2: [],
    })
    wait_until(lambda: db.auth_row(a1.id)[0] == "offline", what="node_a1 offline after disconnect")


def test_user_ping_never_recovers(world, db, connect_node, connect_user):
    b1 = connect_node(world.node_b1)
    glob = connect_user(world.u_glob)
    quiesce(b1, glob)
    user = world.u_glob
    db.set_auth(user.id, status="offline")  # e.g. another socket of this user disconnected
    ping_and_wait(db, glob, user)
    expect_silence(glob, b1)
    assert db.auth_row(user.id)[0] == "online"


def test_ping_recovery_replays_pending_deletions_to_the_node(world, db, connect_node):
    a1 = world.node_a1
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    online = ("node-online", node_status_payload(a1))
    rec = connect_node(a1)
    b1 = connect_node(world.node_b1)
    quiesce(rec, b1)
    # written while the node was connected (HQ's DELETE /session/dataframe), then the sweep
    db.add_pending_delete(world.df1.name, world.sess1.id, a1.id)
    db.set_auth(a1.id, status="offline")
    ping_and_wait(db, rec, a1)
    expect_exact({
        rec: [("sync", None), online, online,
              join_msg("Node", a1.name, c1), join_msg("Node", a1.name, c1_orga),
              ("delete_dataframe", {"df_name": world.df1.name, "session_id": world.sess1.id})],
        b1: [online, join_msg("Node", a1.name, c1)],
    })
