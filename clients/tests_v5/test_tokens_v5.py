"""5.x tokens as HQ 5.0.3 decides them (docs/vantage6-5x-socket.md §2): Keycloak RS256/384/512
tokens, `sub` looked up in `authenticatable.keycloak_id`; `expired_token`, `invalid_token` or
silence, never a disconnect; the realm key re-fetched after a Keycloak key rotation without a
restart (beyond HQ, which needs one)."""
from __future__ import annotations

import time

import pytest

from compat_support import node_connect_sequence
from conftest import KEY_REFRESH_INTERVAL
from sio_testkit import expect_exact, expect_silence, join_msg, node_status_payload, quiesce
from support_v5 import CountsRefusals

UNIDENTIFIED = "v6_socketio_unidentified_connections_total"


def assert_unidentified(db, rec, node, observer, *, events=()):
    """The socket got exactly ``events``, stays connected, is not identified (status untouched,
    nobody hears of it) and a ping from it neither answers nor marks anything."""
    expect_exact({rec: list(events), observer: []})
    assert rec.connected, f"{rec.label}: HQ never disconnects a socket for its token"
    rec.emit("ping")
    expect_silence(rec, observer)
    assert rec.connected
    assert db.auth_row(node.id) == ("offline", None)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
def test_valid_rsa_tokens_identify_the_node(world, db, clients, tokens, connect_node, alg):
    b1 = connect_node(world.node_b1)
    a1 = world.node_a1
    rec = clients(tokens.access(a1, alg=alg), label=f"a1-{alg}")
    c1 = f"collaboration_{world.c1.id}"
    expect_exact({rec: node_connect_sequence(a1),
                  b1: [("node-online", node_status_payload(a1)), join_msg("Node", a1.name, c1)]})
    assert db.auth_row(a1.id)[0] == "online"


def test_minimal_token_sub_only(world, db, clients, keycloak):
    """HQ accepts a token with nothing but `sub` (no exp, iat, jti, client type)."""
    import jwt

    a1 = world.node_a1
    token = jwt.encode({"sub": a1.extra["kc"]}, keycloak.key, algorithm="RS256")
    rec = clients(token, label="a1-minimal")
    expect_exact({rec: node_connect_sequence(a1)})
    assert db.auth_row(a1.id)[0] == "online"


@pytest.fixture()
def refused(world, db, srv, clients, connect_node):
    """``refused(event, token, label, transport)``: node_a1's client with ``token`` (node_b1
    observing) is counted under ``event`` as a reason of UNIDENTIFIED, gets ``event`` and is
    otherwise unidentified."""

    def go(event: str, token: str, label: str, transport: str):
        b1 = connect_node(world.node_b1)
        with CountsRefusals(srv, event, metric=UNIDENTIFIED):
            rec = clients(token, label=label, transport=transport)
        assert_unidentified(db, rec, world.node_a1, b1, events=[(event, None)])

    return go


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_expired_token(world, tokens, refused, transport):
    refused("expired_token", tokens.expired(world.node_a1), "a1-expired", transport)


def test_expired_within_leeway_is_accepted(world, db, clients, tokens):
    a1 = world.node_a1
    rec = clients(tokens.access(a1, lifetime=-3), label="a1-leeway")  # leeway 10 s
    expect_exact({rec: node_connect_sequence(a1)})


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_wrong_key_is_invalid_token(world, tokens, refused, transport):
    refused("invalid_token", tokens.wrong_key(world.node_a1), "a1-wrong-key", transport)


def test_wrong_key_and_expired_is_invalid_token(world, db, clients, tokens, connect_node):
    """The signature is checked first."""
    b1 = connect_node(world.node_b1)
    rec = clients(tokens.wrong_key(world.node_a1, lifetime=-60), label="a1-wrong-expired")
    assert_unidentified(db, rec, world.node_a1, b1, events=[("invalid_token", None)])


@pytest.mark.parametrize("kind", ["hs256", "unknown_subject", "iat_in_future", "no_header",
                                  "garbage", "auth_payload_only", "refresh_type"])
def test_silent_unidentified(world, db, srv, clients, tokens, connect_node, kind):
    b1 = connect_node(world.node_b1)
    a1 = world.node_a1
    kw = {}
    if kind == "hs256":  # HQ's container tokens are REST-only
        token = tokens.hs256(a1)
    elif kind == "unknown_subject":
        token = tokens.unknown_subject()
    elif kind == "iat_in_future":
        token = tokens.iat_in_future(a1)
    elif kind == "no_header":
        token = None
    elif kind == "garbage":
        token = "not.a.jwt"
    elif kind == "auth_payload_only":  # the Socket.IO auth payload is ignored, as HQ
        token = None
        kw["auth_payload"] = {"token": tokens.access(a1)}
    else:
        token = tokens.access(a1, claims={"type": "refresh"})
    reason = "unknown_subject" if kind == "unknown_subject" else "rejected_token"
    with CountsRefusals(srv, reason, metric=UNIDENTIFIED):
        rec = clients(token, label=f"a1-{kind}", connect=kind != "auth_payload_only")
        if kind == "auth_payload_only":
            rec.sio.connect(rec.url, headers={}, auth=kw["auth_payload"], namespaces=["/tasks"],
                            wait=True, wait_timeout=10)
            assert rec.ns_connected.wait(10)
    assert_unidentified(db, rec, a1, b1)


def test_key_rotation_without_restart(world, db, srv, clients, tokens, keycloak):
    """After Keycloak rotates its realm key, a token of the new key is accepted by the running
    server (it re-fetches the key after the signature fails, at most once per refresh interval);
    a token of the old key is then `invalid_token`."""
    a1, b1 = world.node_a1, world.node_b1
    old_key = keycloak.key
    before = keycloak.calls.count(("GET", f"/realms/{keycloak.realm}"))
    keycloak.rotate_key()
    # a re-fetch may have happened just before (another test's wrong-key token): wait out the
    # interval so that the next signature failure is allowed to fetch
    time.sleep(KEY_REFRESH_INTERVAL + 0.2)
    rec = clients(tokens.access(a1), label="a1-new-key")
    expect_exact({rec: node_connect_sequence(a1)})
    assert db.auth_row(a1.id)[0] == "online"
    assert keycloak.calls.count(("GET", f"/realms/{keycloak.realm}")) > before, \
        "the server never asked Keycloak for the realm key again"

    stale = clients(tokens.access(b1, key=old_key), label="b1-old-key")
    expect_exact({stale: [("invalid_token", None)], rec: []})
    assert db.auth_row(b1.id)[0] == "offline"

    # and the new key keeps working for everybody else
    rb = clients(tokens.access(b1), label="b1-new-key")
    c1 = f"collaboration_{world.c1.id}"
    expect_exact({rb: node_connect_sequence(b1),
                  rec: [("node-online", node_status_payload(b1)), join_msg("Node", b1.name, c1)]})
    quiesce(rec, rb, stale)


def test_token_from_the_client_credentials_grant(world, db, clients, keycloak):
    """What vantage6-node 5.0.3 presents: the access token of its `<name>-node-client`'s
    client-credentials grant (python-keycloak's form fields), `sub` = the service-account user,
    which HQ stored as the node's keycloak_id."""
    import json
    import urllib.parse
    import urllib.request

    a1 = world.node_a1
    client = keycloak.add_client(f"{a1.name}-node-client", client_type="node",
                                 user_id=a1.extra["kc"])
    form = urllib.parse.urlencode({
        "client_id": client.client_id, "client_secret": client.secret,
        "grant_type": "client_credentials", "scope": "openid",
        "username": "", "password": "", "code": "", "redirect_uri": ""}).encode()
    url = f"{keycloak.url}/realms/{keycloak.realm}/protocol/openid-connect/token"
    with urllib.request.urlopen(urllib.request.Request(url, data=form), timeout=5) as resp:
        token = json.load(resp)["access_token"]
    rec = clients(token, label="a1-granted")
    expect_exact({rec: node_connect_sequence(a1)})
    assert db.auth_row(a1.id)[0] == "online"
