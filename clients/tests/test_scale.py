"""Many rooms: a global-scope user joins every collaboration room (design doc §2.7).

vantage6 4.15.2 emits one join `message` per room and Flask-SocketIO queues
them without a limit, so a user sees all of them however many collaborations
exist.

The polling variants use the JavaScript client (what the UI does: it starts on
polling).  python-engineio's *client* cannot take them on polling: it refuses a
polling response with more than 16 packets (``Payload.max_decode_packets``,
"Unexpected packet from server, aborting") -- against the reference server too,
whose polling responses also carry every queued packet."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from support import join_msg, quiesce, v6db
from test_clients import run_js

N_EXTRA = 300


@pytest.fixture()
def many_collaborations(db):
    with db.session() as s:
        s.add_all([v6db.Collaboration(name=db.unique("bulk-collab"), encrypted=False) for _ in range(N_EXTRA)])
    yield
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM collaboration WHERE name LIKE 'bulk-collab-%'"))


def test_global_user_with_many_collaborations_python_websocket(many_collaborations, world, db, clients, tokens):
    rooms = world.user_rooms(world.u_glob)
    assert len(rooms) >= N_EXTRA
    rec = clients(tokens.access(world.u_glob), label="glob-many", transports=["websocket"])
    try:
        rec.wait_count(len(rooms), timeout=10)
    except AssertionError:
        pass
    got = rec.snapshot()
    assert sorted(got, key=repr) == sorted([join_msg("User", world.u_glob.name, r) for r in rooms], key=repr), (
        f"got {len(got)} of the {len(rooms)} join messages"
    )


@pytest.mark.parametrize("transport", ["polling", "both"])
def test_global_user_with_many_collaborations_js(transport, many_collaborations, world, db, srv, tokens):
    rooms = world.user_rooms(world.u_glob)
    assert len(rooms) >= N_EXTRA
    js = run_js(srv, tokens.access(world.u_glob), transport)
    try:
        try:
            js.wait_for(lambda ls: len(js.events()) >= len(rooms), timeout=10)
        except AssertionError:
            pass
        quiesce()
        got = js.events()
        assert sorted(got, key=repr) == sorted([join_msg("User", world.u_glob.name, r) for r in rooms], key=repr), (
            f"got {len(got)} of the {len(rooms)} join messages"
        )
        assert not [o for o in js.lines if o.get("event") in ("disconnect", "connect_error")], js.lines[-3:]
    finally:
        js.stop(5)
