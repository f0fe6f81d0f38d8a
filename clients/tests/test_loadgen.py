"""Smoke run of the load generator (clients/loadgen, binary v6-loadgen) against one v6-socketio
instance on RabbitMQ: a few nodes (some on long-polling), a few events, nothing lost. Figures
(latency, CPU, memory) are printed by the load generator, never asserted here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mq_support
from compat_support import serving
from support import REPO, ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fixture  # noqa: E402

pytestmark = pytest.mark.broker  # uses RabbitMQ: runs in the broker shard (conftest.py)
broker = pytest.fixture(scope="module")(mq_support.broker_fixture)

LOADGEN = Path(os.environ.get("V6_LOADGEN_BIN", REPO / "target" / "debug" / "v6-loadgen"))
NODES = 50


@pytest.fixture(scope="module")
def bench(broker, db, jwt_secret, tmp_path_factory):
    """A seeded fixture (50 nodes in collaborations of 5-10, two runs each) and one server."""
    if not LOADGEN.exists():
        pytest.fail(f"{LOADGEN} does not exist: run `cargo build --workspace` or set V6_LOADGEN_BIN")
    workdir = tmp_path_factory.mktemp(f"loadgen-{db.backend}")
    seeded = fixture.seed(db.uri, nodes=NODES, collaboration_size=5, collaboration_size_max=10,
                          runs_per_node=2, secret=jwt_secret)
    path = workdir / "fixture.json"
    path.write_text(json.dumps(seeded))
    srv = ServerProcess(workdir, db, jwt_secret, extra={"rabbitmq": {"uri": broker}},
                        name=f"loadgen-{db.backend}")
    with serving(srv, stop=mq_support.stop_serve):
        yield path, srv, broker


def loadgen(bench, *args: str) -> list[dict]:
    path, srv, broker = bench
    cmd = [str(LOADGEN), "--fixture", str(path), "--url", srv.url, "--amqp-uri", broker,
           "--server-pid", str(srv.proc.pid), "--label", "smoke", "--pause", "0.1", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stderr[-4000:]}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"no result line:\n{done.stderr[-4000:]}"
    return lines


def assert_zero_loss(line: dict, nodes: int):
    assert line["label"] == "smoke"
    assert line["nodes"] == nodes
    assert line["transport"]["polling"] > 0 and line["transport"]["websocket"] > 0
    assert line["events"] > 0
    assert line["expected"] > 0
    assert line["delivered"] == line["expected"], line
    assert line["lost"] == 0, line
    assert line["duplicated"] == 0, line
    assert line["errors"] == [], line
    assert set(line["latency_ms"]) == {"p50", "p90", "p99", "p999", "max"}


def test_fanout_delivers_every_new_task_once(bench):
    lines = loadgen(bench, "--nodes", "20", "--polling-share", "0.25",
                    "fanout", "--rates", "100,400", "--duration", "1")
    assert [line["offered_per_s"] for line in lines] == [100, 400]
    for line in lines:
        assert line["scenario"] == "fanout" and line["topology"] == "collabs"
        assert_zero_loss(line, 20)


def test_fanout_over_two_processes_merges_their_counts(bench):
    (line,) = loadgen(bench, "--nodes", "20", "--polling-share", "0.25", "--processes", "2",
                      "fanout", "--rates", "200", "--duration", "1")
    assert line["processes"] == 2
    assert_zero_loss(line, 20)


def test_relay_delivers_every_status_change_once(bench):
    lines = loadgen(bench, "--nodes", "20", "--polling-share", "0.25",
                    "relay", "--rates", "100,300", "--duration", "1")
    assert len(lines) == 2
    for line in lines:
        assert line["scenario"] == "relay"
        assert_zero_loss(line, 20)


def test_capacity_connects_and_syncs_every_node(bench):
    lines = loadgen(bench, "--polling-share", "0.2", "capacity", "--connections", str(NODES),
                    "--settle", "0.2")
    assert [line["phase"] for line in lines] == ["fresh", "after_storm"]
    for line in lines:
        assert line["scenario"] == "capacity"
        assert line["connections"] == NODES
        assert line["connected"] == line["synced"] == NODES, line
        assert line["failed"] == 0, line
        assert line["errors"] == [], line
        assert line["rss_after_kib"] > 0 and line["rss_before_kib"] > 0


def test_capacity_over_two_processes_adds_up_their_clients(bench):
    lines = loadgen(bench, "--polling-share", "0.2", "--processes", "2", "capacity",
                    "--connections", str(NODES), "--settle", "0.2")
    assert [line["phase"] for line in lines] == ["fresh", "after_storm"]
    for line in lines:
        assert line["scenario"] == "capacity" and line["processes"] == 2
        assert line["connections"] == line["nodes"] == NODES
        assert line["transport"]["websocket"] + line["transport"]["polling"] == NODES
        assert line["transport"]["polling"] == NODES // 5
        # every client of both processes, counted once
        assert line["connected"] == line["synced"] == NODES, line
        assert line["attempts"] == NODES and line["failed"] == 0, line
        assert line["errors"] == [], line
        assert line["rss_after_kib"] > 0 and line["rss_before_kib"] > 0
        assert line["kib_per_connection"] is not None
    assert lines[1]["rss_disconnected_kib"] > 0


def test_restart_over_two_processes_waits_for_every_client(broker, db, jwt_secret, tmp_path, bench):
    """A server of its own (no broker) is killed once the load generator, as two processes,
    says READY (once), and started again on the same port: one line, every client of both
    processes synced again."""
    path = bench[0]
    srv = ServerProcess(tmp_path, db, jwt_secret, name=f"loadgen-restart-{db.backend}")
    with serving(srv):
        cmd = [str(LOADGEN), "--fixture", str(path), "--url", srv.url, "--label", "smoke",
               "--processes", "2", "--nodes", "20", "--polling-share", "0.25",
               "restart", "--connections", "20", "--reconnection-delay", "0.2",
               "--reconnection-delay-max", "1", "--restart-timeout", "60"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stderr: list[str] = []
        ready = threading.Event()

        def read_stderr():
            for text in proc.stderr:
                stderr.append(text)
                if text.strip() == "READY":
                    ready.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        try:
            assert ready.wait(120), f"no READY:\n{''.join(stderr)[-4000:]}"
            srv.proc.kill()
            srv.proc.wait(10)
            srv.start()
            out, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        reader.join(10)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{''.join(stderr)[-4000:]}"
    assert [t.strip() for t in stderr].count("READY") == 1, "READY once, from the parent"
    (line,) = [json.loads(t) for t in out.splitlines() if t.strip()]
    assert line["scenario"] == "restart" and line["processes"] == 2
    assert line["connections"] == line["nodes"] == 20
    assert line["transport"] == {"websocket": 15, "polling": 5}
    assert line["synced"] == line["connected"] == 20, line
    assert line["attempts"] >= 20, line
    assert line["down_s"] >= 0 and line["reconnect_s"] >= 0, line
    assert line["errors"] == [], line
