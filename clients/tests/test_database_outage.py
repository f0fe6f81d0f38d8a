"""No deaf sessions: clients connecting while the database is unreachable.

A server of its own whose `uri` reaches PostgreSQL through a TCP proxy the
test cuts (listener closed, open connections reset) and restores. A client
whose identification cannot be decided is kept connected, its
identification retried, and once the database answers it gets the normal
connect sequence; a client that leaves meanwhile is given up (README,
"Database outages"). PostgreSQL only: a SQLite file cannot be cut off.
The last test (both backends, the session server) checks that a permanent
failure, an inconsistent row, is decided at once and not retried.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from compat_support import node_connect_sequence
from skip_policy import skip_by_design
from support import (
    DEFAULT_TIMEOUT, Ent, Recorder, ServerProcess, Unordered, expect_exact, expect_silence, join_msg,
    node_status_payload, quiesce, wait_until,
)
from tcp_proxy import TcpProxy

#: Longer than the pool's 10 s acquire timeout would matter here; the
#: server's attempts are bounded at 5 s, so a few fail meanwhile.
OUTAGE = 6.0
#: Liveness bound on "database back → connect sequence delivered" (printed).
RECOVERY_BOUND = 20.0


@pytest.fixture(scope="module")
def cut(db, jwt_secret, tmp_path_factory):
    """(server, proxy): a server reaching the database through the proxy."""
    if db.backend != "postgres":
        skip_by_design("needs a database server to cut off: PostgreSQL only (SQLite is a file)")
    url = urlsplit(db.uri)
    proxy = TcpProxy(url.port or 5432).start()
    uri = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
    server = ServerProcess(tmp_path_factory.mktemp("server-cut"), db, jwt_secret, uri=uri,
                           sweep_interval=60, name="server-cut")
    server.start()
    yield server, proxy
    server.stop()
    proxy.stop()


def metric(server: ServerProcess, name: str, **labels) -> float:
    return sum(v for n, lab, v in server.metrics()
               if n == name and all(lab.get(k) == w for k, w in labels.items()))


def recorders(server, tokens, *ents):
    return [Recorder(server.url, tokens.access(e), label=e.name) for e in ents]


def test_clients_connecting_during_outage_get_their_connect_sequence_after_it(world, db, tokens, cut,
                                                                            figures):
    server, proxy = cut
    a1, b1, orgb = world.node_a1, world.node_b1, world.u_orgb
    established, = recorders(server, tokens, b1)
    made = [established]
    try:
        established.connect()
        established.wait_for(lambda evs: node_connect_sequence(b1) == evs, what="b1 connected")
        quiesce(established)
        retries_before = metric(server, "v6_socketio_identification_retries_total")

        proxy.stop()
        node, user = recorders(server, tokens, a1, orgb)
        made += [node, user]
        node.connect()  # the CONNECT is answered: vantage6's always_connect
        user.connect()
        # sent before its identification: waits in its queue, handled after it
        node.emit("node_info_update", {"database_labels": ["default"]})
        wait_until(lambda: metric(server, "v6_socketio_identifications_waiting") == 2,
                   DEFAULT_TIMEOUT, 0.1, what="both identifications waiting for the database")
        time.sleep(OUTAGE)
        expect_silence(node, user, established, settle=0)
        assert node.connected and user.connected
        assert db.auth_row(a1.id)[0] == "offline"
        assert metric(server, "v6_socketio_identification_retries_total") - retries_before >= 2

        proxy.start()
        restored = time.monotonic()
        node.wait_for(lambda evs: len(evs) >= len(node_connect_sequence(a1)),
                      RECOVERY_BOUND, what="a1's connect sequence after the restore")
        recovered = time.monotonic() - restored
        c1 = f"collaboration_{world.c1.id}"
        expect_exact({
            node: node_connect_sequence(a1),
            user: Unordered(join_msg("User", orgb.name, r) for r in world.user_rooms(orgb)),
            # both announced to b1's rooms, in either order
            established: Unordered([("node-online", node_status_payload(a1)),
                                    join_msg("Node", a1.name, c1)]
                                   + [join_msg("User", orgb.name, r) for r in world.user_rooms(orgb)
                                      if r in world.node_public_rooms(b1)]),
        })
        assert db.auth_row(a1.id)[0] == "online"
        wait_until(lambda: db.node_config_count(a1.id) > 0, DEFAULT_TIMEOUT,
                   what="the queued node_info_update stored")
        assert metric(server, "v6_socketio_identifications_waiting") == 0
        figures(f"\n[database outage, compatibility suite] database back -> node's connect "
              f"sequence complete: {recovered:.2f} s (bound {RECOVERY_BOUND:.0f} s)")
    finally:
        if not proxy.running:
            proxy.start()
        for r in made:
            r.disconnect()


def test_client_leaving_during_outage_is_given_up(world, db, tokens, cut):
    server, proxy = cut
    a1, b1 = world.node_a1, world.node_b1
    established, node = recorders(server, tokens, b1, a1)
    try:
        established.connect()
        established.wait_for(lambda evs: node_connect_sequence(b1) == evs, what="b1 connected")
        quiesce(established)
        given_up = metric(server, "v6_socketio_unidentified_connections_total",
                          reason="database_error")

        proxy.stop()
        node.connect()
        wait_until(lambda: metric(server, "v6_socketio_identifications_waiting") == 1,
                   DEFAULT_TIMEOUT, 0.1, what="a1's identification waiting")
        node.disconnect()
        # the attempt under way ends (at most 5 s), then the retries stop
        wait_until(lambda: metric(server, "v6_socketio_identifications_waiting") == 0,
                   RECOVERY_BOUND, 0.1, what="the retries given up")
        assert metric(server, "v6_socketio_unidentified_connections_total",
                      reason="database_error") == given_up + 1
        proxy.start()
        expect_silence(established)
        assert db.auth_row(a1.id)[0] == "offline"
        assert server.alive()
    finally:
        if not proxy.running:
            proxy.start()
        established.disconnect()
        node.disconnect()


def test_inconsistent_row_is_decided_not_retried(world, db, srv, tokens, clients):
    """A node row without its collaboration (vantage6 never leaves one so) is
    not a transient failure: counted once, not retried; the client stays
    connected and unidentified, as any rejected client."""
    from vantage6.server import db as v6db

    with db.session() as s:
        broken = v6db.Node(name=db.unique("node-broken"), organization_id=world.org_a.id,
                           status="offline")
        s.add(broken)
        s.flush()
        broken_id = broken.id

    def counts():
        return (metric(srv, "v6_socketio_unidentified_connections_total",
                       reason="inconsistent_database"),
                metric(srv, "v6_socketio_identification_retries_total"))

    inconsistent, retries = counts()
    rec = clients(tokens.access(Ent(broken_id, "broken")), label="broken")
    wait_until(lambda: counts()[0] == inconsistent + 1, DEFAULT_TIMEOUT, 0.1,
               what="the inconsistent row counted")
    expect_silence(rec, settle=1.0)
    assert counts() == (inconsistent + 1, retries)
    assert rec.connected
    assert metric(srv, "v6_socketio_identifications_waiting") == 0
