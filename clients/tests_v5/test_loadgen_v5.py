"""Smoke run of the load generator (clients/loadgen, binary v6-loadgen) as vantage6 5.0.3 nodes:
a generation-5 fixture (clients/bench/fixture.py: HQ 5.0.3's tables, every node with a
``keycloak_id``, a realm key pair made for the run), a Keycloak stand-in serving that fixture's
public key, and one ``v6-socketio serve`` configured for 5.x as the suite's session server is
(``vantage6_generation: 5``, ``KEYCLOAK_URL``/``KEYCLOAK_REALM``, RabbitMQ). The load generator
mints the nodes' RS256 tokens itself; every client must connect and sync, and every published
event (fanout) or relayed status change (relay) reach each member of its room once. Figures (latency, CPU, memory) are printed by the
load generator, never asserted here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from compat_support import serving, stop_serve
from keycloak_standin import KeycloakStandIn
from sio_testkit import REPO, ServerProcess

sys.path.insert(0, str(REPO / "clients" / "bench"))

import fixture  # noqa: E402

LOADGEN = Path(os.environ.get("V6_LOADGEN_BIN", REPO / "target" / "debug" / "v6-loadgen"))
NODES = 12


@pytest.fixture(scope="module")
def bench(db, broker, tmp_path_factory):
    """12 generation-5 nodes in collaborations of 3-5, the realm stand-in with the fixture's
    key, one server reading the key from it."""
    if not LOADGEN.exists():
        pytest.fail(f"{LOADGEN} does not exist: run `cargo build --workspace` or set V6_LOADGEN_BIN")
    workdir = tmp_path_factory.mktemp(f"loadgen-v5-{db.backend}")
    with KeycloakStandIn() as kc:
        seeded = fixture.seed(db.uri, nodes=NODES, collaboration_size=3, collaboration_size_max=5,
                              runs_per_node=1, generation=5, key_dir=workdir,
                              issuer=f"{kc.url}/realms/{kc.realm}")
        # the realm signs with the fixture's key: what the server fetches verifies its tokens
        kc.key = serialization.load_pem_private_key(
            Path(seeded["keycloak"]["private_key_file"]).read_bytes(), password=None)
        path = workdir / "fixture.json"
        path.write_text(json.dumps(seeded))
        srv = ServerProcess(
            workdir, db, None,
            extra={"rabbitmq": {"uri": broker}, "api_path": "/hq", "jwt_decode_leeway": 10,
                   "jwt_decode_algorithms": ["RS256", "RS384", "RS512"]},
            socketio_extra={"vantage6_generation": "5"},
            env={"KEYCLOAK_URL": kc.url, "KEYCLOAK_REALM": kc.realm},
            name=f"loadgen-v5-{db.backend}",
        )
        with serving(srv, stop=stop_serve):
            yield path, srv, broker, seeded


def loadgen(bench, *args: str) -> list[dict]:
    path, srv, broker, _ = bench
    cmd = [str(LOADGEN), "--fixture", str(path), "--url", srv.url, "--amqp-uri", broker,
           "--message-queue-format", "args", "--server-pid", str(srv.proc.pid),
           "--label", "smoke-v5", "--pause", "0.1", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stderr[-4000:]}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"no result line:\n{done.stderr[-4000:]}"
    return lines


def test_generation_five_fixture_carries_the_keycloak_subjects(bench, db):
    _, _, _, seeded = bench
    assert seeded["generation"] == 5 and "jwt_secret_key" not in seeded
    with db.session() as s:
        for n in seeded["nodes"]:
            node = s.get(db.models.Node, n["id"])
            assert node.keycloak_id == n["keycloak_id"]


def test_capacity_connects_and_syncs_every_keycloak_node(bench):
    lines = loadgen(bench, "--polling-share", "0.25", "capacity", "--connections", "20",
                    "--settle", "0.2")
    assert [line["phase"] for line in lines] == ["fresh", "after_storm"]
    for line in lines:
        assert line["scenario"] == "capacity" and line["label"] == "smoke-v5"
        assert line["connections"] == 20
        assert line["transport"]["polling"] > 0 and line["transport"]["websocket"] > 0
        assert line["connected"] == line["synced"] == 20, line
        assert line["failed"] == 0, line
        assert line["errors"] == [], line


def test_fanout_reaches_every_keycloak_node_once(bench):
    lines = loadgen(bench, "--polling-share", "0.25", "fanout", "--rates", "50,200",
                    "--duration", "1")
    assert [line["offered_per_s"] for line in lines] == [50, 200]
    for line in lines:
        assert line["scenario"] == "fanout" and line["topology"] == "collabs"
        assert line["nodes"] == NODES
        assert line["transport"]["polling"] > 0 and line["transport"]["websocket"] > 0
        assert line["events"] > 0 and line["expected"] > 0
        assert line["delivered"] == line["expected"], line
        assert line["lost"] == 0, line
        assert line["duplicated"] == 0, line
        assert line["errors"] == [], line


def test_relay_reaches_every_keycloak_node_once(bench):
    lines = loadgen(bench, "--polling-share", "0.25", "relay", "--rates", "50,150",
                    "--duration", "1")
    assert len(lines) == 2
    for line in lines:
        assert line["scenario"] == "relay" and line["nodes"] == NODES
        assert line["events"] > 0 and line["expected"] > 0
        assert line["delivered"] == line["expected"], line
        assert line["lost"] == 0, line
        assert line["duplicated"] == 0, line
        assert line["errors"] == [], line
