"""One of three instances killed with SIGKILL (issue 12, fault "instance kill").

Three ``v6-socketio serve`` instances A, B and C on the shared RabbitMQ and
the session's database. User u_col (collaboration scope: rooms of
collaborations 1 and 2) on A; node b1 (collaboration 1) on B, streaming
``algorithm_status_change`` events (20 per second) that A relays to u_col;
nodes a1 (collaboration 1) and c2 (collaboration 2) and user u_org on C. C
is SIGKILLed: it runs no disconnect handler. c2 comes back at once on A (as a
node does through the proxy); a1 and u_org do not come back.

Asserted:

* A and B stay up; u_col and b1 stay connected and u_col receives every one
  of b1's status changes, before, during and after the kill (no gap);
* a1, which did not come back, is marked offline and announced, as
  ``on_disconnect`` would have: u_col and b1 hear the left message and
  ``node-offline`` for it exactly once, within 30 s of the kill (the time is
  printed); its configuration rows are deleted; u_org is marked offline too;
* c2, which came back on A, stays online and nobody hears ``node-offline``
  for it;
* C's queue, which would collect every message of the exchange until its
  5-minute ``x-expires``, is deleted within the same bound;
* exactly one instance released a1 and u_org
  (``v6_socketio_lost_instance_clients_released_total`` sums to 2), and both
  survivors counted C as lost (``v6_socketio_broker_peers_lost_total``).
"""
from __future__ import annotations

import time

import pytest

import mq_support
from broker_stream import EVENT, Stream, TimedRecorder
from compat_support import a1_status_payload, node_connect_sequence, node_leaves, serve_queue
from mq_support import queue_exists
from support import DEFAULT_TIMEOUT, Recorder, ServerProcess, wait_until

pytestmark = pytest.mark.broker
broker = pytest.fixture(scope="module")(mq_support.broker_fixture)

#: The issue's bound: a dead instance's nodes offline and announced, its queue gone.
RELEASE_BOUND = 30.0


def metric(server, name, **labels) -> float:
    return sum(v for n, lab, v in server.metrics()
               if n == name and all(lab.get(k) == w for k, w in labels.items()))


def departures(rec: Recorder, node) -> list:
    """What ``rec`` heard of ``node`` leaving: its left messages and ``node-offline``s."""
    left = f"{node.name} left room "
    return [(e, d) for e, d in rec.snapshot()
            if (e == "message" and isinstance(d, str) and d.startswith(left))
            or (e == "node-offline" and isinstance(d, dict) and d.get("id") == node.id)]


def test_sigkilled_instance_clients_are_released_by_the_survivors_and_its_queue_deleted(
        broker, world, db, tokens, jwt_secret, tmp_path, figures):
    a, b, c = (ServerProcess(tmp_path, db, jwt_secret, sweep_interval=60,
                             extra={"rabbitmq": {"uri": broker}}, name=f"kill-{n}-{db.backend}")
               for n in ("a", "b", "c"))
    a1, b1, c2 = world.node_a1, world.node_b1, world.node_c2
    room1 = f"collaboration_{world.c1.id}"
    clients: list[Recorder] = []
    stream = None
    try:
        for s in (a, b, c):
            s.start()
        c_queue = serve_queue(c)
        assert c_queue and queue_exists(c_queue)
        user = TimedRecorder(a.url, tokens.access(world.u_col), label="u_col@A")
        on_b = Recorder(b.url, tokens.access(b1), label="b1@B")
        a1_on_c = Recorder(c.url, tokens.access(a1), label="a1@C")
        c2_on_c = Recorder(c.url, tokens.access(c2), label="c2@C")
        u_org_on_c = Recorder(c.url, tokens.access(world.u_org), label="u_org@C")
        clients += [user, on_b, a1_on_c, c2_on_c, u_org_on_c]
        u_org_on_c.connect()
        user.connect()
        on_b.connect()
        on_b.wait_for(lambda evs: evs[:3] == node_connect_sequence(b1), what="b1 connected")
        for rec, node in ((a1_on_c, a1), (c2_on_c, c2)):
            rec.connect()
            rec.wait_for(lambda evs, n=node: evs[:3] == node_connect_sequence(n),
                         what=f"{node.name} connected")
        # a1 reports its configuration (vantage6 deletes it on disconnect)
        a1_on_c.emit("node_info_update", {"encryption": False, "allowed_algorithms": ["x"]})
        wait_until(lambda: bool(db.node_config(a1.id)), DEFAULT_TIMEOUT,
                   what="a1's configuration rows written")
        # Heartbeats every 5 s: let each instance hear the others' announced nodes.
        time.sleep(6)
        assert [db.auth_row(x.id)[0] for x in (a1, c2, world.u_org)] == ["online"] * 3

        payload_b = a1_status_payload(world, run_id=world.r_b.id, node_id=b1.id,
                                      organization_id=world.org_b.id)
        stream = Stream(on_b, "b", payload_b)
        stream.start()
        wait_until(lambda: "b-20" in user.received("b-"), timeout=10,
                   what="b1's status changes reach u_col on A")

        t_kill = time.monotonic()
        c.proc.kill()
        c.proc.wait(10)
        # c2 comes back at once on another instance (as through the proxy).
        c2_back = Recorder(a.url, tokens.access(c2), label="c2@A")
        clients.append(c2_back)
        c2_back.connect()
        c2_back.wait_for(lambda evs: evs[:3] == node_connect_sequence(c2), what="c2 back on A")

        wait_until(lambda: db.auth_row(a1.id)[0] == "offline", RELEASE_BOUND + 5,
                   what="a1 (on the killed instance) offline in the database")
        t_offline = time.monotonic() - t_kill
        expected = node_leaves(a1, room1)
        wait_until(lambda: len(departures(user, a1)) >= 2 and len(departures(on_b, a1)) >= 2,
                   DEFAULT_TIMEOUT, what="a1's departure announced to u_col and b1")
        t_announced = time.monotonic() - t_kill
        wait_until(lambda: not queue_exists(c_queue), RELEASE_BOUND + 5,
                   what="the killed instance's queue deleted")
        t_queue = time.monotonic() - t_kill
        time.sleep(3)  # anything announced twice would have arrived

        stream.stop_flag.set()
        stream.join(5)
        assert stream.error is None, f"b1's stream: {stream.error!r}"
        time.sleep(1)
        a.assert_alive()
        b.assert_alive()
        assert user.connected and on_b.connected and c2_back.connected

        assert t_offline <= RELEASE_BOUND, f"a1 offline {t_offline:.1f} s after the kill"
        assert t_announced <= RELEASE_BOUND, f"a1 announced {t_announced:.1f} s after the kill"
        assert t_queue <= RELEASE_BOUND, f"C's queue deleted {t_queue:.1f} s after the kill"
        assert departures(user, a1) == expected, departures(user, a1)
        assert departures(on_b, a1) == expected, departures(on_b, a1)
        assert departures(user, c2) == [], "c2 came back: nobody may hear it leave"
        assert db.auth_row(c2.id)[0] == "online"
        assert db.auth_row(world.u_org.id)[0] == "offline", "u_org (not back) still online"
        assert not db.node_config(a1.id), "a1's configuration rows are not deleted"

        sent = set(stream.sent)
        got = set(user.received("b-"))
        missing = sorted(sent - got, key=lambda s: int(s.split("-")[1]))
        assert not missing, f"u_col on A missed {len(missing)} of b1's status changes: {missing[:10]}"

        released = [metric(s, "v6_socketio_lost_instance_clients_released_total") for s in (a, b)]
        assert sum(released) == 2, f"released per survivor (A, B): {released}"
        lost = [metric(s, "v6_socketio_broker_peers_lost_total") for s in (a, b)]
        assert all(n >= 1 for n in lost), f"peers lost per survivor (A, B): {lost}"
        assert metric(a, "v6_socketio_connected_sockets") == 2  # u_col and c2
        figures(f"\n[instance kill] SIGKILL of 1 of 3 instances: a1 and u_org (not back) offline after "
                f"{t_offline:.1f} s, announced (left + node-offline, once) after "
                f"{t_announced:.1f} s, C's queue deleted after {t_queue:.1f} s (bound "
                f"{RELEASE_BOUND:.0f} s); c2 back on A stays online; u_col received all "
                f"{len(sent)} of b1's {EVENT}s across the kill; released by "
                f"{'A' if released[0] else 'B'}")
    finally:
        if stream is not None:
            stream.stop_flag.set()
        for r in clients:
            r.disconnect()
        mq_support.stop_serve(a, b, c)
