"""Connect-time races of python-socketio's threaded client (issue 8, point 3).

python-socketio 5.15.0 and 5.18.1 clients (python-engineio 4) handle each
packet in a thread of its own, and finish their `connect()` after the server
has answered. The server holds a connection's first event
(`first_event_delay`) so that a handler that disconnects (`expired_token`,
`invalid_token`) or emits (`sync`) never runs before the client is ready.
`clients/race_stress.py` runs the cycles (see there) under each installed
python-socketio version, polling and websocket, 8 clients (8 nodes, each
alone in its collaboration) in parallel.

`V6_SOCKETIO_FIRST_EVENT_DELAY=0` in the environment of the test run (the
server inherits it) shows the races; `V6_TEST_RACE_CYCLES` sets the cycles
per client and kind (default 12: 96 per kind, transport and version).
Runs on both backends (about half a minute each).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import CLIENTS, Ent, v6db

CYCLES = int(os.environ.get("V6_TEST_RACE_CYCLES", "12"))
WORKERS = 8
VENVS = {"5.15.0": CLIENTS / ".venv", "5.18.1": CLIENTS / ".venv-sio518"}


def _python(version: str) -> str:
    python = VENVS[version] / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} missing: create it as clients/README.md says")
    return str(python)


def _lone_nodes(db, n: int) -> list[Ent]:
    """`n` nodes, each alone in a collaboration of its own organisation, so
    that no node's connect announcements reach another's socket."""
    made = []
    with db.session() as s:
        for _ in range(n):
            org = v6db.Organization(name=db.unique("org-race"))
            collab = v6db.Collaboration(name=db.unique("collab-race"), organizations=[org],
                                        encrypted=False)
            node = v6db.Node(name=db.unique("node-race"), organization=org, collaboration=collab,
                             status="offline")
            s.add_all([org, collab, node])
            s.flush()
            made.append(Ent(node.id, node.name, org.id, collab.id))
    return made


@pytest.mark.parametrize("version", list(VENVS))
@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_no_connect_races(db, srv, tokens, transport, version, figures):
    per_worker = [{"valid": tokens.access(n), "expired": tokens.expired(n), "forged": tokens.forged(n)}
                  for n in _lone_nodes(db, WORKERS)]
    cmd = [_python(version), str(CLIENTS / "race_stress.py"), "--url", srv.url,
           "--transport", transport, "--cycles", str(CYCLES), "--tokens", json.dumps(per_worker)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    c = result["counts"]
    figures(f"\npython-socketio {result['version']} {transport}: {result['seconds']} s, "
            f"hold {os.environ.get('V6_SOCKETIO_FIRST_EVENT_DELAY', 'default')} ms: "
            f"{json.dumps(c, sort_keys=True)}; connect-to-sync {result['connect_to_sync_ms']}"
            f" {result['errors']}")
    n = CYCLES * WORKERS
    crashes = {k: v for k, v in c.items() if k.startswith("thread_crash") or "failed" in k}
    assert not crashes, f"handler threads crashed: {crashes}; {result['errors']}"
    for kind, event in (("expired", "expired_token"), ("forged", "invalid_token")):
        assert c.get(f"{kind}_cycles") == n
        assert c.get(f"{event}_disconnected") == n, c
    assert c.get("valid_cycles") == n
    assert c.get("sync_shared") == n and c.get("bad_namespace", 0) == 0, c
