"""SIGTERM: a graceful stop with nodes connected (issue 12, fault "SIGTERM").

Two instances A and B on the shared RabbitMQ and the session's database;
node a1 on A, node b1 (same collaboration) on B. A is sent SIGTERM:

* it exits 0 within a bound (printed);
* a1 is marked offline and b1, on the other instance, hears a1 leave
  (the left message, then ``node-offline``), exactly once;
* A's queue is deleted from the broker;
* A closes its listener before it ends the sessions;
* A logs no "disconnects not all handled" warning (the sessions ended
  before the transports and the broker were closed);
* a1's transport is closed without a Socket.IO DISCONNECT (after its
  session ended), so a vantage6 node reconnects, through the proxy, to
  another instance (4.15.2 does not come back from a DISCONNECT).

Also: a websocket message above ``max_payload`` closes that connection
only; a client on the same instance goes on receiving.
"""
from __future__ import annotations

import signal
import time

import pytest

import mq_support
from compat_support import node_connect_sequence, node_leaves, serve_queue
from mq_support import queue_exists
from support import DEFAULT_TIMEOUT, Recorder, ServerProcess, expect_exact, quiesce, wait_until

pytestmark = pytest.mark.broker
broker = pytest.fixture(scope="module")(mq_support.broker_fixture)

#: Bound on SIGTERM → exit with a few clients (the drain's own limit is 10 s).
EXIT_BOUND = 5.0


def test_sigterm_marks_nodes_offline_announces_them_and_deletes_the_queue(
        broker, world, db, tokens, jwt_secret, tmp_path, figures):
    a, b = (ServerProcess(tmp_path, db, jwt_secret, sweep_interval=60,
                          extra={"rabbitmq": {"uri": broker}}, name=f"term-{n}-{db.backend}")
            for n in ("a", "b"))
    a1, b1 = world.node_a1, world.node_b1
    clients: list[Recorder] = []
    try:
        a.start()
        b.start()
        queue = serve_queue(a)
        assert queue and queue_exists(queue)
        on_b = Recorder(b.url, tokens.access(b1), label="b1@B")
        on_a = Recorder(a.url, tokens.access(a1), label="a1@A")
        clients += [on_b, on_a]
        on_b.connect()
        on_b.wait_for(lambda evs: evs == node_connect_sequence(b1), what="b1 connected to B")
        on_a.connect()
        on_a.wait_for(lambda evs: evs == node_connect_sequence(a1), what="a1 connected to A")
        wait_until(lambda: len(on_b.snapshot()) >= 2, DEFAULT_TIMEOUT, what="b1 heard a1 arrive")
        quiesce(on_a, on_b)
        assert db.auth_row(a1.id)[0] == "online"

        started = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        rc = a.proc.wait(EXIT_BOUND + 10)
        took = time.monotonic() - started
        assert rc == 0, f"exit code {rc}:\n{a.log_tail()}"
        assert took <= EXIT_BOUND, f"SIGTERM -> exit took {took:.2f} s"
        room = f"collaboration_{world.c1.id}"
        expect_exact({on_b: node_leaves(a1, room)})
        wait_until(lambda: db.auth_row(a1.id)[0] == "offline", DEFAULT_TIMEOUT,
                   what="a1 offline in the database")
        log = a.log_path.read_text(errors="replace")
        assert "not all handled" not in log, a.log_tail()
        # The listener is closed before the sessions are ended (src/listener.rs): new
        # connects are refused at TCP level while the drain runs.
        closed_at, drain_at = log.find("listener closed"), log.find("shutting down")
        assert 0 <= closed_at < drain_at, a.log_tail()
        assert not queue_exists(queue), f"A's queue {queue} is still declared"
        assert b.alive()
        figures(f"\n[SIGTERM] exit 0 after {took:.2f} s (bound {EXIT_BOUND:.0f} s); b1 on the "
                f"other instance heard a1 leave; a1 offline; queue {queue} deleted")
    finally:
        for r in clients:
            r.disconnect()
        mq_support.stop_serve(a, b)


def test_websocket_message_above_max_payload_closes_that_connection_only(
        world, db, tokens, jwt_secret, tmp_path, figures):
    import websocket  # websocket-client

    limit = 10_000
    srv = ServerProcess(tmp_path, db, jwt_secret, sweep_interval=60,
                        socketio_extra={"max_payload": limit}, name=f"wslimit-{db.backend}")
    srv.start()
    b1 = world.node_b1
    other = Recorder(srv.url, tokens.access(b1), label="b1", transports=["websocket"])
    try:
        other.connect()
        other.wait_for(lambda evs: evs == node_connect_sequence(b1), what="b1 connected")
        quiesce(other)
        ws_url = srv.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"

        def open_ws():
            ws = websocket.create_connection(ws_url, timeout=5)
            assert ws.recv().startswith("0")  # Engine.IO OPEN
            ws.send("40/tasks,")
            for _ in range(5):  # Engine.IO pings ("2") may come first
                frame = ws.recv()
                if frame == "2":
                    ws.send("3")
                    continue
                assert frame.startswith("40/tasks,"), frame
                return ws
            raise AssertionError("no CONNECT acknowledgement")

        small = open_ws()
        small.send("42/tasks," + '["message","' + "x" * (limit - 100) + '"]')
        small.send("3")  # a pong the server ignores: the connection is still open
        time.sleep(0.5)
        assert small.connected
        big = open_ws()
        big.send("42/tasks," + '["message","' + "x" * (limit * 2) + '"]')
        closed = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not closed:
            try:
                frame = big.recv()
                closed = frame in ("", None)
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
                closed = True
        assert closed, "a message above max_payload was accepted"
        srv.assert_alive()
        # the other clients are unaffected
        wait_until(lambda: other.connected, DEFAULT_TIMEOUT, what="b1 still connected")
        small.close()
        figures(f"\n[websocket limit] {limit * 2}-byte message over websocket with max_payload "
                f"{limit}: connection closed; a {limit - 100}-byte one accepted; others served")
    finally:
        other.disconnect()
        srv.stop()
