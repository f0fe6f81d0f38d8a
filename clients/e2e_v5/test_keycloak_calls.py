"""The Keycloak calls real HQ 5.0.3 makes, as the realm stand-in answered them:
every one the fixtures rely on (init_db at start-up; node and user accounts
through HQ's REST) must be answered with success, and nothing else asked.
docs/vantage6-5x-socket.md §8.2 lists them."""
from __future__ import annotations

import re

import pytest

from rest5 import RestError, client_credentials, unique

REALM = "/realms/vantage6"
ADMIN = "/admin/realms/vantage6"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def since(kc, mark: int) -> list[tuple[str, str, int]]:
    return [(m, UUID.sub("{id}", p), s) for m, p, s in kc.answered[mark:]]


def test_hq_start_up_asked_the_realm_key_and_the_root_user(fleet):
    # HQ's process: the realm key, then init_db's root-user look-up and its
    # organization_id attribute (two admin clients, two tokens)
    assert since(fleet.kc, 0)[:7] == [
        ("GET", REALM, 200),
        ("POST", f"{REALM}/protocol/openid-connect/token", 200),
        ("GET", f"{ADMIN}/users", 200),
        ("POST", f"{REALM}/protocol/openid-connect/token", 200),
        ("GET", f"{ADMIN}/users/{{id}}", 200),
        ("PUT", f"{ADMIN}/users/{{id}}", 204),
        # each v6-socketio instance: the realm key
        ("GET", REALM, 200),
    ]
    users = fleet.admin.get("user", params={"username": "admin"})["data"]
    admin_user = fleet.kc.users[fleet.kc.admin_user_id]
    assert [u["keycloak_id"] for u in users if u["username"] == "admin"] == [admin_user["id"]]
    assert admin_user["attributes"]["organization_id"] == [str(users[0]["organization"]["id"])]


def test_node_and_user_accounts_through_hq_rest(fleet):
    kc, admin = fleet.kc, fleet.admin
    token = f"{REALM}/protocol/openid-connect/token"
    admin._renew_at = 0
    admin.token  # noqa: B018 (a fresh admin token: none is asked in the window)
    org = admin.organization("org-kc")
    collab = admin.collaboration([org], "collab-kc")

    mark = len(kc.answered)
    node = admin.node(collab, org)
    assert since(kc, mark) == [
        ("POST", token, 200),  # HQ's admin client
        ("POST", f"{ADMIN}/clients", 201),
        ("GET", f"{ADMIN}/users", 200),  # service-account-<name>-node-client
        ("GET", f"{ADMIN}/clients/{{id}}/client-secret", 200),
    ]
    client = kc.client(f"{node.name}-node-client")
    assert client is not None and client.secret == node.api_key
    assert client.user_id == node.keycloak_id and client.client_type == "node"

    # API-key reset: a new secret; the old one no longer gets a token
    mark = len(kc.answered)
    body = admin.post("recover/node", {"id": node.id})
    assert since(kc, mark) == [("POST", token, 200),
                               ("POST", f"{ADMIN}/clients/{{id}}/client-secret", 200)]
    assert client.secret != node.api_key
    assert "api_key" in body and body["api_key"] == client.secret
    with pytest.raises(RestError, match="401"):
        client_credentials(kc.url, f"{node.name}-node-client", node.api_key)

    mark = len(kc.answered)
    username = unique("svc")
    user = admin.post("user", {"username": username, "organization_id": org,
                               "roles": [admin.role_ids["Researcher"]],
                               "is_service_account": True})
    assert since(kc, mark) == [
        ("POST", token, 200),
        ("POST", f"{ADMIN}/clients", 201),
        ("GET", f"{ADMIN}/users", 200),
        ("GET", f"{ADMIN}/clients/{{id}}/client-secret", 200),
    ]
    assert kc.client(f"{username}-user-client").client_type == "user"

    mark = len(kc.answered)
    admin.call("DELETE", f"user/{user['id']}")
    admin.call("DELETE", f"node/{node.id}")
    assert since(kc, mark) == [
        ("POST", token, 200), ("DELETE", f"{ADMIN}/clients/{{id}}", 204),
        ("POST", token, 200), ("DELETE", f"{ADMIN}/clients/{{id}}", 204),
    ]
    assert kc.client(f"{username}-user-client") is None
    assert kc.client(f"{node.name}-node-client") is None
