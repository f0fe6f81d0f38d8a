"""Engine.IO / HTTP surface: handshake, path, transports, CORS (design doc §1, §9)."""
from __future__ import annotations

import contextlib
import json
import time

import pytest

from support import (
    ServerProcess,
    expect_exact,
    http_get,
    join_msg,
    node_status_payload,
    wait_until,
)


def handshake(url, headers=None):
    status, hdrs, body = http_get(url + "/socket.io/?EIO=4&transport=polling", headers=headers)
    return status, hdrs, body.decode(errors="replace")


def test_health(srv):
    status, _, _ = http_get(srv.url + "/health")
    assert status == 200


def test_engineio_handshake(srv):
    status, _, body = handshake(srv.url)
    assert status == 200, body
    assert body.startswith("0"), f"not an Engine.IO OPEN packet: {body!r}"
    info = json.loads(body[1:])
    assert isinstance(info.get("sid"), str) and info["sid"]
    assert info["upgrades"] == ["websocket"]
    assert info["pingInterval"] == 25000
    assert info["pingTimeout"] == 60000
    assert info["maxPayload"] == 1000000


def test_socketio_is_not_under_the_api_path(srv):
    status, _, _ = http_get(srv.url + "/api/socket.io/?EIO=4&transport=polling")
    assert status == 404


def test_cors_wildcard_echoes_origin_with_credentials(srv):
    origin = "http://ui.example.org:4200"
    status, hdrs, body = handshake(srv.url, {"Origin": origin})
    assert status == 200, body
    assert hdrs.get("Access-Control-Allow-Origin") == origin
    assert hdrs.get("Access-Control-Allow-Credentials") == "true"


@pytest.fixture()
def listed_cors_server(db, jwt_secret, tmp_path):
    # also exercises the postgresql+psycopg2:// spelling of the URL
    uri = db.uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    proc = ServerProcess(tmp_path, db, jwt_secret, cors=["http://allowed.example", "https://ui.example.org"],
                         uri=uri, name="cors-list")
    proc.start()
    yield proc
    proc.stop()


def test_cors_list(listed_cors_server, world, tokens, db):
    srv = listed_cors_server
    for origin in ("http://allowed.example", "https://ui.example.org"):
        status, hdrs, body = handshake(srv.url, {"Origin": origin})
        assert status == 200, body
        assert hdrs.get("Access-Control-Allow-Origin") == origin
        assert hdrs.get("Access-Control-Allow-Credentials") == "true"
    status, hdrs, _ = handshake(srv.url, {"Origin": "http://evil.example"})
    assert hdrs.get("Access-Control-Allow-Origin") not in ("http://evil.example", "*"), (
        "an origin that is not listed must not be allowed"
    )
    # the server with the alternative URI spelling works end to end
    from support import Recorder

    rec = Recorder(srv.url, tokens.access(world.node_a1), label="cors-list-node")
    try:
        rec.connect()
        rec.wait_count(3)
        assert rec.snapshot()[0] == ("sync", None)
        wait_until(lambda: db.auth_row(world.node_a1.id)[0] == "online")
    finally:
        rec.disconnect()
    wait_until(lambda: db.auth_row(world.node_a1.id)[0] == "offline")


@pytest.mark.parametrize("transports", [["polling"], ["websocket"], None], ids=["polling", "websocket", "upgrade"])
def test_transports(transports, world, clients, tokens, connect_user):
    glob = connect_user(world.u_glob, transports=transports)
    a1 = clients(tokens.access(world.node_a1), label="a1", transports=transports)
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    expect_exact({
        a1: [("sync", None), join_msg("Node", world.node_a1.name, c1), join_msg("Node", world.node_a1.name, c1_orga)],
        glob: [("node-online", node_status_payload(world.node_a1)), join_msg("Node", world.node_a1.name, c1)],
    })
    if transports is None:
        # default: polling first, then upgrade to websocket
        wait_until(lambda: a1.sio.transport() == "websocket", what="upgrade to websocket")
    else:
        assert a1.sio.transport() == transports[0]
    a1.emit("algorithm_status_change", {
        "run_id": world.r_a.id, "task_id": world.task1.id, "collaboration_id": world.c1.id,
        "status": "active", "node_id": world.node_a1.id, "organization_id": world.org_a.id, "parent_id": None,
    })
    relayed = ("algorithm_status_change", {
        "status": "active", "run_id": world.r_a.id, "task_id": world.task1.id,
        "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id,
        "node_id": world.node_a1.id, "organization_id": world.org_a.id, "parent_id": None,
    })
    expect_exact({a1: [relayed], glob: [relayed]})


def test_large_payload_within_max_payload(world, db, clients, tokens, connect_node):
    """A node_info_update of ~200 kB (many columns) fits in maxPayload 1000000."""
    a1 = connect_node(world.node_a1)
    cols = [f"column_{i:05d}_" + "x" * 20 for i in range(6000)]
    a1.emit("node_info_update", {"database_labels": ["big"], "database_columns": {"columns_big": cols}})
    wait_until(lambda: db.node_config_count(world.node_a1.id) == 6001, timeout=15,
               what="6001 node_config rows")
    assert a1.connected


def _raw_polling_session(url, headers, connect_packet="40/tasks,{}", want=3, timeout=8.0):
    """Engine.IO v4 polling by hand: handshake, CONNECT /tasks, then poll until
    ``want`` Socket.IO packets of /tasks (after the CONNECT ack) arrived.
    Returns the list of raw Socket.IO packets of /tasks in arrival order."""
    import urllib.request

    base = url + "/socket.io/?EIO=4&transport=polling"
    status, _, body = http_get(base, headers)
    assert status == 200
    sid = json.loads(body.decode()[1:])["sid"]
    req = urllib.request.Request(base + "&sid=" + sid, data=connect_packet.encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    packets = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, body = http_get(base + "&sid=" + sid, headers,
                                       timeout=max(0.1, deadline - time.monotonic()))
        except (TimeoutError, OSError):
            break  # the long poll had nothing more to say within the time limit
        assert status == 200, body
        for pkt in body.decode().split("\x1e"):
            if pkt == "2":  # Engine.IO PING: answer it
                req = urllib.request.Request(base + "&sid=" + sid, data=b"3", headers=headers, method="POST")
                urllib.request.urlopen(req, timeout=5).close()
            elif pkt.startswith("4"):
                packets.append(pkt[1:])  # Socket.IO packet
        ns_events = [p for p in packets if p.startswith("2/tasks,")]
        if len(ns_events) >= want:
            break
    # close the session
    req = urllib.request.Request(base + "&sid=" + sid, data=b"1", headers=headers, method="POST")
    with contextlib.suppress(Exception):
        urllib.request.urlopen(req, timeout=5).close()
    return packets


def test_wire_order_of_a_node_connect(world, srv, tokens, db):
    """On the wire (design doc §9): CONNECT ack, then sync, then the join messages."""
    a1 = world.node_a1
    packets = _raw_polling_session(srv.url, {"Authorization": "Bearer " + tokens.access(a1)})
    assert packets[0].startswith("0/tasks,"), packets
    assert json.loads(packets[0][len("0/tasks,"):]).get("sid")
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    assert [json.loads(p[len("2/tasks,"):]) for p in packets[1:]] == [
        ["sync"],
        ["message", f"Node <{a1.name}> joined room <{c1}>"],
        ["message", f"Node <{a1.name}> joined room <{c1_orga}>"],
    ], packets
    wait_until(lambda: db.auth_row(a1.id)[0] == "offline", what="offline after the raw session closed")


def test_connect_auth_payload_is_ignored(world, srv, tokens, db):
    """The token is read from the handshake's Authorization header only; a
    token in the CONNECT auth payload does not identify the client."""
    token = tokens.access(world.node_a1)
    packets = _raw_polling_session(
        srv.url, {}, connect_packet="40/tasks," + json.dumps({"token": token, "Authorization": "Bearer " + token}),
        want=1, timeout=1.5,
    )
    assert packets and packets[0].startswith("0/tasks,"), packets
    assert packets[1:] == [], f"an unidentified client got {packets[1:]}"
    assert db.auth_row(world.node_a1.id) == ("offline", None)


def _raw_http(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Sends raw bytes to the server and returns what it answers until it closes (or the
    timeout); b"" when it closes without an answer."""
    import socket
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"content-length: 0" in out.lower():
                break
        return out


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("shape", ["one_64k_header", "thousand_headers"])
def test_oversized_headers_are_refused_and_others_unaffected(srv, world, connect_user, connect_node,
                                                             shape, figures):
    """A handshake with a 64 KiB header, or with 1,000 headers: refused (431, or the connection
    closed without an answer), and a user connected beforehand still gets the next event."""
    glob = connect_user(world.u_glob)
    expect_exact({glob: []})
    if shape == "one_64k_header":
        extra = b"X-Big: " + b"a" * 65536 + b"\r\n"
    else:
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
    host = srv.url.split("//", 1)[1].encode()
    request = (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: " + host + b"\r\n"
               + extra + b"Connection: close\r\n\r\n")
    answer = _raw_http(srv.url, request)
    status = _status(answer)
    figures(f"oversized headers {shape}: {len(request)} bytes, answer status {status}")
    assert status in (431, None), answer[:200]
    # the server keeps serving
    status, _, _ = http_get(srv.url + "/health")
    assert status == 200
    a1 = connect_node(world.node_a1)
    c1 = f"collaboration_{world.c1.id}"
    expect_exact({glob: [("node-online", node_status_payload(world.node_a1)),
                         join_msg("Node", world.node_a1.name, c1)], a1: []})
    srv.assert_alive()


def test_malformed_polling_packets_are_refused_and_others_unaffected(srv, world, connect_user,
                                                                     connect_node, figures):
    """Malformed Engine.IO payloads POSTed on a polling session (garbage, invalid UTF-8, unknown
    packet types, truncated or deeply nested Socket.IO packets, huge ack ids, CONNECT to unknown
    namespaces, an attachment count that does not match): each answered with an HTTP error or
    ignored, the session closed or kept; a user connected beforehand still gets the next event,
    the server answers /health and does not panic."""
    import urllib.error
    import urllib.request
    glob = connect_user(world.u_glob)
    expect_exact({glob: []})
    bodies = [
        b"garbage", b"", b"\xff\xfe\xfd", b"4\xff\xfe", b"9", b"7xyz", b"42", b"42/tasks,[",
        b'42/tasks,[1,2]', b'49/tasks,["x"]', b'42/tasks,99999999999999999999999["ping"]',
        b"40/nope,", b"40/admin,{}",
        b'451-/tasks,["ping",{"_placeholder":true,"num":0}]',
        b'452-/tasks,["ping",{"_placeholder":true,"num":7}]\x1ebAQI=',
        b'42/tasks,["ping",' + b"[" * 10000 + b"]" * 10000 + b"]",
        b"4" + b"\x1e" * 1000,
    ]
    answers = {}
    for body in bodies:
        status, _, text = handshake(srv.url)
        assert status == 200, status
        sid = json.loads(text[1:])["sid"]
        url = srv.url + "/socket.io/?EIO=4&transport=polling&sid=" + sid
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "text/plain;charset=UTF-8"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                answers[body[:20]] = r.status
        except urllib.error.HTTPError as e:
            answers[body[:20]] = e.code
        except (urllib.error.URLError, ConnectionError) as e:
            answers[body[:20]] = f"closed: {e}"
    figures(f"malformed polling packets: {len(bodies)} sent, answers "
            f"{sorted(set(map(str, answers.values())))}")
    assert all(isinstance(v, int) and v < 500 for v in answers.values()), answers
    status, _, _ = http_get(srv.url + "/health")
    assert status == 200
    a1 = connect_node(world.node_a1)
    c1 = f"collaboration_{world.c1.id}"
    expect_exact({glob: [("node-online", node_status_payload(world.node_a1)),
                         join_msg("Node", world.node_a1.name, c1)], a1: []})
    srv.assert_alive()
    assert "panicked" not in srv.log_path.read_text(errors="replace")
