"""Unidentified clients (design doc §2.3, contract point 3).

They stay connected to /tasks, join no room, get nothing (except
``expired_token`` / ``invalid_token`` to themselves), and everything they send
is ignored without hurting the server.
"""
from __future__ import annotations

from compat_support import a1_status_payload, log_payload
from support import expect_exact, expect_silence, join_msg, node_status_payload, quiesce, wait_until

CASES = {
    # name: (how to build the Authorization header, events the client gets)
    "no_token": (lambda t, w: None, []),
    "garbage": (lambda t, w: "Bearer not-a-jwt", []),
    "empty_bearer": (lambda t, w: "Bearer ", []),
    "wrong_scheme": (lambda t, w: "Token " + t.access(w.node_a1), []),
    "refresh_token": (lambda t, w: "Bearer " + t.refresh(w.node_a1), []),
    "unknown_subject": (lambda t, w: "Bearer " + t.unknown_subject(), []),
    "container_token": (lambda t, w: "Bearer " + t.container(w.node_a1, w.task1.id), []),
    "expired": (lambda t, w: "Bearer " + t.expired(w.node_a1), [("expired_token", None)]),
    "forged": (lambda t, w: "Bearer " + t.forged(w.node_a1), [("invalid_token", None)]),
    "expired_user": (lambda t, w: "Bearer " + t.expired(w.u_glob), [("expired_token", None)]),
    "forged_user": (lambda t, w: "Bearer " + t.forged(w.u_glob), [("invalid_token", None)]),
}


def test_unidentified_clients(world, db, srv, tokens, clients, connect_node, connect_user):
    """All cases at once (one client each), so the quiet periods are shared."""
    glob = connect_user(world.u_glob)
    b1 = connect_node(world.node_b1)
    c2 = connect_node(world.node_c2)
    quiesce(glob, b1, c2)

    bad = {}
    for case, (make_header, _) in CASES.items():
        header = make_header(tokens, world)
        kw = {"auth_header": header} if header is not None else {}
        bad[case] = clients(None, label=f"unidentified[{case}]", **kw)  # CONNECT ack must come anyway
    expect_exact({**{bad[c]: CASES[c][1] for c in CASES}, glob: [], b1: [], c2: []})
    for case, rec in bad.items():
        assert rec.connected, f"{case}: an unidentified client must stay connected to /tasks"
    assert db.auth_row(world.node_a1.id) == ("offline", None)
    assert db.auth_row(world.u_glob.id)[0] == "online"

    # everything they send is ignored
    log_before = db.run_log(world.r_a.id)
    for rec in bad.values():
        rec.emit("ping")
        rec.emit("algorithm_status_change", a1_status_payload(world))
        rec.emit("algorithm_log", log_payload(world, "from an unidentified client"))
        rec.emit("node_info_update", {"encryption": True, "database_labels": ["x"]})
        rec.emit("node_metrics_update", {"cpu_percent": 99.0, "os": "linux", "platform": "x86_64"})
        rec.emit("message", "hello")
        rec.emit("error", "oops")
        rec.emit("dataframe_deleted", {"df_name": "x", "session_id": 1, "node_id": world.node_a1.id})
    expect_silence(*bad.values(), glob, b1, c2)
    srv.assert_alive()
    assert db.auth_row(world.node_a1.id) == ("offline", None), "a ping of an unidentified client changed the DB"
    assert db.auth_row(world.u_glob.id)[1] is None, "a ping of an unidentified client changed the DB"
    assert db.run_log(world.r_a.id) == log_before
    assert db.node_config_count(world.node_a1.id) == 0
    assert not [s for s in srv.metrics() if s[1].get("node_id") == str(world.node_a1.id)]

    # the server still serves others, and the unidentified clients are in no room
    a1 = connect_node(world.node_a1)
    c1 = f"collaboration_{world.c1.id}"
    online = ("node-online", node_status_payload(world.node_a1))
    expect_exact({
        glob: [online, join_msg("Node", world.node_a1.name, c1)],
        b1: [online, join_msg("Node", world.node_a1.name, c1)],
        c2: [], a1: [], **{rec: [] for rec in bad.values()},
    })
    for case, rec in bad.items():
        assert rec.connected, f"{case}: the server dropped the unidentified client"
    # and they leave without a trace
    for rec in bad.values():
        rec.disconnect()
    expect_silence(glob, b1, c2, a1)


def test_headers_are_read_on_websocket_only_transport(world, db, clients, tokens):
    """The token comes from the handshake request, also when it is the websocket upgrade."""
    rec = clients(tokens.access(world.node_a1), label="ws-only", transports=["websocket"])
    rec.wait_count(3)
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
    expect_exact({rec: [("sync", None), join_msg("Node", world.node_a1.name, c1),
                        join_msg("Node", world.node_a1.name, c1_orga)]})
    wait_until(lambda: db.auth_row(world.node_a1.id)[0] == "online")


def test_expired_token_then_reconnect_with_fresh_token(world, db, clients, tokens, connect_user):
    """What the real node does on expired_token: disconnect, new client, new token."""
    glob = connect_user(world.u_glob)
    old = clients(tokens.expired(world.node_b1), label="expired")
    expect_exact({old: [("expired_token", None)], glob: []})
    old.disconnect()
    expect_silence(glob)  # an unidentified client leaves without a trace
    new = clients(tokens.access(world.node_b1), label="fresh")
    new.wait_count(3)
    c1 = f"collaboration_{world.c1.id}"
    expect_exact({
        new: [("sync", None), join_msg("Node", world.node_b1.name, c1),
              join_msg("Node", world.node_b1.name, f"collaboration_{world.c1.id}_organization_{world.org_b.id}")],
        glob: [("node-online", node_status_payload(world.node_b1)), join_msg("Node", world.node_b1.name, c1)],
    })


def _unsigned(header: dict, claims: dict, signature: bytes = b"") -> str:
    import base64
    import json
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    msg = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return msg + "." + b64(signature)


def _v6_claims(sub) -> dict:
    import time
    import uuid
    now = int(time.time())
    return {"fresh": False, "iat": now, "jti": str(uuid.uuid4()), "type": "access", "sub": sub,
            "nbf": now, "exp": now + 3600, "client_type": "node", "roles": []}


def _metric(srv, name: str, **labels) -> float:
    return sum(v for n, lab, v in srv.metrics()
               if n == name and all(lab.get(k) == w for k, w in labels.items()))


def _unidentified_total(srv) -> float:
    return sum(v for name, _, v in srv.metrics()
               if name == "v6_socketio_unidentified_connections_total")


def test_forged_algorithms_odd_subjects_and_missing_rows(world, db, srv, tokens, clients,
                                                         connect_user, connect_node, figures):
    """More tokens that identify nobody, each on its own client: ``alg: none``; an RS256 header
    whose signature is an HMAC with the server secret (key confusion); HS256-signed tokens whose
    ``sub`` is a float, a boolean, null, a list, a word, a number beyond 64 bits, or a string that
    is not the id; the id of an ``authenticatable`` row of type node without its ``node`` row; the
    id of a node whose rows were deleted after the token was minted. vantage6 4.15.2 sends none of
    them anything (its decoder raises, or the look-up finds no node or user); each is counted once
    on /metrics, stays connected and unidentified, and the server keeps serving the others."""
    import hashlib
    import hmac

    import jwt
    from sqlalchemy import text

    glob = connect_user(world.u_glob)
    quiesce(glob)
    secret = tokens.secret
    hs = lambda sub: jwt.encode(_v6_claims(sub), secret, algorithm="HS256")  # noqa: E731
    a1 = world.node_a1.id
    confused = _unsigned({"alg": "RS256", "typ": "JWT"}, _v6_claims(a1))
    head, payload, _ = confused.split(".")
    sig = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    with db.session() as s:
        orphan = s.execute(text("INSERT INTO authenticatable (type, status) VALUES ('node', 'offline') "
                                "RETURNING id")).scalar_one()
        deleted = s.execute(text("INSERT INTO authenticatable (type, status) VALUES ('user', 'offline') "
                                 "RETURNING id")).scalar_one()
    deleted_token = hs(deleted)
    with db.session() as s:
        s.execute(text("DELETE FROM authenticatable WHERE id = :id"), {"id": deleted})
    cases = {
        "alg_none": _unsigned({"alg": "none", "typ": "JWT"}, _v6_claims(a1)),
        "rs256_header_hmac_of_secret": _unsigned({"alg": "RS256", "typ": "JWT"}, _v6_claims(a1), sig),
        "sub_float": hs(a1 + 0.5),
        "sub_bool": hs(True),
        "sub_null": hs(None),
        "sub_list": hs([a1]),
        "sub_word": hs("node_a1"),
        "sub_beyond_64_bits": hs(2 ** 70),
        "sub_string_not_an_id": hs(f"{a1}x"),
        "authenticatable_without_node_row": hs(orphan),
        "deleted_after_minting": deleted_token,
    }
    before = _unidentified_total(srv)
    db_errors_before = _metric(srv, "v6_socketio_database_errors_total")
    missing_before = _metric(srv, "v6_socketio_unidentified_connections_total", reason="missing_row")
    bad = {case: clients(None, label=f"unidentified[{case}]", auth_header="Bearer " + token)
           for case, token in cases.items()}
    expect_exact({**{rec: [] for rec in bad.values()}, glob: []})
    wait_until(lambda: _unidentified_total(srv) - before >= len(cases),
               what="every bad token counted")
    counted = _unidentified_total(srv) - before
    figures(f"bad tokens: {len(cases)} clients, unidentified counter +{counted:g}")
    assert counted == len(cases), counted
    # a row that is missing identifies nobody: not a database failure
    assert _metric(srv, "v6_socketio_database_errors_total") == db_errors_before
    assert _metric(srv, "v6_socketio_unidentified_connections_total",
                   reason="missing_row") == missing_before + 1
    for case, rec in bad.items():
        assert rec.connected, f"{case}: an unidentified client must stay connected to /tasks"
        rec.emit("ping")
    assert db.auth_row(a1) == ("offline", None)
    with db.session() as s:
        status = s.execute(text("SELECT status FROM authenticatable WHERE id = :id"),
                           {"id": orphan}).scalar_one()
    assert status == "offline", "a client without a node row was marked online"
    # the server still serves others
    node = connect_node(world.node_a1)
    c1 = f"collaboration_{world.c1.id}"
    expect_exact({glob: [("node-online", node_status_payload(world.node_a1)),
                         join_msg("Node", world.node_a1.name, c1)],
                  node: [], **{rec: [] for rec in bad.values()}})
    srv.assert_alive()
    assert "panicked" not in srv.log_path.read_text(errors="replace")
    with db.session() as s:
        s.execute(text("DELETE FROM authenticatable WHERE id = :id"), {"id": orphan})
