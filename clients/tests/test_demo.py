"""`v6-socketio demo` end to end, for vantage6 4.x and 5.x (`--vantage6 5`):
the printed simulator command connects a simulated node that gets `sync`
and joins its collaboration's rooms; the printed user token joins the
user's room. For 5.x the tokens are RS256 in Keycloak's claim layout and
verify with the realm key the demo generated."""
from __future__ import annotations

import base64
import json
import os
import queue
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
import socketio

from lineproc import LineProcess
from support import CLIENTS, free_port, server_binary, stop_process, wait_listening

SIMULATOR = CLIENTS / "node_simulator.py"
KEYCLOAK_CLAIMS = {"exp", "iat", "jti", "iss", "aud", "sub", "typ", "azp",
                   "preferred_username", "vantage6_client_type"}


def start_demo(tmp_path: Path, generation: str):
    binary = server_binary()
    if not binary.exists():
        pytest.fail(f"server binary {binary} does not exist: run `cargo build` or set V6_SOCKETIO_BIN")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("V6_SOCKETIO_") and not k.startswith("KEYCLOAK_")}
    env["RUST_LOG"] = "info"
    argv = [str(binary), "demo", "--dir", str(tmp_path / "demo"), "--port", str(port)]
    if generation == "5":
        argv += ["--vantage6", "5"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []
    threading.Thread(target=lambda: [lines.put(l.rstrip("\n")) for l in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: [stderr.append(l.rstrip()) for l in proc.stderr], daemon=True).start()
    out: list[str] = []
    deadline = time.monotonic() + 60
    while not any("Ctrl-C stops it" in l for l in out):
        assert proc.poll() is None, f"demo exited with {proc.returncode}: {stderr}"
        assert time.monotonic() < deadline, f"demo printed no instructions: {out} {stderr}"
        try:
            out.append(lines.get(timeout=0.2))
        except queue.Empty:
            pass
    wait_listening(proc, port, max(deadline - time.monotonic(), 1.0), lambda: stderr)
    return proc, out, stderr


def claims_of(token: str) -> tuple[dict, dict]:
    def part(p):
        return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    header, payload, _ = token.split(".")
    return part(header), part(payload)


@pytest.mark.parametrize("generation", ["4", "5"])
def test_demo_simulated_node_gets_sync_and_joins_its_rooms(generation, tmp_path):
    proc, out, stderr = start_demo(tmp_path, generation)
    sim = None
    user = socketio.Client()
    received: list[tuple[str, object]] = []
    try:
        command = next(l.strip() for l in out if "clients/simulate-node" in l)
        args = shlex.split(command)
        assert args[0] == "clients/simulate-node", command
        url = args[args.index("--url") + 1]
        token = args[args.index("--token") + 1]
        user_token = out[next(i for i, l in enumerate(out) if l.startswith("Token for demo-user")) + 1].strip()
        served = "5.x" if generation == "5" else "4.x"
        assert any(f"serving vantage6 {served}" in l for l in stderr), stderr

        if generation == "5":
            header, claims = claims_of(token)
            assert header["alg"] == "RS256", header
            assert KEYCLOAK_CLAIMS <= set(claims), claims
            assert claims["vantage6_client_type"] == "node"
            assert claims["preferred_username"] == "service-account-demo-node-a-node-client"
            assert claims["aud"] == "account" and claims["typ"] == "Bearer"
            assert "type" not in claims and "client_type" not in claims, "no 4.x claims"
            public = (tmp_path / "demo" / "demo5-realm-public.pem").read_text()
            verified = jwt.decode(token, public, algorithms=["RS256"], options={"verify_aud": False})
            assert verified["sub"] == claims["sub"]
            assert claims_of(user_token)[1]["vantage6_client_type"] == "user"
        else:
            assert claims_of(token)[1]["type"] == "access"

        # The printed command, run with this venv's python (the wrapper only
        # creates a virtualenv first); the simulator sends the token as the
        # handshake's Authorization header only.
        sim = LineProcess([sys.executable, str(SIMULATOR), *args[1:], "--events-out", "-",
                           "--stdin-commands", "--connect-timeout", "15"], label="simulator")
        want = [
            ("sync", None),
            ("message", "Node <demo-node-a> joined room <collaboration_1>"),
            ("message", "Node <demo-node-a> joined room <collaboration_1_organization_1>"),
        ]
        sim.wait_for(lambda ls: sim.events()[:3] == want, what="sync + join messages")
        sim.wait_line(lambda o: o.get("sent") == "node_info_update", what="node_info_update")

        db = tmp_path / "demo" / ("demo5.sqlite" if generation == "5" else "demo.sqlite")
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(db) as conn:
                status = conn.execute("SELECT status FROM authenticatable WHERE id = 1").fetchone()[0]
                rows = conn.execute("SELECT COUNT(*) FROM nodeconfig WHERE node_id = 1").fetchone()[0]
            if status == "online" and rows > 0:
                break
            assert time.monotonic() < deadline, (status, rows)
            time.sleep(0.1)

        # The user (event RECEIVE rule, global scope) joins collaboration_1.
        user.on("message", lambda m: received.append(("message", m)), namespace="/tasks")
        user.connect(url, headers={"Authorization": f"Bearer {user_token}"},
                     namespaces=["/tasks"], wait_timeout=15)
        sim.wait_for(lambda ls: ("message", "User <demo-user> joined room <collaboration_1>") in sim.events(),
                     what="the user's join message")
        deadline = time.monotonic() + 10
        while ("message", "User <demo-user> joined room <collaboration_1>") not in received:
            assert time.monotonic() < deadline, received
            time.sleep(0.05)
    finally:
        if user.connected:
            user.disconnect()
        if sim is not None:
            sim.stop()
        stop_process(proc)


def realm_stand_in(public_pems: list[str]):
    """A stand-in for Keycloak's `GET /realms/<realm>`: serves the last PEM
    of ``public_pems`` (a list the test may append to); counts requests."""
    import http.server

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            body = "".join(l for l in public_pems[-1].splitlines() if not l.startswith("-----"))
            data = json.dumps({"realm": self.path.rsplit("/", 1)[-1], "public_key": body}).encode()
            self.send_response(200 if self.path.startswith("/realms/") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, hits


def rsa_pair():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def events_of(url: str, token: str, wait: float = 1.5) -> tuple[list[str], bool]:
    """Connects with ``token``; the events received within ``wait`` seconds
    and whether the socket was still connected then."""
    got: list[str] = []
    client = socketio.Client()
    for name in ("expired_token", "invalid_token", "sync", "message"):
        client.on(name, (lambda n: lambda *a: got.append(n))(name), namespace="/tasks")
    client.connect(url, headers={"Authorization": f"Bearer {token}"}, namespaces=["/tasks"], wait_timeout=15)
    time.sleep(wait)
    connected = client.connected
    client.disconnect()
    return got, connected


def test_5x_token_failures_and_key_rotation_on_the_wire(tmp_path):
    """`serve` on the 5.x demo database with the realm key from a Keycloak
    stand-in (KEYCLOAK_URL/KEYCLOAK_REALM as HQ): HQ's answers to bad tokens,
    and a rotated realm key picked up with one re-fetch."""
    proc, out, stderr = start_demo(tmp_path, "5")
    stop_process(proc)
    demo = tmp_path / "demo"
    node_sub = claims_of(next(l.strip() for l in out if "clients/simulate-node" in l).split("--token ")[1])[1]["sub"]
    key_a, key_b = rsa_pair(), rsa_pair()
    pems = [key_a[1]]
    realm, hits = realm_stand_in(pems)
    port = free_port()
    config = tmp_path / "hq.yaml"
    config.write_text(f"uri: sqlite:///{demo / 'demo5.sqlite'}\nlogging: {{level: INFO}}\n"
                      "v6_socketio: {keycloak_key_refresh_interval: 3}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("V6_SOCKETIO_")}
    env.update(RUST_LOG="info", KEYCLOAK_URL=f"http://127.0.0.1:{realm.server_port}", KEYCLOAK_REALM="vantage6")
    serve = subprocess.Popen([str(server_binary()), "serve", "--config", str(config), "--port", str(port),
                              "--ip", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env)
    log: list[str] = []
    threading.Thread(target=lambda: [log.append(l.rstrip()) for l in serve.stderr], daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_listening(serve, port, 30, lambda: log)
        assert hits == ["/realms/vantage6"], "one fetch at start-up, HQ's endpoint"
        now = int(time.time())

        def tok(claims, key=key_a[0], alg="RS256"):
            return jwt.encode({"sub": node_sub, **claims}, key, algorithm=alg)

        assert events_of(url, tok({"exp": now + 300}))[0][:1] == ["sync"]
        assert events_of(url, tok({"exp": now - 60})) == (["expired_token"], True)
        assert events_of(url, tok({"exp": now - 5}))[0][:1] == ["sync"], "within the 10 s leeway"
        assert events_of(url, tok({"iat": now + 60})) == ([], True), "iat in the future: silent"
        assert events_of(url, jwt.encode({"sub": node_sub}, "secret", algorithm="HS256")) == ([], True)
        assert events_of(url, tok({"sub": 7})) == ([], True), "non-string sub: silent"
        assert events_of(url, tok({"sub": "no-such-subject"})) == ([], True)
        forged = tok({"exp": now - 60}, key=key_b[0])
        assert events_of(url, forged) == (["invalid_token"], True), "expired and wrong key: invalid_token"
        assert len(hits) == 2, f"one re-fetch for the wrong key: {hits}"
        assert events_of(url, tok({}, key=key_b[0])) == (["invalid_token"], True)
        assert len(hits) == 2, f"rate-limited within keycloak_key_refresh_interval: {hits}"

        # Keycloak rotates to key B: after the interval, B's tokens work after one re-fetch.
        pems.append(key_b[1])
        time.sleep(3.1)
        got, connected = events_of(url, tok({"exp": now + 300}, key=key_b[0]))
        assert got[:1] == ["sync"] and connected, got
        print(f"realm endpoint fetches: {len(hits)} (start-up, wrong-key re-fetch, rotation re-fetch)")
        assert len(hits) == 3, hits
        assert any("Keycloak realm key changed" in l for l in log), log
        # Key A's tokens are refused now.
        assert events_of(url, tok({}))[0] == ["invalid_token"]
    finally:
        stop_process(serve)
        realm.shutdown()
