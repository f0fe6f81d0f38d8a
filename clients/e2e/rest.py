"""The vantage6 REST API as a test fixture factory: everything the scenarios
need (organisations, collaborations, nodes, users, tasks) is created through
the real endpoints of vantage6-server 4.15.2, as an administrator would."""
from __future__ import annotations

from dataclasses import dataclass

import requests

from e2e_rest import Collaboration, RestApi, RestError, arguments, unique
from e2e_rest import runs_of_task  # noqa: F401  (re-exported)

ROOT_USER = {"username": "root", "password": "root"}  # vantage6's first-run default
USER_PASSWORD = "Password-123!"


@dataclass
class NodeAccount:
    id: int
    name: str
    api_key: str
    organization_id: int
    collaboration_id: int


@dataclass
class UserAccount:
    id: int
    username: str
    password: str
    organization_id: int


class Api(RestApi):
    """A logged-in REST session (`base` is e.g. http://127.0.0.1:8080/api)."""

    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/")
        self.token = token

    @classmethod
    def login(cls, base: str, username: str, password: str) -> "Api":
        r = requests.post(f"{base.rstrip('/')}/token/user",
                          json={"username": username, "password": password}, timeout=15)
        if r.status_code != 200:
            raise RestError(f"login {username}: {r.status_code} {r.text[:300]}")
        return cls(base, r.json()["access_token"])


class Admin(Api):
    """The root user, creating uniquely named fixtures for each test."""

    def __init__(self, base: str):
        api = Api.login(base, ROOT_USER["username"], ROOT_USER["password"])
        super().__init__(api.base, api.token)
        self.role_ids = self.roles()

    def node(self, collab: Collaboration, organization_id: int, prefix: str = "node") -> NodeAccount:
        name = unique(prefix)
        body = self.post("node", {"collaboration_id": collab.id, "organization_id": organization_id,
                                  "name": name})
        return NodeAccount(body["id"], name, body["api_key"], organization_id, collab.id)

    def user(self, organization_id: int, role: str = "Collaboration Admin") -> UserAccount:
        username = unique("user")
        body = self.post("user", {
            "username": username, "password": USER_PASSWORD, "email": f"{username}@example.org",
            "organization_id": organization_id, "roles": [self.role_ids[role]],
            "firstname": "Test", "lastname": "User",
        })
        return UserAccount(body["id"], username, USER_PASSWORD, organization_id)

    def node_status(self, node_id: int) -> str:
        return self.get(f"node/{node_id}")["status"]


def create_task(api: Api, collab: Collaboration, organization_ids: list[int]) -> dict:
    """POST /task the way the vantage6 UI/Python client does for an
    unencrypted collaboration (base64 JSON input per organisation)."""
    payload = arguments({"method": "average", "kwargs": {}})
    return api.post("task", {
        "name": "e2e-task", "image": "harbor2.vantage6.ai/demo/average", "description": "",
        "collaboration_id": collab.id, "databases": [],
        "organizations": [{"id": o, "input": payload} for o in organization_ids],
    })

