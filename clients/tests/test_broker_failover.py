"""Several broker URIs: kombu's fail-over list (issue 12, point 2).

Two private RabbitMQ nodes P and Q (clients/rabbit_node.py; not clustered:
the test is about the URI list, not about RabbitMQ clustering) and two
``v6-socketio serve`` instances A and B configured with
``rabbitmq: {uri: "<P>;<Q>"}``. Node a1 on A and node b1 on B stream
``algorithm_status_change`` events to collaboration 1, which each instance
relays to the other through the broker.

* At start-up both instances connect to P, the first URI.
* P stops (gracefully): both move to Q (round-robin, the next URI), and
  cross-instance delivery resumes through Q; the time from the start of P's
  stop to the first event delivered across both ways is printed.
* P is started again and Q is killed (SIGKILL): both move on round-robin to
  P, the URI after Q, and delivery resumes again.
* After each move every event sent once both instances are back is delivered
  across, and each instance logged the URI it moved to, password hidden.

Events sent during a move are lost or not depending on which instance got
there first (the brokers are independent: an instance's queue on the broker
it left is out of reach); their counts are printed, not asserted.
"""
from __future__ import annotations

import re
import threading
import time

import pytest

from broker_stream import Stream, TimedRecorder, lost_counter, ready
from compat_support import a1_status_payload, node_connect_sequence, serving
from rabbit_node import RabbitNode
from support import ServerProcess, wait_until

pytestmark = pytest.mark.broker  # a broker test (conftest.py); its brokers are its own
MOVE_BOUND = 10.0  # from the stop of the broker in use to delivery through the next one


@pytest.fixture(scope="module")
def rabbits():
    nodes = [RabbitNode("fo-p"), RabbitNode("fo-q")]
    errors: list[str] = []

    def start(n):
        try:
            n.start()
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    if errors:
        for n in nodes:
            n.cleanup()
        pytest.fail(f"cannot start the private RabbitMQ nodes: {errors}")
    yield nodes
    for n in nodes:
        n.cleanup()


@pytest.fixture(scope="module")
def pair(rabbits, db, jwt_secret, tmp_path_factory):
    p, q = rabbits
    # a real-looking list: credentials in each URI (the log must hide them), blanks after `;`
    uri = f"amqp://guest:guest@127.0.0.1:{p.port}//; amqp://guest:guest@127.0.0.1:{q.port}//"
    workdir = tmp_path_factory.mktemp(f"failover-{db.backend}")
    procs = [ServerProcess(workdir, db, jwt_secret, sweep_interval=2,
                           extra={"rabbitmq": {"uri": uri}},
                           name=f"failover-{n}-{db.backend}") for n in ("a", "b")]
    with serving(*procs):
        yield procs


def log_text(server, offset: int = 0) -> str:
    text = server.log_path.read_bytes()[offset:].decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_instances_follow_the_uri_list(rabbits, pair, world, tokens, figures):
    p, q = rabbits
    a, b = pair
    for srv in pair:
        start_line = [l for l in log_text(srv).splitlines() if "sharing rooms over RabbitMQ" in l]
        assert start_line and f"connected_to=amqp://guest:***@127.0.0.1:{p.port}//" in start_line[0], \
            f"{srv.log_path.name}: not connected to the first URI: {start_line}"
        assert "guest:guest" not in log_text(srv), "a password in the log"
    payload_a = a1_status_payload(world)
    payload_b = a1_status_payload(world, run_id=world.r_b.id, node_id=world.node_b1.id,
                                  organization_id=world.org_b.id)
    a1 = TimedRecorder(a.url, tokens.access(world.node_a1), label="a1@A")
    b1 = TimedRecorder(b.url, tokens.access(world.node_b1), label="b1@B")
    streams: list[Stream] = []
    try:
        for rec, node in ((a1, world.node_a1), (b1, world.node_b1)):
            rec.connect()
            rec.wait_count(len(node_connect_sequence(node)))
        time.sleep(1.5)  # heartbeats: the instances know each other
        sa, sb = Stream(a1, "a", payload_a), Stream(b1, "b", payload_b)
        streams = [sa, sb]
        for s in streams:
            s.start()
        wait_until(lambda: "a-20" in b1.received("a-") and "b-20" in a1.received("b-"),
                   timeout=10, what="cross-instance delivery through P")

        def first_across_after(t0: float):
            ra = [t for st, t in b1.received("a-").items() if sa.sent.get(st, 0) >= t0]
            rb = [t for st, t in a1.received("b-").items() if sb.sent.get(st, 0) >= t0]
            return max(min(ra), min(rb)) if ra and rb else None

        report = {}
        for step, (leaving, going, how) in enumerate(((p, q, "stop"), (q, p, "kill"))):
            offsets = (a.log_path.stat().st_size, b.log_path.stat().st_size)
            if step == 1:
                p.start()  # P back before Q goes: the list goes round to it
                time.sleep(0.5)
            t0 = time.monotonic()
            leaving.stop() if how == "stop" else leaving.kill()
            t_gone = time.monotonic()
            wait_until(lambda: first_across_after(t0) is not None, timeout=MOVE_BOUND + 10,
                       what=f"delivery through the next broker after {how} of :{leaving.port}")
            resumed = first_across_after(t0)
            moved = going.port
            for srv, off in zip(pair, offsets):
                text = log_text(srv, off)
                assert "reconnected to the AMQP broker" in text and \
                    f"uri=amqp://guest:***@127.0.0.1:{moved}//" in text, \
                    f"{srv.log_path.name}: no reconnect to :{moved} logged:\n{text[-2000:]}"
                assert "guest:guest" not in text
            # steady again: everything sent from a second after the resume on arrives across
            t_steady = resumed + 1.0
            time.sleep(2.5)
            for tag, stream, receiver in (("a", sa, b1), ("b", sb, a1)):
                later = [st for st, t in stream.sent.items() if t_steady <= t <= time.monotonic() - 1.0]
                got = receiver.received(f"{tag}-")
                missed = [st for st in later if st not in got]
                assert later and not missed, (f"after the move to :{moved}, {receiver.label} "
                                              f"missed {len(missed)} of {len(later)}: {missed[:5]}")
            # A graceful stop closes the clients' connections first and then takes its time,
            # so the instances may be on the next broker before it is gone: measured from t0.
            assert resumed - t0 <= MOVE_BOUND, (
                f"delivery resumed {resumed - t0:.2f}s after the broker's {how} began")
            report[f"{how} :{leaving.port} -> :{moved}"] = {
                "broker_gone_after_s": round(t_gone - t0, 2),
                "resumed_after_s": round(resumed - t0, 2),
            }
        for s in streams:
            s.stop_flag.set()
            s.join(5)
            assert s.error is None, f"stream {s.tag}: {s.error!r}"
        time.sleep(1.0)
        for tag, stream, receiver, local in (("a", sa, b1, a1), ("b", sb, a1, b1)):
            assert set(stream.sent) <= set(local.received(f"{tag}-")), "local delivery stopped"
            report[f"{tag} stream"] = {"sent": len(stream.sent),
                                       "delivered_across": len(receiver.received(f"{tag}-")),
                                       "counted_lost": lost_counter(a if tag == "a" else b)}
        for srv in pair:
            srv.assert_alive()
            assert ready(srv)[0] == 200, f"{srv.log_path.name}: /ready {ready(srv)}"
        figures(f"broker failover figures: {report}")
    finally:
        for s in streams:
            s.stop_flag.set()
        for rec in (a1, b1):
            try:
                rec.disconnect()
            except Exception:
                pass
