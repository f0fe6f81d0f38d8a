"""Many rooms: a global-scope user joins every collaboration room (design doc §2.7).

vantage6 4.15.2 emits one join `message` per room and Flask-SocketIO queues
them without a limit, so a user sees all of them however many collaborations
exist."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from support import v6db, join_msg

N_EXTRA = 300


@pytest.fixture()
def many_collaborations(db):
    with db.session() as s:
        s.add_all([v6db.Collaboration(name=db.unique("bulk-collab"), encrypted=False) for _ in range(N_EXTRA)])
    yield
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM collaboration WHERE name LIKE 'bulk-collab-%'"))


@pytest.mark.parametrize("transports", [["polling"], ["websocket"], None], ids=["polling", "websocket", "upgrade"])
def test_global_user_with_many_collaborations(transports, many_collaborations, world, db, clients, tokens):
    rooms = world.user_rooms(world.u_glob)
    assert len(rooms) >= N_EXTRA
    rec = clients(tokens.access(world.u_glob), label="glob-many", transports=transports)
    try:
        rec.wait_count(len(rooms), timeout=15)
    except AssertionError:
        pass
    got = rec.snapshot()
    assert sorted(got, key=repr) == sorted([join_msg("User", world.u_glob.name, r) for r in rooms], key=repr), (
        f"got {len(got)} of the {len(rooms)} join messages"
    )
