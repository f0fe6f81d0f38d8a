"""5.x dataframe deletion (docs/vantage6-5x-socket.md §3.1 step 5, §3.10): pending
`dataframetobedeletedatnode` rows replayed as `delete_dataframe` to the reconnecting node after
it joined its rooms (and to no one else: HQ 5.0.3 sends them to the collaboration room before
the node joined, so only the others got them), and `dataframe_deleted`, which deletes the row
only when the identified node reports about itself."""
from __future__ import annotations

import time

import pytest

from compat_support import node_connect_sequence
from sio_testkit import SETTLE, expect_exact, expect_silence, quiesce
from support_v5 import CountsRefusals, wait_db


def delete_instruction(df_name, session_id):
    return ("delete_dataframe", {"df_name": df_name, "session_id": session_id})


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_pending_deletions_replayed_to_the_reconnecting_node_only(world, db, clients, tokens,
                                                                   connect_node, connect_user,
                                                                   transport):
    a1 = world.node_a1
    sid = world.sess1.id
    db.add_pending_delete(world.df1.name, sid, a1.id)
    db.add_pending_delete("df-other", sid, a1.id)
    db.add_pending_delete(world.df1.name, sid, world.node_b1.id)  # b1's own: not a1's business
    b1 = connect_node(world.node_b1, extra=[delete_instruction(world.df1.name, sid)])
    glob = connect_user(world.u_glob)
    quiesce(b1, glob)

    rec = clients(tokens.access(a1), label="a1", transport=transport)
    rec.wait_count(len(node_connect_sequence(a1)) + 2)
    time.sleep(SETTLE)
    got = rec.snapshot()
    n = len(node_connect_sequence(a1))
    # sync and the join messages first: the node is in its rooms when its instructions arrive
    assert got[:n] == node_connect_sequence(a1), got
    assert sorted(got[n:], key=repr) == sorted(
        [delete_instruction(world.df1.name, sid), delete_instruction("df-other", sid)], key=repr), got
    rec.clear()
    # the others see a1 arrive, and no instruction of a1's
    c1 = f"collaboration_{world.c1.id}"
    from sio_testkit import join_msg, node_status_payload

    arrival = [("node-online", node_status_payload(a1)), join_msg("Node", a1.name, c1)]
    expect_exact({b1: arrival, glob: arrival, rec: []})
    # replay does not delete: the rows stay until the node reports dataframe_deleted
    assert db.pending_deletes(node_id=a1.id) == sorted(
        [(world.df1.name, sid, a1.id), ("df-other", sid, a1.id)])


def test_dataframe_deleted_removes_the_row(world, db, connect_node):
    a1 = world.node_a1
    sid = world.sess1.id
    rec = connect_node(a1)
    quiesce(rec)  # the connect (and its replay of nothing) is over
    # rows written after the connect (by HQ's DELETE /session/dataframe): no replay involved
    db.add_pending_delete(world.df1.name, sid, a1.id)
    db.add_pending_delete("df-keep", sid, a1.id)
    db.add_pending_delete(world.df1.name, sid, world.node_b1.id)
    # what vantage6-node 5.0.3 answers after deleting its file
    rec.emit("dataframe_deleted", {"df_name": world.df1.name, "session_id": sid, "node_id": a1.id})
    wait_db(lambda: db.pending_deletes(node_id=a1.id) == [("df-keep", sid, a1.id)],
            "a1's df1 row deleted", show=lambda: db.pending_deletes())
    assert db.pending_deletes(node_id=world.node_b1.id) == [(world.df1.name, sid, world.node_b1.id)]
    expect_silence(rec)  # no emit


def test_dataframe_deleted_for_a_missing_row_is_logged_not_fatal(world, db, srv, connect_node):
    a1 = world.node_a1
    rec = connect_node(a1)
    with CountsRefusals(srv, "unknown_dataframe", 2):
        rec.emit("dataframe_deleted", {"df_name": "never-pending", "session_id": world.sess1.id,
                                       "node_id": a1.id})
        rec.emit("dataframe_deleted", {"df_name": world.df1.name, "session_id": 2_000_000_000,
                                       "node_id": a1.id})
    # the server still serves this socket: its ping is recorded
    rec.emit("ping")
    wait_db(lambda: db.auth_row(a1.id)[1] is not None, "a1's ping after the missing rows",
            show=lambda: db.auth_row(a1.id))
    expect_silence(rec)
    srv.assert_alive()


@pytest.mark.parametrize("who", ["foreign_node", "user", "unidentified"])
def test_dataframe_deleted_refused(world, db, srv, clients, connect_node, connect_user, who):
    """Ours: only the identified node itself, about its own node_id (HQ takes it from any
    socket, even an unidentified one, for any node)."""
    a1, b1 = world.node_a1, world.node_b1
    sid = world.sess1.id
    ra = connect_node(a1)
    if who == "foreign_node":
        sender = connect_node(b1)
    elif who == "user":
        sender = connect_user(world.u_glob)
    else:
        sender = clients(None, label="unidentified")
    quiesce(ra, sender)
    db.add_pending_delete(world.df1.name, sid, a1.id)
    db.add_pending_delete(world.df1.name, sid, b1.id)
    reason = {"foreign_node": "foreign_node", "user": "not_a_node", "unidentified": "unidentified"}[who]
    with CountsRefusals(srv, reason):
        sender.emit("dataframe_deleted", {"df_name": world.df1.name, "session_id": sid,
                                          "node_id": a1.id})
    if who == "foreign_node":
        # b1's own report after it: once b1's row is gone the refused one was handled
        sender.emit("dataframe_deleted", {"df_name": world.df1.name, "session_id": sid,
                                          "node_id": b1.id})
        wait_db(lambda: db.pending_deletes(node_id=b1.id) == [], "b1's own row deleted",
                show=lambda: db.pending_deletes())
    expect_silence(ra, sender)
    assert db.pending_deletes(node_id=a1.id) == [(world.df1.name, sid, a1.id)], \
        f"a1's row must stay when {who} reports it deleted"
