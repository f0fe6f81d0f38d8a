"""Other client stacks: the node simulator (vantage6-node's socket client) under
python-socketio 5.15.0 (this venv) and 5.18.1 (clients/.venv-sio518), and the
JavaScript socket.io-client 4.8 as the vantage6 UI uses it."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from lineproc import LineProcess
from skip_policy import skip_by_design, skip_missing
from support import (
    CLIENTS,
    expect_exact,
    join_msg,
    left_msg,
    node_status_payload,
    quiesce,
    wait_until,
)

SIMULATOR = CLIENTS / "node_simulator.py"
VENV_518 = CLIENTS / ".venv-sio518" / "bin" / "python"
JS_DIR = CLIENTS / "js"


def python_for(version: str) -> str:
    if version == "5.15.0":
        return sys.executable
    if not VENV_518.exists():
        skip_missing("venv-sio518",
                     f"{VENV_518} is missing: create it from clients/requirements-socketio-latest.txt")
    return str(VENV_518)


def installed_socketio(python: str) -> str:
    import subprocess

    out = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('python-socketio'))"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def run_simulator(python, srv, *, token=None, token_file=None, transport="both", extra=()):
    argv = [python, str(SIMULATOR), "--url", srv.url, "--transport", transport,
            "--events-out", "-", "--stdin-commands", "--connect-timeout", "15", *extra]
    if token:
        argv += ["--token", token]
    if token_file:
        argv += ["--token-file", str(token_file)]
    return LineProcess(argv, label=f"simulator[{Path(python).parent.parent.name}]")


def sim_events(sim):
    return sim.events()


@pytest.mark.parametrize("transport", ["both", "polling", "websocket"])
@pytest.mark.parametrize("sio_version", ["5.15.0", "5.18.1"])
def test_node_simulator_lifecycle(sio_version, transport, world, db, srv, tokens, connect_user):
    if db.backend != "sqlite" and transport != "both":
        skip_by_design("the transport matrix runs on SQLite; other backends run the default transport")
    python = python_for(sio_version)
    assert installed_socketio(python) == sio_version
    glob = connect_user(world.u_glob)
    a1 = world.node_a1
    c1 = f"collaboration_{world.c1.id}"
    c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"

    sim = run_simulator(python, srv, token=tokens.access(a1), transport=transport,
                        extra=["--ping-first", "0.2", "--ping-interval", "0.5",
                               "--collaboration-id", str(world.c1.id),
                               "--organization-id", str(a1.org_id)])
    try:
        own = [("sync", None), join_msg("Node", a1.name, c1), join_msg("Node", a1.name, c1_orga)]
        sim.wait_for(lambda ls: len(sim_events(sim)) >= 3, what="sync + join messages")
        # sync -> node_info_update with the 4.x payload; rows == what vantage6 would store
        sent = sim.wait_line(lambda o: o.get("sent") == "node_info_update", what="node_info_update sent")
        expected_rows = db.reference_node_info_update(world.twin.id, sent["data"])
        db.wait_node_config(a1.id, expected_rows, what="after the simulator's node_info_update")
        # the ping thread keeps it online with last_seen
        sim.wait_line(lambda o: o.get("sent") == "ping", what="a ping")
        wait_until(lambda: db.auth_row(a1.id)[0] == "online" and db.auth_row(a1.id)[1] is not None,
                   what="ping stored")
        expect_exact({glob: [("node-online", node_status_payload(a1)), join_msg("Node", a1.name, c1)]})

        status = {"run_id": world.r_a.id, "task_id": world.task1.id, "collaboration_id": world.c1.id,
                  "status": "completed", "node_id": a1.id, "organization_id": a1.org_id, "parent_id": None}
        sim.send({"emit": "algorithm_status_change", "data": status})
        relayed = ("algorithm_status_change", dict(status, job_id=world.task1.extra["job_id"]))
        sim.wait_for(lambda ls: len(sim_events(sim)) >= 4, what="the relayed algorithm_status_change")
        expect_exact({glob: [relayed]})
        assert sim_events(sim) == own + [relayed], sim_events(sim)

        sim.send({"cmd": "disconnect"})
        assert sim.stop(10) == 0, "\n".join(sim.stderr[-20:])
        expect_exact({glob: [left_msg(a1.name, c1), ("node-offline", node_status_payload(a1))]})
        wait_until(lambda: db.auth_row(a1.id)[0] == "offline", what="offline after disconnect")
        wait_until(lambda: db.node_config_count(a1.id) == 0, what="node_config cleared")
    finally:
        sim.stop(2)


@pytest.mark.parametrize("kind", ["expired", "forged"])
@pytest.mark.parametrize("sio_version", ["5.15.0", "5.18.1"])
def test_node_simulator_token_recovery(sio_version, kind, world, db, srv, tokens, connect_user, tmp_path):
    """Like NodeTaskNamespace.on_expired_token / on_invalid_token: disconnect,
    obtain a new token, connect a NEW client, get sync."""
    python = python_for(sio_version)
    glob = connect_user(world.u_glob)
    b1 = world.node_b1
    c1 = f"collaboration_{world.c1.id}"
    c1_orgb = f"collaboration_{world.c1.id}_organization_{world.org_b.id}"
    token_file = tmp_path / "token"
    token_file.write_text(tokens.expired(b1) if kind == "expired" else tokens.forged(b1))
    sim = run_simulator(python, srv, token_file=token_file)
    try:
        event = "expired_token" if kind == "expired" else "invalid_token"
        sim.wait_line(lambda o: o.get("event") == event, what=event)
        assert db.auth_row(b1.id)[0] == "offline"
        token_file.write_text(tokens.access(b1))  # the "REST refresh"
        sim.wait_for(lambda ls: len(sim_events(sim)) >= 4, what="recovered connect sequence")
        quiesce()
        assert sim_events(sim) == [
            (event, None), ("sync", None), join_msg("Node", b1.name, c1), join_msg("Node", b1.name, c1_orgb),
        ]
        expect_exact({glob: [("node-online", node_status_payload(b1)), join_msg("Node", b1.name, c1)]})
        wait_until(lambda: db.auth_row(b1.id)[0] == "online", what="recovered node online")
        connects = [o for o in sim.lines if o.get("event") == "connect"]
        assert len(connects) == 2, f"expected two connections (old + new client): {sim.lines}"
    finally:
        sim.send({"cmd": "disconnect"}) if sim.proc.poll() is None else None
        sim.stop(5)


def test_node_simulator_without_token_file_exits_on_expired_token(world, srv, tokens):
    sim = run_simulator(sys.executable, srv, token=tokens.expired(world.node_b1))
    try:
        sim.wait_line(lambda o: o.get("event") == "expired_token", what="expired_token")
        assert sim.proc.wait(20) == 3, "\n".join(sim.stderr[-20:])
    finally:
        sim.stop(2)


# ---------------------------------------------------------------------------
# JavaScript socket.io-client
# ---------------------------------------------------------------------------
def run_js(srv, token, transport):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (Node.js) is not installed")
    if not (JS_DIR / "node_modules" / "socket.io-client").exists():
        pytest.fail(f"socket.io-client is not installed: run `npm ci` in {JS_DIR}")
    return LineProcess([node, str(JS_DIR / "client.js"), "--url", srv.url, "--token", token,
                        "--transport", transport], cwd=str(JS_DIR), label=f"js[{transport}]")


@pytest.mark.parametrize("transport", ["both", "polling", "websocket"])
def test_js_client_as_ui_user(transport, world, db, srv, tokens, connect_node):
    glob = world.u_glob
    rooms = world.user_rooms(glob)
    js = run_js(srv, tokens.access(glob), transport)
    try:
        js.wait_line(lambda o: o.get("event") == "connect", what="connect")
        js.wait_for(lambda ls: len(js.events()) >= len(rooms), what="join messages")
        quiesce()
        assert sorted(js.events(), key=repr) == sorted([join_msg("User", glob.name, r) for r in rooms], key=repr)
        wait_until(lambda: db.auth_row(glob.id)[0] == "online")
        if transport == "both":
            js.wait_line(lambda o: o.get("event") == "upgrade", what="upgrade to websocket")
        n_before = len(js.events())

        a1 = connect_node(world.node_a1)
        c1 = f"collaboration_{world.c1.id}"
        status = {"run_id": world.r_a.id, "task_id": world.task1.id, "collaboration_id": world.c1.id,
                  "status": "active", "node_id": world.node_a1.id, "organization_id": world.org_a.id,
                  "parent_id": None}
        a1.emit("algorithm_status_change", status)
        a1.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_a.id,
                                  "task_id": world.task1.id, "log": "js sees this"})
        js.wait_for(lambda ls: len(js.events()) >= n_before + 4, what="node events")
        a1.disconnect()
        js.wait_for(lambda ls: len(js.events()) >= n_before + 6, what="node leave events")
        quiesce()
        assert js.events()[n_before:] == [
            ("node-online", node_status_payload(world.node_a1)),
            join_msg("Node", world.node_a1.name, c1),
            ("algorithm_status_change", dict(status, job_id=world.task1.extra["job_id"])),
            ("algorithm_log", {"run_id": world.r_a.id, "task_id": world.task1.id, "log": "js sees this"}),
            left_msg(world.node_a1.name, c1),
            ("node-offline", node_status_payload(world.node_a1)),
        ]
    finally:
        js.stop(5)
    wait_until(lambda: db.auth_row(glob.id)[0] == "offline", what="user offline after the JS client left")


def test_js_client_as_node_websocket_only(world, db, srv, tokens):
    a1 = world.node_a1
    js = run_js(srv, tokens.access(a1), "websocket")
    try:
        js.wait_for(lambda ls: len(js.events()) >= 3, what="sync + join messages")
        js.send({"emit": "node_info_update", "data": {"encryption": False, "database_labels": ["default"]}})
        js.send({"emit": "ping"})
        wait_until(lambda: db.node_config_count(a1.id) == 2 and db.auth_row(a1.id)[1] is not None,
                   what="node_info_update and ping from the JS client")
        quiesce()
        c1 = f"collaboration_{world.c1.id}"
        c1_orga = f"collaboration_{world.c1.id}_organization_{world.org_a.id}"
        assert js.events() == [("sync", None), join_msg("Node", a1.name, c1), join_msg("Node", a1.name, c1_orga)]
    finally:
        js.stop(5)


def test_js_client_unidentified_stays_connected(world, srv, tokens):
    js = run_js(srv, tokens.forged(world.node_a1), "both")
    try:
        js.wait_line(lambda o: o.get("event") == "invalid_token", what="invalid_token")
        js.send({"emit": "ping"})
        quiesce()
        assert js.events() == [("invalid_token", None)]
        assert not [o for o in js.lines if o.get("event") in ("disconnect", "connect_error")]
    finally:
        js.stop(5)
