"""The vantage6 REST API as a test fixture factory: everything the scenarios
need (organisations, collaborations, nodes, users, tasks) is created through
the real endpoints of vantage6-server 4.15.2, as an administrator would."""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field

import requests

ROOT_USER = {"username": "root", "password": "root"}  # vantage6's first-run default
USER_PASSWORD = "Password-123!"


class RestError(AssertionError):
    pass


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


@dataclass
class Collaboration:
    id: int
    name: str
    organization_ids: list[int] = field(default_factory=list)

    @property
    def room(self) -> str:
        return f"collaboration_{self.id}"

    def org_room(self, organization_id: int) -> str:
        return f"collaboration_{self.id}_organization_{organization_id}"


class Api:
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

    @property
    def authorization(self) -> str:
        return f"Bearer {self.token}"

    def call(self, method: str, path: str, expect: tuple = (200, 201), **kw):
        r = requests.request(method, f"{self.base}/{path.lstrip('/')}",
                             headers={"Authorization": self.authorization}, timeout=30, **kw)
        if r.status_code not in expect:
            raise RestError(f"{method} /{path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.call("POST", path, json=body, **kw)


class Admin(Api):
    """The root user, creating uniquely named fixtures for each test."""

    def __init__(self, base: str):
        api = Api.login(base, ROOT_USER["username"], ROOT_USER["password"])
        super().__init__(api.base, api.token)
        roles = self.get("role", params={"per_page": 100})["data"]
        self.role_ids = {r["name"]: r["id"] for r in roles}

    @staticmethod
    def unique(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def organization(self, prefix: str = "org") -> int:
        return self.post("organization", {"name": self.unique(prefix)})["id"]

    def collaboration(self, organization_ids: list[int], prefix: str = "collab") -> Collaboration:
        name = self.unique(prefix)
        body = self.post("collaboration", {"name": name, "organization_ids": organization_ids,
                                           "encrypted": False})
        return Collaboration(body["id"], name, list(organization_ids))

    def node(self, collab: Collaboration, organization_id: int, prefix: str = "node") -> NodeAccount:
        name = self.unique(prefix)
        body = self.post("node", {"collaboration_id": collab.id, "organization_id": organization_id,
                                  "name": name})
        return NodeAccount(body["id"], name, body["api_key"], organization_id, collab.id)

    def user(self, organization_id: int, role: str = "Collaboration Admin") -> UserAccount:
        username = self.unique("user")
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
    payload = base64.b64encode(json.dumps({"method": "average", "kwargs": {}}).encode()).decode()
    return api.post("task", {
        "name": "e2e-task", "image": "harbor2.vantage6.ai/demo/average", "description": "",
        "collaboration_id": collab.id, "databases": [],
        "organizations": [{"id": o, "input": payload} for o in organization_ids],
    })


def runs_of_task(api: Api, task_id: int) -> list[dict]:
    return api.get("run", params={"task_id": task_id, "per_page": 100})["data"]
