"""The simulator's kill_containers logic (mirrors Node.kill_containers); no server
involved because only the REST API (out of scope here) emits kill_containers."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import node_simulator  # noqa: E402


def make_node(runs="1:10,2:10:5,3:11"):
    args = SimpleNamespace(
        events_out=None, token="x.eyJzdWIiOiA3fQ.y", token_file=None, node_id=None,
        collaboration_id=4, organization_id=9, running_runs=runs, node_info=None,
    )
    return node_simulator.SimulatedNode(args)


def test_token_sub_is_the_node_id():
    assert make_node().node_id == 7


def test_kill_other_collaboration_or_node_is_ignored():
    node = make_node()
    assert node.kill_containers({"collaboration_id": 5, "kill_list": None}) == []
    assert node.kill_containers({"collaboration_id": 4, "node_id": 8}) == []
    assert len(node.running) == 3


def test_kill_list_only_own_organisation():
    node = make_node()
    killed = node.kill_containers({
        "collaboration_id": 4,
        "kill_list": [
            {"task_id": 10, "run_id": 2, "organization_id": 9},
            {"task_id": 10, "run_id": 1, "organization_id": 3},
        ],
    })
    assert killed == [{"run_id": 2, "task_id": 10, "parent_id": 5}]
    assert [r["run_id"] for r in node.running] == [1, 3]


def test_kill_all_for_this_node():
    node = make_node()
    killed = node.kill_containers({"collaboration_id": 4, "node_id": 7})
    assert [k["run_id"] for k in killed] == [1, 2, 3]
    assert node.running == []
