"""No deaf sessions: a database outage while nodes connect.

A site of its own next to the deployment: one more `v6-socketio serve`
instance (same RabbitMQ virtual host, so it shares rooms with the
deployment's instances) whose configuration reaches PostgreSQL through a
TCP proxy the test cuts and restores, and an nginx in front of it and of
vantage6's REST API, which keeps its direct database connection (so the
nodes can log in during the outage). Nodes are vantage6-node 4.15.2's real
`NodeTaskNamespace` with the real `NodeClient` (clients.StubNodeWorker).

`test_why_the_server_does_not_disconnect` measures what the real node does
after the two ways a server can end a session (and so why v6-socketio
retries the identification instead, README "Database outages").
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from clients import StubNodeWorker
from deployment import SETTLE, Expect, joined, node_status
from harness import Nginx, SocketioInstance, free_port, wait_until
from rest import Api, create_task
from skip_policy import skip_by_design
from tcp_proxy import TcpProxy

#: How long the database stays away: longer than the pool's 10 s acquire
#: timeout, after which v6-socketio used to give a connecting client up.
OUTAGE = 12.0
#: Liveness bound on "database back → node in its rooms" (the figure is printed).
RECOVERY_BOUND = 30.0


@dataclass
class Site:
    proxy: TcpProxy | None  # in front of PostgreSQL (None on SQLite)
    instance: SocketioInstance
    nginx: Nginx

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture(scope="module")
def site(deployment):
    config = json.loads(deployment.config.read_text())
    proxy = None
    if deployment.backend == "postgres":
        url = urlsplit(config["uri"])
        proxy = TcpProxy(url.port or 5432).start()
        config["uri"] = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
    path = deployment.workdir / "v6-socketio-outage.yaml"
    path.write_text(json.dumps(config, indent=2))
    instance = SocketioInstance(deployment.workdir, path, free_port(), "v6-socketio-outage")
    nginx = Nginx(deployment.workdir, free_port(), [instance.addr],
                  [f"127.0.0.1:{deployment.api_port}"], name="nginx-outage")
    try:
        instance.start()
        nginx.start()
        yield Site(proxy, instance, nginx)
    except Exception:
        print(f"--- {instance.name} ---\n{instance.log_tail()}\n--- nginx ---\n{nginx.log_tail()}")
        raise
    finally:
        nginx.stop()
        instance.stop()
        if proxy is not None:
            proxy.stop()


def _synced(mark: int = 0):
    return lambda evs: any(e == "sync" for e, _ in evs[mark:])


def test_node_connecting_during_database_outage_is_served_after_it(deployment, site, figures):
    if site.proxy is None:
        skip_by_design("needs a database server to cut off: PostgreSQL only (SQLite is a file)")
    admin = deployment.admin
    orgs = [admin.organization("org-outage") for _ in range(2)]
    collab = admin.collaboration(orgs, "collab-outage")
    steady = StubNodeWorker(admin.node(collab, orgs[0], "steady"), site.url, label="steady")
    late = StubNodeWorker(admin.node(collab, orgs[1], "late"), site.url, label="late")
    user = admin.user(orgs[0])
    api = Api.login(deployment.api_url, user.username, user.password)
    try:
        steady.start()
        steady.events.wait_for(_synced(), what="steady's sync")
        time.sleep(SETTLE)
        late.authenticate()  # REST login: vantage6 keeps its own database connection

        site.proxy.stop()
        outage_started = time.monotonic()
        marks = Expect.mark([steady])
        late.connect_to_socket()  # Engine.IO session and CONNECT: no database involved
        marks[late] = 0

        # the established node keeps receiving meanwhile: vantage6's REST API
        # (its own database connection) publishes through RabbitMQ
        task = create_task(api, collab, orgs)
        Expect.exactly(marks, {steady: [("new_task", {"id": task["id"], "parent_id": None})]})
        steady.queued_run(task["id"])

        wait_until(lambda: site.instance.metric("v6_socketio_identifications_waiting") == 1,
                   what="the late node's identification waiting for the database")
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - outage_started)))
        assert not late.events.snapshot(), "the late node was served while the database was away"
        assert late.connected
        retries = site.instance.metric("v6_socketio_identification_retries_total")
        assert retries >= 1, retries

        marks = Expect.mark([steady, late])
        site.proxy.start()
        restored = time.monotonic()
        own_joins = [joined(late, collab.room), joined(late, collab.org_room(orgs[1]))]
        late.events.wait_for(lambda evs: all(j in evs for j in own_joins),
                             timeout=RECOVERY_BOUND, what="late's own join messages")
        in_rooms = time.monotonic() - restored
        Expect.exactly(marks, {
            late: [("sync", None), joined(late, collab.room),
                   joined(late, collab.org_room(orgs[1]))],
            steady: [("node-online", node_status(late)), joined(late, collab.room)],
        })
        assert admin.node_status(late.account.id) == "online"
        assert site.instance.metric("v6_socketio_identifications_waiting") == 0

        marks = Expect.mark([steady, late])
        published = time.monotonic()
        task = create_task(api, collab, orgs)
        after = ("new_task", {"id": task["id"], "parent_id": None})
        late.events.wait_for(lambda evs: after in evs[marks[late]:], what="new_task after restore")
        received = time.monotonic()
        Expect.exactly(marks, {late: [after], steady: [after]})
        late.queued_run(task["id"])  # its real on_new_task fetched its run
        figures(f"\n[database outage] outage {OUTAGE:.0f} s, {retries:.0f} failed identification "
              f"attempts; database back -> late node in its rooms: {in_rooms:.2f} s "
              f"(bound {RECOVERY_BOUND:.0f} s); a task made after that reached it "
              f"{received - published:.2f} s after POST /task")
    finally:
        if not site.proxy.running:
            site.proxy.start()
        late.close()
        steady.close()


def _publish_disconnect(deployment, sid: str) -> None:
    """What python-socketio's `KombuManager.disconnect(sid, namespace='/tasks')`
    publishes on vantage6's exchange (a Flask-SocketIO host disconnecting a
    client of another host): the instance holding the socket disconnects it
    from the namespace, the server-initiated DISCONNECT under test."""
    import socketio

    mgr = socketio.KombuManager(deployment.broker.uri, channel="flask-socketio",
                                write_only=True)
    mgr._publish({"method": "disconnect", "sid": sid, "namespace": "/tasks",
                  "host_id": "e2e-test"})


def test_why_the_server_does_not_disconnect(deployment, site, figures):
    """Transport lost → the real node reconnects by itself (figure printed);
    server-side namespace DISCONNECT → it never comes back. The latter is
    all socketioxide can do to a socket (its Engine.IO close sends a CLOSE
    packet, which python-engineio treats the same way)."""
    admin = deployment.admin
    org = admin.organization("org-why")
    collab = admin.collaboration([org], "collab-why")
    # the node reaches nginx through a proxy of its own, so its transport can be cut
    front = TcpProxy(site.nginx.port).start()
    node = StubNodeWorker(admin.node(collab, org, "why"), f"http://127.0.0.1:{front.port}",
                          label="why")
    try:
        node.start()
        node.events.wait_for(_synced(), what="sync")
        time.sleep(SETTLE)
        sio = node.socketIO

        # (b) the transport breaks without an Engine.IO CLOSE
        mark = node.events.mark()
        front.stop()
        cut = time.monotonic()
        front.start()
        node.events.wait_for(_synced(mark), timeout=RECOVERY_BOUND, what="sync after the cut")
        reconnected = time.monotonic() - cut
        assert node.socketIO is sio  # python-socketio's own reconnection

        # (a) the server disconnects the namespace
        time.sleep(SETTLE)
        mark = node.events.mark()
        _publish_disconnect(deployment, sio.get_sid("/tasks"))
        node.events.wait_for(lambda evs: any(e == "disconnect" for e, _ in evs[mark:]),
                             what="the server's disconnect")
        quiet = 10.0
        time.sleep(quiet)
        after = node.events.snapshot(True)[mark:]
        assert not node.connected
        assert [e for e, _ in after if e in ("connect", "sync")] == [], after
        figures(f"\n[real node] transport cut -> reconnected and synced: {reconnected:.2f} s "
              f"(bound {RECOVERY_BOUND:.0f} s); "
              f"server namespace DISCONNECT -> still disconnected after {quiet:.0f} s "
              f"(events: {[e for e, _ in after]})")
    finally:
        node.close()
        front.stop()
