"""clients/bench/fixture.py: the load generator's seeded vantage6 rows, read back through
vantage6-server 4.15.2's own models."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fixture  # noqa: E402
from support import v6db  # noqa: E402


@pytest.mark.parametrize("nodes,lo,hi", [(1, 1, 1), (1000, 1000, 1000), (1000, 5, 20), (37, 5, 20), (7, 10, 10)])
def test_plan_sizes_and_memberships(nodes, lo, hi):
    layout = fixture.plan(nodes, lo, hi)
    sizes = [len(m) for m in layout.members]
    assert sum(sizes) == nodes
    assert all(s <= hi for s in sizes) and all(s >= lo for s in sizes[:-1])
    for members in layout.members:  # an organization has one node per collaboration
        assert len(set(members)) == len(members)
        assert all(0 <= o < layout.organizations for o in members)


def test_plan_rejects_nonsense():
    with pytest.raises(ValueError):
        fixture.plan(0, 5, 20)
    with pytest.raises(ValueError):
        fixture.plan(10, 20, 5)


def test_seeded_rows_are_vantage6_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'bench.sqlite'}"
    first = fixture.seed(url, nodes=30, collaboration_size=5, collaboration_size_max=20,
                         runs_per_node=2, secret="s")
    second = fixture.seed(url, nodes=4, collaboration_size=4, secret="s")  # a second fixture beside it
    assert {n["id"] for n in first["nodes"]}.isdisjoint(n["id"] for n in second["nodes"])
    assert first["jwt_secret_key"] == "s" and first["generation"] == 4

    from sqlalchemy import create_engine
    with Session(create_engine(url)) as s:
        for n in first["nodes"]:
            node = s.get(v6db.Node, n["id"])
            assert (node.name, node.status, node.type) == (n["name"], "offline", "node")
            assert node.organization_id == n["organization_id"]
            assert node.collaboration_id == n["collaboration_id"]
            assert node.organization in node.collaboration.organizations
        for c in first["collaborations"]:
            collab = s.get(v6db.Collaboration, c["id"])
            assert sorted(n.id for n in collab.nodes) == sorted(c["nodes"])
        assert Counter(r["node_id"] for r in first["runs"]) == {n["id"]: 2 for n in first["nodes"]}
        for r in first["runs"]:
            run = s.get(v6db.Run, r["id"])
            assert run.task.job_id == r["job_id"]
            assert run.task.collaboration_id == r["collaboration_id"]
            assert run.organization_id == r["organization_id"] == s.get(v6db.Node, r["node_id"]).organization_id
