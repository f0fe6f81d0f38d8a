"""Junk on the exchange (issue 12): messages published straight to an instance's
``flask-socketio`` exchange with kombu, on a virtual host of this module's own (so no other
instance of the suite sees them).

Each junk kind is published N times, then a valid python-socketio ``emit`` to a room of a
connected node: the node receives the probe (the instance keeps delivering), the junk kind is
counted on ``/metrics`` exactly N times (``v6_socketio_broker_invalid_total``, ``_ignored_``,
``_unroutable_``), nothing of it reaches the node, and the log stays bounded: a 20,000-message
burst of junk gives a handful of lines, not one per message.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import kombu
import pytest

import mq_support
from compat_support import node_connect_sequence, serving
from support import Recorder, ServerProcess, wait_until

pytestmark = pytest.mark.broker  # uses RabbitMQ: runs in the broker shard (conftest.py)
EXCHANGE = "flask-socketio"
NS = "/tasks"


def ctl(*args: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=check)


@pytest.fixture(scope="module")
def vhost():
    """A virtual host of this module's own, removed afterwards."""
    reason = mq_support.broker_available()
    if reason:
        pytest.fail(f"RabbitMQ unavailable: {reason}")
    name = f"v6-junk-{uuid.uuid4().hex[:8]}"
    try:
        ctl("add_vhost", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"rabbitmqctl is needed for this test: {exc}")
    ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    ctl("delete_vhost", name, check=False)


@pytest.fixture(scope="module")
def instance(vhost, db, jwt_secret, tmp_path_factory):
    uri = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    srv = ServerProcess(tmp_path_factory.mktemp(f"junk-{db.backend}"), db, jwt_secret,
                        sweep_interval=2, extra={"rabbitmq": {"uri": uri}},
                        name=f"junk-{db.backend}")
    with serving(srv, stop=mq_support.stop_serve):
        srv.amqp_uri = uri
        srv.started_at = time.monotonic()
        yield srv


def host_id_of(srv) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", srv.log_path.read_text(errors="replace"))
    m = re.search(r'host_id="?([0-9a-f]{32})', text)
    assert m, "the instance did not log its host id"
    return m.group(1)


def broker_counters(srv) -> dict[str, float]:
    return {name: value for name, _, value in srv.metrics()
            if name.startswith("v6_socketio_broker_")}


def publish(uri: str, bodies):
    with kombu.Connection(uri, connect_timeout=5) as conn:
        ch = conn.channel()
        for body in bodies:
            if isinstance(body, str):
                body = body.encode()
            ch.basic_publish(ch.prepare_message(body, content_type="application/json"),
                             exchange=EXCHANGE, routing_key="")


def emit(event, data, room, host_id="0123456789abcdef0123456789abcdef", **extra):
    msg = {"method": "emit", "event": event, "data": data, "namespace": NS, "room": room,
           "skip_sid": None, "callback": None, "host_id": host_id}
    msg.update(extra)
    return json.dumps(msg)


def junk_kinds(room: str, own_host: str) -> list[tuple[str, list, str]]:
    """``(kind, bodies, counter)``: N bodies of one junk kind and the counter each one bumps."""
    n = 50
    return [
        ("not_json", [b"\x80\x04\x95pickle?"] * n, "invalid"),
        ("truncated_json", ['{"method": "emit", "event": "x", "data": ['] * n, "invalid"),
        ("not_an_object", ["[1, 2, 3]"] * n, "invalid"),
        ("unknown_method", [json.dumps({"method": "explode", "host_id": "h"})] * n, "invalid"),
        ("method_not_a_string", [json.dumps({"method": 1, "host_id": "h"})] * n, "invalid"),
        ("event_wrong_type", [emit({"not": "a name"}, ["x"], room)] * n, "invalid"),
        ("room_not_a_string", [emit("junk", ["x"], {"not": "a room"})] * n, "invalid"),
        ("room_list_of_lists", [emit("junk", ["x"], [[room]])] * n, "invalid"),
        ("binary_bad_base64", [emit("junk", [["x"], "!!!"], room, binary=True)] * n, "invalid"),
        ("callback_id_string", [json.dumps({"method": "callback", "host_id": own_host, "sid": "s",
                                            "namespace": NS, "id": "one", "args": []})] * n,
         "invalid"),
        ("missing_namespace_root", [json.dumps({"method": "emit", "event": "junk", "data": ["x"],
                                                "room": room, "host_id": "h"})] * n, "unroutable"),
        ("unknown_namespace", [emit("junk", ["x"], room).replace(f'"{NS}"', '"/nope"')] * n,
         "unroutable"),
        ("own_host_id", [emit("junk", ["x"], room, host_id=own_host)] * n, "ignored"),
        # 10 MB that is not JSON (a 10 MB valid emit is delivered, as python-socketio would).
        ("ten_megabytes", [b'{"method": "emit", "data": "' + b"x" * (10 * 1024 * 1024)] * 3,
         "invalid"),
    ]


@pytest.fixture()
def node(instance, world, tokens):
    rec = Recorder(instance.url, tokens.access(world.node_a1), label="node_a1")
    rec.connect()
    rec.wait_count(len(node_connect_sequence(world.node_a1)))
    rec.clear()
    yield rec
    rec.disconnect()


def probe(instance, node, room, tag):
    """A valid emit to the node's room reaches it (after everything published before it)."""
    publish(instance.amqp_uri, [emit("junk-probe", [tag], room)])
    node.wait_for(lambda evs: any(e == "junk-probe" for e, _ in evs),
                  what=f"the probe after {tag}")
    names = [e for e, _ in node.snapshot()]
    assert names == ["junk-probe"], f"after {tag}: {names}"
    node.clear()


def test_each_junk_kind_is_counted_and_delivery_goes_on(instance, node, world, figures):
    room = f"collaboration_{world.c1.id}"
    own = host_id_of(instance)
    probe(instance, node, room, "start")
    for kind, bodies, counter in junk_kinds(room, own):
        before = broker_counters(instance)
        publish(instance.amqp_uri, bodies)
        probe(instance, node, room, kind)
        after = broker_counters(instance)
        name = f"v6_socketio_broker_{counter}_total"
        delta = after.get(name, 0) - before.get(name, 0)
        figures(f"junk {kind}: {len(bodies)} published, {name} +{delta:g}")
        assert delta == len(bodies), (kind, name, delta)
        others = {k: after.get(k, 0) - before.get(k, 0)
                  for k in ("v6_socketio_broker_invalid_total",
                            "v6_socketio_broker_ignored_total",
                            "v6_socketio_broker_unroutable_total") if k != name}
        assert all(v == 0 for v in others.values()), (kind, others)
    instance.assert_alive()
    assert "panicked" not in instance.log_path.read_text(errors="replace")


def test_a_junk_burst_is_counted_but_logged_a_few_times(instance, node, world, figures):
    room = f"collaboration_{world.c1.id}"
    log_before = instance.log_path.read_text(errors="replace").count("invalid broker message")
    before = broker_counters(instance).get("v6_socketio_broker_invalid_total", 0)
    n = 20_000
    t0 = time.monotonic()
    publish(instance.amqp_uri, [f'junk {i}' if i % 2 else '{"method": "nope"}'
                                for i in range(n)])
    wait_until(lambda: broker_counters(instance).get("v6_socketio_broker_invalid_total", 0)
               - before >= n, timeout=60, what=f"{n} junk messages counted")
    took = time.monotonic() - t0
    probe(instance, node, room, "burst")
    text = instance.log_path.read_text(errors="replace")
    lines = text.count("invalid broker message") - log_before
    figures(f"junk burst: {n} messages counted in {took:.1f} s, {lines} log lines")
    assert broker_counters(instance)["v6_socketio_broker_invalid_total"] - before == n
    # The first invalid message of the instance at once, then at most one line per 10 s, for
    # every kind together (the burst's may all fall in the interval of the module's first test).
    total = sum(text.count(s) for s in ("invalid broker message", "oversized broker message",
                                        "emit with a bad payload"))
    alive = time.monotonic() - instance.started_at
    figures(f"junk: {total} warning lines in {alive:.0f} s for every junk message of the module")
    assert 1 <= total <= 2 + alive / 10, total
    assert lines <= 2 + took / 10, lines
    instance.assert_alive()
