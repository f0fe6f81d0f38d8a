"""Database unavailable while events flow (issue 12, fault "database unavailable").

One instance on RabbitMQ whose `uri` reaches PostgreSQL through a TCP proxy
the test cuts (listener closed, open connections reset) and restores. While
the database is away:

* nodes already connected keep receiving what vantage6's REST API publishes
  on the exchange (`new_task`, through a write-only ``KombuManager``, as
  Flask-SocketIO's ``message_queue`` writes it): every event, exactly once;
* `/ready` answers within 1 s, 503 naming the database;
* a node that connects gets its CONNECT acknowledged at once (vantage6's
  ``always_connect``) and is served (`sync`, rooms) once the database is
  back: the server keeps its socket and retries the identification (README,
  "Database outages": vantage6-node 4.15.2 does not come back from a
  server-initiated disconnect, so refusing it would lose it for good);
* afterwards `/ready` is 200 again and the server never exited.

PostgreSQL only: a SQLite file cannot be cut off.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import pytest

import mq_support
from compat_support import node_connect_sequence
from mq_support import AMQP_URL
from skip_policy import skip_by_design
from support import DEFAULT_TIMEOUT, Recorder, ServerProcess, http_get, quiesce, wait_until
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.broker
broker = pytest.fixture(scope="module")(mq_support.broker_fixture)

#: How long the database stays away.
OUTAGE = 6.0
#: Events published while it is away.
EVENTS = 200
#: Bound on `/ready`'s answer (the issue's).
READY_BOUND = 1.0
#: Liveness bound on "database back → the waiting node's connect sequence".
RECOVERY_BOUND = 20.0


@pytest.fixture(scope="module")
def cut(broker, db, jwt_secret, tmp_path_factory):
    if db.backend != "postgres":
        skip_by_design("needs a database server to cut off: PostgreSQL only (SQLite is a file)")
    url = urlsplit(db.uri)
    proxy = TcpProxy(url.port or 5432).start()
    uri = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
    server = ServerProcess(tmp_path_factory.mktemp("server-cut-mq"), db, jwt_secret, uri=uri,
                           sweep_interval=60, name="server-cut-mq",
                           extra={"rabbitmq": {"uri": broker}})
    server.start()
    yield server, proxy
    mq_support.stop_serve(server)
    proxy.stop()


def timed_ready(server) -> tuple[int, float, str]:
    started = time.monotonic()
    status, _, body = http_get(server.url + "/ready", timeout=5)
    return status, time.monotonic() - started, body.decode(errors="replace")


def test_established_nodes_keep_receiving_while_the_database_is_away(world, db, tokens, cut,
                                                                     figures):
    import socketio  # python-socketio 5.15.0, what vantage6 4.15.2's REST API runs

    server, proxy = cut
    a1, b1 = world.node_a1, world.node_b1
    established = Recorder(server.url, tokens.access(b1), label="b1")
    late = Recorder(server.url, tokens.access(a1), label="a1")
    mgr = socketio.KombuManager(AMQP_URL, channel="flask-socketio", write_only=True)
    room = f"collaboration_{world.c1.id}"
    try:
        established.connect()
        established.wait_for(lambda evs: node_connect_sequence(b1) == evs, what="b1 connected")
        quiesce(established)
        established.clear()
        assert timed_ready(server)[0] == 200

        proxy.stop()
        # the pool notices on its next use; /ready is such a use
        ready_down = [timed_ready(server) for _ in range(3)]
        for status, took, body in ready_down:
            assert status == 503 and "database" in body, (status, body)
            assert took <= READY_BOUND, f"/ready took {took:.2f} s during the outage"

        started = time.monotonic()
        late.connect()  # acknowledged while the database is away
        connect_took = time.monotonic() - started
        assert late.connected

        sent = []
        for i in range(EVENTS):
            payload = {"id": 100_000 + i, "parent_id": None}
            mgr.emit("new_task", payload, namespace="/tasks", room=room)
            sent.append(("new_task", payload))
            time.sleep(OUTAGE / EVENTS)
        established.wait_for(lambda evs: len(evs) >= EVENTS, DEFAULT_TIMEOUT,
                             what=f"{EVENTS} new_task events during the outage")
        time.sleep(0.5)  # a duplicate would be here by now
        got = established.snapshot()
        assert got == sent, "every event exactly once, in order, while the database is away"
        # the late node is kept, waiting: no sync, no room events yet
        assert late.snapshot() == []
        assert db.auth_row(a1.id)[0] == "offline"

        proxy.start()
        restored = time.monotonic()
        late.wait_for(lambda evs: len(evs) >= len(node_connect_sequence(a1)), RECOVERY_BOUND,
                      what="a1's connect sequence after the database came back")
        recovered = time.monotonic() - restored
        assert late.snapshot()[: len(node_connect_sequence(a1))] == node_connect_sequence(a1)
        wait_until(lambda: timed_ready(server)[0] == 200, DEFAULT_TIMEOUT, 0.1,
                   what="/ready 200 after the database came back")
        ready_back = time.monotonic() - restored
        assert db.auth_row(a1.id)[0] == "online"
        server.assert_alive()
        figures(
            f"\n[database outage, events] {EVENTS} new_task published during a {OUTAGE:.0f} s "
            f"outage: {len(got)} delivered, {EVENTS - len(got)} lost; /ready during it: "
            + ", ".join(f"{s} in {t * 1000:.0f} ms" for s, t, _ in ready_down)
            + f"; CONNECT of a node during it acknowledged in {connect_took * 1000:.0f} ms, "
            f"its connect sequence {recovered:.2f} s after the database came back "
            f"(bound {RECOVERY_BOUND:.0f} s); /ready 200 again after {ready_back:.2f} s")
    finally:
        if not proxy.running:
            proxy.start()
        for r in (established, late):
            r.disconnect()
