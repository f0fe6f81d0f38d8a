"""Seeds a vantage6 database for the load generator and writes its fixture file.

Generation 4 (default) seeds vantage6-server 4.15.2's tables; generation 5 (``--generation 5``,
in the Python 3.13 virtualenv clients/.venv-v5) seeds vantage6-hq 5.0.3's. The tables are the
generation's own (its models' metadata ``create_all`` when they are absent); the rows are
inserted in bulk with SQLAlchemy Core, because creating 20,000 nodes through the ORM takes
minutes. What is inserted, under a fresh name prefix so that several fixtures can share one
database:

* organizations, shared between collaborations as in real deployments (``plan``);
* collaborations of ``--collaboration-size`` .. ``--collaboration-size-max`` nodes (one
  collaboration holding every node when the size is at least ``--nodes``);
* one node per (organization, collaboration) membership, status ``offline``; in generation 5
  with a ``keycloak_id`` (a fresh UUID: the ``sub`` of its Keycloak tokens) and a
  ``keycloak_client_id``;
* one task per collaboration (with a ``job_id``) and ``--runs-per-node`` runs of the node's
  organization in it.

The fixture file (JSON) lists them, in the format clients/loadgen reads (its README), with what
the load generator needs to mint the nodes' tokens: generation 4 the JWT secret
(``jwt_secret_key``); generation 5 a ``keycloak`` section: a realm key pair generated for the
run (``private_key_file``: PKCS#8 PEM, ``public_key_file``: SubjectPublicKeyInfo PEM, beside the
fixture file), the tokens' ``issuer`` and ``kid``. The servers (and a Keycloak stand-in, if
any) must verify with that public key: ``v6_socketio.keycloak_public_key_file``, or a realm
endpoint serving it. Usage::

    python clients/bench/fixture.py --database-url postgresql://postgres@127.0.0.1/bench \\
        --nodes 1000 --collaboration-size 1000 --secret SECRET --out fixture.json
    clients/.venv-v5/bin/python clients/bench/fixture.py --generation 5 \\
        --database-url postgresql://postgres@127.0.0.1/bench5 \\
        --nodes 1000 --collaboration-size 1000 --out fixture.json

Importable: ``seed(url, nodes=…, …)`` returns the fixture as a dict.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compat_support import unpatched_vantage6_import  # noqa: E402

from sqlalchemy import create_engine, select  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

#: rows per INSERT statement (SQLite allows 32,766 bound parameters per statement)
CHUNK = 2000

#: generation 5: the tokens' default ``iss`` (HQ and v6-socketio do not check it)
DEFAULT_ISSUER = "http://127.0.0.1:8080/realms/vantage6"
#: generation 5: a minted token's lifetime, s (Keycloak's default access-token lifespan)
KEYCLOAK_TOKEN_LIFETIME = 300


def models(generation: int):
    """The generation's own models: vantage6-server 4.15.2's ``vantage6.server.db`` (4), or
    vantage6-hq 5.0.3's ``vantage6.hq.model`` (5); each installed in its own virtualenv."""
    with unpatched_vantage6_import():
        if generation == 4:
            from vantage6.server import db as v6db
            return v6db
        if generation == 5:
            from vantage6.hq import model as m
            return m
    raise ValueError(f"vantage6 generation {generation} is not supported (4 or 5)")


def _metadata(generation: int, v6):
    if generation == 4:
        return v6.Base.metadata
    from vantage6.hq.model.base import Base
    return Base.metadata


def realm_key_pair(directory: Path, prefix: str) -> tuple[Path, Path]:
    """A fresh 2048-bit RSA realm key for one fixture: ``<prefix>-realm-key.pem`` (PKCS#8,
    mode 0600) and ``<prefix>-realm-pub.pem`` (SubjectPublicKeyInfo) in ``directory``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    directory.mkdir(parents=True, exist_ok=True)
    private = (directory / f"{prefix}-realm-key.pem").resolve()
    public = (directory / f"{prefix}-realm-pub.pem").resolve()
    private.touch(mode=0o600)
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@dataclass(frozen=True)
class Plan:
    """Which organization each node of each collaboration belongs to."""

    organizations: int
    #: per collaboration, the organization indexes of its members (one node each)
    members: list[list[int]]


def plan(nodes: int, size_min: int, size_max: int) -> Plan:
    """Collaborations of ``size_min``..``size_max`` members (cycling through the sizes) until
    ``nodes`` nodes exist; the last one takes what is left. Organizations are shared between
    collaborations the way vantage6 deployments share them: collaboration ``c``'s members are
    consecutive organizations from a rotating start, so an organization sits in several
    collaborations but never twice in one."""
    if nodes < 1 or size_min < 1 or size_max < size_min:
        raise ValueError("need nodes >= 1 and 1 <= collaboration size <= maximum size")
    sizes, left, i = [], nodes, 0
    span = size_max - size_min + 1
    while left > 0:
        size = min(left, size_min + (i * 7) % span)
        sizes.append(size)
        left -= size
        i += 1
    organizations = max(max(sizes), min(nodes, max(size_max, nodes // 5)))
    members, start = [], 0
    for size in sizes:
        members.append([(start + k) % organizations for k in range(size)])
        start = (start + size) % organizations
    return Plan(organizations, members)


def _insert(conn, table, rows: list[dict]) -> None:
    for i in range(0, len(rows), CHUNK):
        conn.execute(table.insert(), rows[i : i + CHUNK])


def seed(database_url: str, *, nodes: int, collaboration_size: int,
         collaboration_size_max: int | None = None, runs_per_node: int = 1,
         secret: str | None = None, prefix: str | None = None, generation: int = 4,
         key_dir: Path | None = None, issuer: str = DEFAULT_ISSUER) -> dict:
    """Creates the tables when needed, inserts one fixture and returns it (the file's dict).
    Generation 4 needs ``secret`` (the configuration's ``jwt_secret_key``); generation 5 needs
    ``key_dir``, where the fixture's realm key pair is written."""
    if generation == 4 and secret is None:
        raise ValueError("a generation 4 fixture needs the configuration's jwt_secret_key")
    if generation == 5 and key_dir is None:
        raise ValueError("a generation 5 fixture needs a directory for its realm key (key_dir)")
    v6db = models(generation)
    size_max = collaboration_size_max or collaboration_size
    layout = plan(nodes, collaboration_size, size_max)
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url, poolclass=NullPool)
    _metadata(generation, v6db).create_all(engine)
    org_t, collab_t = v6db.Organization.__table__, v6db.Collaboration.__table__
    auth_t, node_t = v6db.Authenticatable.__table__, v6db.Node.__table__
    task_t, run_t, member_t = v6db.Task.__table__, v6db.Run.__table__, v6db.Member

    with engine.begin() as conn:
        _insert(conn, org_t, [{"name": f"{prefix}-org-{i}"} for i in range(layout.organizations)])
        org_ids = dict(conn.execute(
            select(org_t.c.name, org_t.c.id).where(org_t.c.name.like(f"{prefix}-org-%"))).all())
        orgs = [org_ids[f"{prefix}-org-{i}"] for i in range(layout.organizations)]

        _insert(conn, collab_t, [{"name": f"{prefix}-collab-{c}", "encrypted": False}
                                 for c in range(len(layout.members))])
        collab_ids = dict(conn.execute(
            select(collab_t.c.name, collab_t.c.id).where(collab_t.c.name.like(f"{prefix}-collab-%"))).all())
        collabs = [collab_ids[f"{prefix}-collab-{c}"] for c in range(len(layout.members))]

        _insert(conn, member_t, [{"organization_id": orgs[o], "collaboration_id": collabs[c]}
                                 for c, members in enumerate(layout.members) for o in members])

        # a node is an authenticatable row (its id is the token's sub) plus a node row
        slots = [(c, o) for c, members in enumerate(layout.members) for o in members]
        first = conn.execute(select(auth_t.c.id).order_by(auth_t.c.id.desc()).limit(1)).scalar() or 0
        auth_rows = [{"type": "node", "status": "offline"} for _ in slots]
        if generation == 5:  # the node's Keycloak service-account user (its tokens' sub), client
            for row in auth_rows:
                row["keycloak_id"] = str(uuid.uuid4())
                row["keycloak_client_id"] = str(uuid.uuid4())
        _insert(conn, auth_t, auth_rows)
        auth_ids = [r[0] for r in conn.execute(
            select(auth_t.c.id).where(auth_t.c.id > first, auth_t.c.type == "node").order_by(auth_t.c.id)).all()]
        if len(auth_ids) != len(slots):
            raise RuntimeError("another writer inserted authenticatable rows while seeding")
        node_rows = [{"id": auth_ids[k], "name": f"{prefix}-node-{k}", "api_key": "not-a-key",
                      "collaboration_id": collabs[c], "organization_id": orgs[o]}
                     for k, (c, o) in enumerate(slots)]
        if generation == 5:
            keycloak_ids = dict(conn.execute(
                select(auth_t.c.id, auth_t.c.keycloak_id).where(auth_t.c.id.in_(auth_ids))).all())
            for row in node_rows:
                row.pop("api_key")  # 5.x nodes authenticate through Keycloak
        _insert(conn, node_t, node_rows)

        _insert(conn, task_t, [{"name": f"{prefix}-task-{c}", "image": "bench/none",
                                "collaboration_id": collabs[c], "init_org_id": orgs[m[0]],
                                "job_id": 1_000_000 + c}
                               for c, m in enumerate(layout.members)])
        task_ids = dict(conn.execute(
            select(task_t.c.name, task_t.c.id).where(task_t.c.name.like(f"{prefix}-task-%"))).all())
        tasks = [task_ids[f"{prefix}-task-{c}"] for c in range(len(layout.members))]

        run_extra = {"action": "central_compute"} if generation == 5 else {}
        _insert(conn, run_t, [{"task_id": tasks[c], "organization_id": orgs[o], "status": "active",
                               **run_extra}
                              for c, o in slots for _ in range(runs_per_node)])
        run_rows = conn.execute(
            select(run_t.c.id, run_t.c.task_id, run_t.c.organization_id)
            .where(run_t.c.task_id.in_(tasks)).order_by(run_t.c.id)).all()

    task_index = {t: c for c, t in enumerate(tasks)}
    node_of = {(collabs[c], orgs[o]): auth_ids[k] for k, (c, o) in enumerate(slots)}
    by_collab: list[list[int]] = [[] for _ in collabs]
    for k, (c, _) in enumerate(slots):
        by_collab[c].append(auth_ids[k])
    runs = []
    for run_id, task_id, org_id in run_rows:
        c = task_index[task_id]
        runs.append({"id": run_id, "task_id": task_id, "job_id": 1_000_000 + c,
                     "collaboration_id": collabs[c], "organization_id": org_id,
                     "node_id": node_of[(collabs[c], org_id)]})
    nodes_out = [{"id": r["id"], "name": r["name"], "organization_id": r["organization_id"],
                  "collaboration_id": r["collaboration_id"]} for r in node_rows]
    head: dict = {"generation": generation}
    if generation == 4:
        head["jwt_secret_key"] = secret
    else:
        private, public = realm_key_pair(Path(key_dir), prefix)
        head["keycloak"] = {"private_key_file": str(private), "public_key_file": str(public),
                            "issuer": issuer, "kid": f"{prefix}-realm-key",
                            "token_lifetime_s": KEYCLOAK_TOKEN_LIFETIME}
        for n in nodes_out:
            n["keycloak_id"] = keycloak_ids[n["id"]]
    return {
        **head,
        "prefix": prefix,
        "nodes": nodes_out,
        "collaborations": [{"id": collabs[c], "nodes": members} for c, members in enumerate(by_collab)],
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True, help="SQLAlchemy URL of the vantage6 database")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--collaboration-size", type=int, required=True,
                   help="nodes per collaboration (at least --nodes: one collaboration)")
    p.add_argument("--collaboration-size-max", type=int,
                   help="sizes spread from --collaboration-size to this (e.g. 5 and 20)")
    p.add_argument("--runs-per-node", type=int, default=1)
    p.add_argument("--generation", type=int, choices=(4, 5), default=4,
                   help="4: vantage6-server 4.15.2 tables, HS256 secret; 5: vantage6-hq 5.0.3 "
                        "tables (run in clients/.venv-v5), a realm key pair beside --out")
    p.add_argument("--secret", help="generation 4: the configuration's jwt_secret_key")
    p.add_argument("--issuer", default=DEFAULT_ISSUER,
                   help="generation 5: the tokens' iss (default %(default)s)")
    p.add_argument("--prefix", help="name prefix of the rows (default: bench-<random>)")
    p.add_argument("--out", type=Path, required=True, help="fixture file to write")
    a = p.parse_args(argv)
    if a.generation == 4 and a.secret is None:
        p.error("generation 4 needs --secret (the configuration's jwt_secret_key)")
    fixture = seed(a.database_url, nodes=a.nodes, collaboration_size=a.collaboration_size,
                   collaboration_size_max=a.collaboration_size_max, runs_per_node=a.runs_per_node,
                   secret=a.secret, prefix=a.prefix, generation=a.generation,
                   key_dir=a.out.resolve().parent, issuer=a.issuer)
    a.out.write_text(json.dumps(fixture))
    print(f"{a.out}: {len(fixture['nodes'])} nodes in {len(fixture['collaborations'])} "
          f"collaborations, {len(fixture['runs'])} runs", file=sys.stderr)


if __name__ == "__main__":
    main()
