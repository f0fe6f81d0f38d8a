"""HQ 5.0.3's REST API as a fixture factory: organisations, collaborations,
nodes, users, sessions, dataframes and tasks are created through the real
endpoints, as an administrator and a researcher would. Tokens are Keycloak
client-credentials tokens from the realm stand-in (HQ's admin client for the
root user; a service-account user's own client for the researcher)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from e2e_rest import Collaboration, RestApi, RestError, arguments, unique
from e2e_rest import runs_of_task  # noqa: F401  (re-exported)
from harness5 import ADMIN_CLIENT, ADMIN_SECRET, REALM


@dataclass
class NodeAccount:
    id: int
    name: str
    api_key: str  # the Keycloak client secret HQ got for `<name>-node-client`
    keycloak_id: str
    organization_id: int
    collaboration_id: int


def client_credentials(kc_url: str, client_id: str, secret: str) -> dict:
    r = requests.post(f"{kc_url}/realms/{REALM}/protocol/openid-connect/token",
                      data={"grant_type": "client_credentials", "client_id": client_id,
                            "client_secret": secret, "scope": "openid"}, timeout=10)
    if r.status_code != 200:
        raise RestError(f"token for {client_id}: {r.status_code} {r.text[:200]}")
    return r.json()


class Api(RestApi):
    """A REST session at HQ (`base` is e.g. http://127.0.0.1:7601/hq) with a
    Keycloak client's token, renewed before it runs out."""

    def __init__(self, base: str, kc_url: str, client_id: str, secret: str):
        self.base = base.rstrip("/")
        self.kc_url, self.client_id, self.secret = kc_url, client_id, secret
        self._token, self._renew_at = "", 0.0

    @property
    def token(self) -> str:
        if time.monotonic() >= self._renew_at:
            body = client_credentials(self.kc_url, self.client_id, self.secret)
            self._token = body["access_token"]
            self._renew_at = time.monotonic() + body["expires_in"] / 2
        return self._token


class Admin(Api):
    """HQ's root user (`KEYCLOAK_ADMIN_USERNAME`), through HQ's admin client."""

    def __init__(self, base: str, kc_url: str):
        super().__init__(base, kc_url, ADMIN_CLIENT, ADMIN_SECRET)
        self.role_ids = self.roles()

    def node(self, collab: Collaboration, organization_id: int) -> NodeAccount:
        """POST /node: HQ creates `<name>-node-client` in Keycloak and answers
        its secret as the node's API key."""
        name = unique("node")
        body = self.post("node", {"collaboration_id": collab.id,
                                  "organization_id": organization_id, "name": name})
        if not body.get("keycloak_id"):
            raise RestError(f"HQ saved node {name} without a Keycloak id: {body}")
        return NodeAccount(body["id"], name, body["api_key"], body["keycloak_id"],
                           organization_id, collab.id)

    def researcher(self, organization_id: int, role: str = "Collaboration Admin") -> Api:
        """A service-account user (POST /user, `is_service_account`): HQ creates
        `<username>-user-client` in Keycloak and answers its secret."""
        username = unique("user")
        body = self.post("user", {"username": username, "organization_id": organization_id,
                                  "roles": [self.role_ids[role]], "is_service_account": True})
        api = Api(self.base, self.kc_url, f"{username}-user-client", body["client_secret"])
        api.user_id = body["id"]
        return api


def create_session(api: Api, collab: Collaboration) -> int:
    return api.post("session", {"name": unique("session"), "collaboration_id": collab.id,
                                "scope": "collaboration"})["id"]


def create_dataframe(api: Api, session_id: int, organization_ids: list[int],
                     label: str = "default") -> dict:
    """POST /session/<id>/dataframe: a dataframe and its data-extraction task."""
    return api.post(f"session/{session_id}/dataframe", {
        "label": label, "name": unique("df").replace("-", "_"),
        "task": {"image": "harbor2.vantage6.ai/demo/extract", "method": "extract",
                 "organizations": [{"id": o, "arguments": arguments({"q": "all"})}
                                   for o in organization_ids]},
    })


def create_task(api: Api, collab: Collaboration, session_id: int, organization_ids: list[int],
                **extra) -> dict:
    """POST /task the way the UI/Python client does it for an unencrypted
    collaboration: a compute task in a session, no database."""
    return api.post("task", {
        "name": "e2e-task", "image": "harbor2.vantage6.ai/demo/average", "method": "average",
        "collaboration_id": collab.id, "session_id": session_id, "action": "federated_compute",
        "databases": [],
        "organizations": [{"id": o, "arguments": arguments({"column": "age"})}
                          for o in organization_ids],
        **extra,
    })

