"""The offline sweeper (design doc §1 "Server-side liveness thread", contract point 4).

The session server runs with ``sweep_interval: 2``.  A sweep marks a node
``offline`` when it is ``online`` and its ``last_seen`` is older than the start
of the previous sweep interval; ``last_seen IS NULL`` is skipped; users are
never touched; no socket event is emitted.
"""
from __future__ import annotations

import datetime as dt
import threading
import time

from support import expect_silence, quiesce, utcnow_naive, wait_until

SWEEP = 2.0


def test_sweep_marks_stale_nodes_offline_only(world, db, connect_node, connect_user):
    glob = connect_user(world.u_glob)
    b1 = connect_node(world.node_b1)  # online, never pinged: last_seen NULL -> skipped
    c2 = connect_node(world.node_c2)  # keeps pinging -> stays online
    stop = threading.Event()

    def pinger():
        while not stop.wait(0.4):
            c2.emit("ping")

    c2.emit("ping")
    t = threading.Thread(target=pinger, daemon=True)
    t.start()
    try:
        quiesce(glob, b1, c2)
        now = utcnow_naive()
        db.set_auth(world.node_a1.id, status="online", last_seen=now - dt.timedelta(hours=1))
        db.set_auth(world.twin.id, status="online", last_seen=now + dt.timedelta(days=1))
        db.set_auth(world.u_col.id, status="online", last_seen=now - dt.timedelta(hours=1))
        fresh_at = utcnow_naive()

        wait_until(lambda: db.auth_row(world.node_a1.id)[0] == "offline",
                   timeout=3 * SWEEP + 3, interval=0.05, what="stale node_a1 swept offline")
        flipped_at = utcnow_naive()
        # it was stale long before: a sweep within ~one interval must catch it
        assert flipped_at - fresh_at < dt.timedelta(seconds=2 * SWEEP + 2)

        assert db.auth_row(world.twin.id)[0] == "online", "last_seen in the future is never stale"

        time.sleep(SWEEP + 0.5)  # at least one more complete sweep
        assert db.auth_row(world.node_b1.id) == ("online", None), "last_seen NULL must be skipped"
        assert db.auth_row(world.node_c2.id)[0] == "online", "a pinging node must stay online"
        assert db.auth_row(world.twin.id)[0] == "online", "last_seen in the future is never stale"
        assert db.auth_row(world.u_col.id)[0] == "online", "users are never swept"
        assert db.auth_row(world.node_a1.id)[0] == "offline"
        # no socket event about any of it
        expect_silence(glob, b1, c2, settle=0.1)
    finally:
        stop.set()
        t.join()


def test_sweep_catches_a_node_that_stops_pinging(world, db, connect_node):
    """The real flow: a connected node pings once, then goes quiet; within two
    sweep intervals after its last ping it is marked offline, socket untouched."""
    rec = connect_node(world.node_a1)
    rec.emit("ping")
    wait_until(lambda: db.auth_row(world.node_a1.id)[1] is not None, what="ping stored")
    last_ping = time.monotonic()
    wait_until(lambda: db.auth_row(world.node_a1.id)[0] == "offline",
               timeout=3 * SWEEP + 3, interval=0.05, what="node swept offline after it stopped pinging")
    elapsed = time.monotonic() - last_ping
    assert elapsed >= SWEEP - 0.5, f"swept after {elapsed:.2f}s: a node must get at least one full interval"
    assert rec.connected, "the sweep must not touch the socket"
    expect_silence(rec, settle=0.1)
    # a ping brings it back
    rec.emit("ping")
    wait_until(lambda: db.auth_row(world.node_a1.id)[0] == "online", what="ping after sweep")
