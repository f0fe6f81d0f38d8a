"""clients/bench/fixture.py, generation 5: the load generator's seeded rows read back through
vantage6-hq 5.0.3's own models, and the realm key pair the fixture file names."""
from __future__ import annotations

import json
import stat
import sys
from collections import Counter
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from sio_testkit import REPO
from support_v5 import m

sys.path.insert(0, str(REPO / "clients" / "bench"))

import fixture  # noqa: E402


def test_seeded_rows_are_hq5_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'bench5.sqlite'}"
    first = fixture.seed(url, nodes=30, collaboration_size=5, collaboration_size_max=20,
                         runs_per_node=2, generation=5, key_dir=tmp_path,
                         issuer="http://kc.example/realms/vantage6")
    second = fixture.seed(url, nodes=4, collaboration_size=4, generation=5, key_dir=tmp_path)
    assert {n["id"] for n in first["nodes"]}.isdisjoint(n["id"] for n in second["nodes"])
    assert first["generation"] == 5 and "jwt_secret_key" not in first
    kc = first["keycloak"]
    assert kc["issuer"] == "http://kc.example/realms/vantage6"
    assert kc["kid"] == f"{first['prefix']}-realm-key"
    assert kc["private_key_file"] != second["keycloak"]["private_key_file"]  # a key per fixture
    subjects = [n["keycloak_id"] for n in first["nodes"] + second["nodes"]]
    assert len(set(subjects)) == len(subjects)

    with Session(create_engine(url)) as s:
        for n in first["nodes"]:
            node = s.get(m.Node, n["id"])
            assert (node.name, node.status, node.type) == (n["name"], "offline", "node")
            assert node.keycloak_id == n["keycloak_id"]  # the sub HQ looks nodes up by
            assert node.keycloak_client_id
            assert s.query(m.Authenticatable).filter_by(keycloak_id=n["keycloak_id"]).one().id == n["id"]
            assert node.organization_id == n["organization_id"]
            assert node.collaboration_id == n["collaboration_id"]
            assert node.organization in node.collaboration.organizations
        for c in first["collaborations"]:
            collab = s.get(m.Collaboration, c["id"])
            assert sorted(n.id for n in collab.nodes) == sorted(c["nodes"])
        assert Counter(r["node_id"] for r in first["runs"]) == {n["id"]: 2 for n in first["nodes"]}
        for r in first["runs"]:
            run = s.get(m.Run, r["id"])
            assert run.task.job_id == r["job_id"]
            assert run.task.collaboration_id == r["collaboration_id"]
            assert run.organization_id == r["organization_id"] == s.get(m.Node, r["node_id"]).organization_id


def test_realm_key_pair_signs_and_verifies(tmp_path):
    seeded = fixture.seed(f"sqlite:///{tmp_path / 'k.sqlite'}", nodes=2, collaboration_size=2,
                          generation=5, key_dir=tmp_path / "keys")
    kc = seeded["keycloak"]
    private, public = Path(kc["private_key_file"]), Path(kc["public_key_file"])
    assert private.parent == public.parent == (tmp_path / "keys").resolve()
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    token = jwt.encode({"sub": seeded["nodes"][0]["keycloak_id"]}, key, algorithm="RS256",
                       headers={"kid": kc["kid"]})
    claims = jwt.decode(token, public.read_text(), algorithms=["RS256"])
    assert claims["sub"] == seeded["nodes"][0]["keycloak_id"]


def test_command_line_writes_the_fixture_and_its_keys(tmp_path):
    out = tmp_path / "out" / "fixture.json"
    out.parent.mkdir()
    fixture.main(["--generation", "5", "--database-url", f"sqlite:///{tmp_path / 'c.sqlite'}",
                  "--nodes", "3", "--collaboration-size", "3", "--prefix", "cli5", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["generation"] == 5 and written["prefix"] == "cli5"
    assert Path(written["keycloak"]["private_key_file"]) == (out.parent / "cli5-realm-key.pem").resolve()
    assert written["keycloak"]["issuer"] == fixture.DEFAULT_ISSUER
    assert len(written["nodes"]) == 3 and all(n["keycloak_id"] for n in written["nodes"])


def test_generation_five_needs_a_key_directory(tmp_path):
    with pytest.raises(ValueError, match="key_dir"):
        fixture.seed(f"sqlite:///{tmp_path / 'x.sqlite'}", nodes=1, collaboration_size=1,
                     generation=5)
