"""What both end-to-end suites' REST fixture factories share (``e2e/rest.py``
against vantage6-server 4.x, ``e2e_v5/rest5.py`` against HQ 5.x): the calls,
the collaboration and its rooms, unique names, runs of a task."""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field

import requests


class RestError(AssertionError):
    pass


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


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def arguments(obj: dict) -> str:
    """Function arguments of an unencrypted collaboration: base64 JSON."""
    return base64.b64encode(json.dumps(obj).encode()).decode()


class RestApi:
    """A REST session at `base` (e.g. http://127.0.0.1:8080/api) whose
    `token` (an attribute or a property of the subclass) is the bearer."""

    base: str
    token: str

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

    # --- an administrator's fixtures (uniquely named for each test) -------
    def roles(self) -> dict[str, int]:
        """Role name → id, for creating users."""
        return {r["name"]: r["id"] for r in self.get("role", params={"per_page": 100})["data"]}

    def organization(self, prefix: str = "org") -> int:
        return self.post("organization", {"name": unique(prefix)})["id"]

    def collaboration(self, organization_ids: list[int], prefix: str = "collab") -> Collaboration:
        """An unencrypted collaboration of these organisations."""
        name = unique(prefix)
        body = self.post("collaboration", {"name": name, "organization_ids": organization_ids,
                                           "encrypted": False})
        return Collaboration(body["id"], name, list(organization_ids))


def runs_of_task(api: RestApi, task_id: int) -> list[dict]:
    return api.get("run", params={"task_id": task_id, "per_page": 100})["data"]
