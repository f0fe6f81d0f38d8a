"""A broker outage with two instances (issue 12, points 1a, 2, 5).

Two ``v6-socketio serve`` instances A and B share a private RabbitMQ node
(clients/rabbit_node.py: its own ports and data directory; the machine's shared
broker is never touched). Node a1 is on A, node b1 on B, both in collaboration
1; each sends a steady stream of ``algorithm_status_change`` events (status
``a-<n>`` / ``b-<n>``, 20 per second each), which the instance relays to the
collaboration: to its own clients directly, to the other instance through the
broker. The broker's VM is then SIGKILLed, the streams go on for ~10 s, and it
is started again on the same data directory (so the durable queues survive).
B reaches the broker through a TCP proxy that is cut with the broker and
restored 3 s after it is back, so A is back first and publishes while B is
still away.

Asserted:

* neither instance exits;
* local delivery never stops: each node receives every event of its own
  instance, before, during and after the outage;
* ``/ready`` answers 503 naming the broker while it is down, 200 afterwards;
* cross-instance delivery resumes within 5 s of the broker accepting
  connections again (the time is printed);
* the only events the other instance misses are events published while the
  broker was down, and their number equals the sender's
  ``v6_socketio_broker_publish_lost_total{event="algorithm_status_change"}``
  and the one summary line it logs when publishing works again;
* events the broker had taken before the kill are not lost (they were in the
  receiver's durable queue), nor those published by the first instance back
  while the other is still reconnecting (the first one back binds the other's
  queue again; RabbitMQ dropped the binding with the non-durable exchange).
"""
from __future__ import annotations

import time

import pytest

from broker_stream import EVENT, Stream, TimedRecorder, lost_counter, ready, summaries
from compat_support import a1_status_payload, node_connect_sequence, serving
from rabbit_node import RabbitNode
from support import ServerProcess, wait_until
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.broker  # a broker test (conftest.py); its broker is its own
OUTAGE = 10.0  # seconds between the kill and the restart
LAG = 3.0  # B reaches the broker this much later than A (its proxy stays cut)
RESUME_BOUND = 5.0  # the bound for cross-instance delivery after the broker is back


@pytest.fixture(scope="module")
def rabbit():
    node = RabbitNode("outage")
    try:
        node.start()
    except RuntimeError as exc:
        node.cleanup()
        pytest.fail(f"cannot start a private RabbitMQ node: {exc}")
    yield node
    node.cleanup()


@pytest.fixture(scope="module")
def pair(rabbit, db, jwt_secret, tmp_path_factory):
    """A on the broker, B through a proxy the test cuts with the broker and restores later."""
    proxy = TcpProxy(rabbit.port).start()
    workdir = tmp_path_factory.mktemp(f"outage-{db.backend}")
    uris = {"a": rabbit.url, "b": f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2f"}
    procs = [ServerProcess(workdir, db, jwt_secret, sweep_interval=2,
                           extra={"rabbitmq": {"uri": uris[n]}},
                           name=f"outage-{n}-{db.backend}") for n in ("a", "b")]
    try:
        with serving(*procs):
            yield (*procs, proxy)
    finally:
        proxy.stop()


def test_broker_killed_and_restarted(rabbit, pair, world, tokens, figures):
    a, b, proxy = pair
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
        # Both instances must know each other (heartbeats) before the outage.
        time.sleep(1.5)
        sa, sb = Stream(a1, "a", payload_a), Stream(b1, "b", payload_b)
        streams = [sa, sb]
        for s in streams:
            s.start()
        wait_until(lambda: "a-40" in b1.received("a-") and "b-40" in a1.received("b-"),
                   timeout=10, what="cross-instance delivery before the outage")
        lost_before = (lost_counter(a), lost_counter(b))
        log_offsets = (a.log_path.stat().st_size, b.log_path.stat().st_size)

        t_kill = time.monotonic()
        rabbit.kill()
        proxy.stop()
        ready_samples: list[tuple[float, int, int, str]] = []
        while time.monotonic() - t_kill < OUTAGE:
            ra, rb = ready(a), ready(b)
            ready_samples.append((time.monotonic(), ra[0], rb[0], ra[1] + " | " + rb[1]))
            time.sleep(0.25)
        rabbit.start()  # blocks until it accepts connections (several seconds)
        t_back = rabbit.accepting_at
        # A is back at once; B only after LAG: what A publishes meanwhile must wait in B's
        # queue (A binds it again), not vanish with the binding the restart dropped.
        time.sleep(LAG)
        proxy.start()
        t_b_back = time.monotonic()
        for s in streams:
            assert s.is_alive(), f"stream {s.tag} stopped: {s.error!r}"

        def resumed():
            ra = [t for st, t in b1.received("a-").items() if sa.sent.get(st, 0) >= t_back]
            rb = [t for st, t in a1.received("b-").items() if sb.sent.get(st, 0) >= t_b_back]
            return (min(ra), min(rb)) if ra and rb else None

        wait_until(lambda: resumed() is not None, timeout=20,
                   what="cross-instance delivery after the broker is back")
        first_ab, first_ba = resumed()
        time.sleep(2)  # some steady traffic after the recovery
        for s in streams:
            s.stop_flag.set()
            s.join(5)
            assert s.error is None, f"stream {s.tag}: {s.error!r}"
        wait_until(lambda: ready(a)[0] == 200 and ready(b)[0] == 200, timeout=10,
                   what="/ready 200 on both instances after the outage")
        time.sleep(1.5)  # the last events in flight
        a.assert_alive()
        b.assert_alive()

        # /ready while the broker was down (after the drivers noticed: one second in).
        down = [x for x in ready_samples if x[0] >= t_kill + 1.0]
        assert down, "no /ready sample during the outage"
        bad = [x for x in down if x[1] != 503 or x[2] != 503 or "broker" not in x[3]]
        assert not bad, f"/ready during the outage: {bad[:3]}"

        # A published again soon after the broker was back; all it published while B was still
        # away reached B.
        back_a = sorted(sa.sent[st] for st in b1.received("a-") if sa.sent[st] >= t_back)
        a_again = back_a[0] - t_back
        held = [st for st, t in sa.sent.items() if t_back + 1.0 <= t <= t_b_back - 0.3]
        held_missed = [st for st in held if st not in b1.received("a-")]
        assert held and not held_missed, (
            f"of {len(held)} events A published while B was reconnecting, B missed "
            f"{len(held_missed)}: {held_missed[:5]}")
        b_again = max(first_ab, first_ba) - t_b_back
        report = {"outage_s": round(t_back - t_kill, 2), "b_lag_s": LAG,
                  "a_publishing_again_after_broker_back_s": round(a_again, 2),
                  "held_for_b_while_it_reconnected": len(held),
                  "b_delivering_again_after_its_broker_back_s": round(b_again, 2)}
        for sender, stream, receiver, local, tag, back in (
                (a, sa, b1, a1, "a", t_back), (b, sb, a1, b1, "b", t_b_back)):
            sent = stream.sent
            # local delivery never stopped
            local_missing = set(sent) - set(local.received(f"{tag}-"))
            assert not local_missing, (f"{local.label} missed {len(local_missing)} events of its "
                                       f"own instance: {sorted(local_missing)[:10]}")
            got = receiver.received(f"{tag}-")
            missing = set(sent) - set(got)
            extra = set(got) - set(sent)
            assert not extra, f"{receiver.label}: unknown statuses {sorted(extra)[:5]}"
            # only events published while the broker was down are missing
            outside = sorted((sent[s] - t_kill, s) for s in missing
                             if not (t_kill - 0.5 <= sent[s] <= back + RESUME_BOUND))
            assert not outside, (f"{receiver.label} missed events sent outside the outage "
                                 f"(seconds after the kill, status): {outside[:10]}")
            counted = lost_counter(sender) - lost_before[0 if tag == "a" else 1]
            lines = summaries(sender, log_offsets[0 if tag == "a" else 1])
            key = "A->B" if tag == "a" else "B->A"
            report[key] = {"sent": len(sent), "delivered": len(got), "lost": len(missing),
                           "counted_lost": counted, "duplicates": receiver.duplicates(f"{tag}-"),
                           "summary_lines": lines}
            assert counted == len(missing), (
                f"{key}: {len(missing)} events missed, the sender's lost counter says {counted}")
            assert len(lines) == 1, f"{key}: expected one outage summary line, got {lines}"
            assert lines[0] == (len(missing), f"{EVENT}={len(missing)}" if missing else ""), (
                f"{key}: summary line {lines[0]} for {len(missing)} missed events")
            assert len(missing) > 0, f"{key}: nothing was lost although the broker was down"
        assert a_again <= RESUME_BOUND, (
            f"A published across again {a_again:.2f}s after the broker was back")
        assert b_again <= RESUME_BOUND, (
            f"cross-instance delivery through B resumed {b_again:.2f}s after B could reach the "
            "broker again")
        figures(f"broker outage figures: {report}")
    finally:
        for s in streams:
            s.stop_flag.set()
        for rec in (a1, b1):
            try:
                rec.disconnect()
            except Exception:
                pass
