"""Connection limits of the real binary (issue 12, "Limits"; src/listener.rs).

* ``http_header_read_timeout``: 250 connections that send nothing, 250 that send part of a
  request head, 250 kept alive idle after one request: every one is closed by the server
  within the timeout and a margin (the times are printed). A websocket node and a
  long-polling node connected before stay connected, idle longer than the timeout, and
  still receive; ``/health`` on a kept-alive connection answers throughout.
* ``max_connections``: with 300 connections open the next ones get the 503 refusal text and
  are closed, counted in ``v6_socketio_connections_refused_total``, with one warning in the
  log for all of them; ``v6_socketio_http_connections`` says 300; the node connected before
  keeps receiving, ``/health`` on its kept-alive connection answers, and once connections
  close new ones are served again.
"""
from __future__ import annotations

import contextlib
import http.client
import re
import resource
import selectors
import socket
import statistics
import threading
import time

import pytest

from compat_support import node_connect_sequence, serving
from support import DEFAULT_TIMEOUT, Recorder, ServerProcess, parse_prometheus, wait_until

#: The header read timeout of the first test's server (seconds).
TIMEOUT = 2.0
#: How much later than TIMEOUT a connection may be closed (scheduling, 250 at once).
MARGIN = 1.5
#: The connection cap of the second test's server.
CAP = 300
#: Connections per kind in the first test.
PER_KIND = 250
REFUSAL_BODY = b"too many connections to this instance\n"
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(autouse=True, scope="module")
def _enough_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield


class HealthProbe(threading.Thread):
    """Asks /health every 0.2 s on one kept-alive connection; counts answers and failures."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.halt = threading.Event()
        self.request("/health")  # opened before the test's connections

    def request(self, path: str) -> bytes:
        with self.lock:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise AssertionError(f"{path}: {resp.status} {body!r}")
            return body

    def gauge(self, name: str) -> float:
        samples = parse_prometheus(self.request("/metrics").decode())
        return next(v for n, _, v in samples if n == name)

    def run(self):
        while not self.halt.wait(0.2):
            try:
                assert self.request("/health") == b"ok"
                self.ok += 1
            except (OSError, AssertionError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))

    def stop(self):
        self.halt.set()
        self.join(5)
        self.conn.close()


def open_sockets(port: int, n: int, payload: bytes | None) -> tuple[list, dict]:
    """`n` connections, each sent `payload`; with a whole request, its answer is read at
    once. Returns them and each one's start mark: connected (or answered)."""
    socks, started = [], {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            s.sendall(payload)
        if payload == HEALTH:
            answer = b""
            while not answer.endswith(b"ok"):
                chunk = s.recv(4096)
                assert chunk, f"closed before answering: {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
        started[s] = time.monotonic()
        socks.append(s)
    return socks, started


def wait_closed(socks: list[socket.socket], started: dict, deadline: float) -> dict:
    """Until every socket is closed by the server (EOF or reset) or `deadline`:
    {socket: seconds from its start mark to its close}; any data is a failure."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed: dict = {}
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            except BlockingIOError:
                continue
            assert not data, f"unexpected data before the close: {data!r}"
            closed[s] = time.monotonic() - started[s]
            sel.unregister(s)
    sel.close()
    return closed


def figures_of(times) -> str:
    t = sorted(times)
    return (f"min {t[0]:.2f} s, median {statistics.median(t):.2f} s, max {t[-1]:.2f} s")


def connect_node(url, tokens, node, transports, label) -> Recorder:
    rec = Recorder(url, tokens.access(node), label=label, transports=transports)
    rec.connect()
    rec.wait_for(lambda evs: evs == node_connect_sequence(node), what=f"{label} connected")
    return rec


def hears_arrival(listeners: list[Recorder], url, tokens, node, label) -> Recorder:
    """Connects `node`; every listener (same collaboration) hears it arrive."""
    before = {r: len(r.snapshot()) for r in listeners}
    newcomer = connect_node(url, tokens, node, ["websocket"], label)
    for r in listeners:
        wait_until(lambda r=r: len(r.snapshot()) >= before[r] + 2, DEFAULT_TIMEOUT,
                   what=f"{r.label} heard {label} arrive")
    return newcomer


def test_header_read_timeout_closes_silent_partial_and_idle_connections(
        world, db, tokens, jwt_secret, tmp_path, figures):
    srv = ServerProcess(tmp_path, db, jwt_secret, name=f"limits-timeout-{db.backend}",
                        socketio_extra={"http_header_read_timeout": TIMEOUT,
                                        "max_connections": CAP})
    clients: list[Recorder] = []
    with serving(srv):
        port = srv.port
        ws = connect_node(srv.url, tokens, world.node_a1, ["websocket"], "a1 websocket")
        poll = connect_node(srv.url, tokens, world.node_c2, ["polling"], "c2 polling")
        clients += [ws, poll]
        probe = HealthProbe(port)
        probe.start()
        results = {}
        try:
            kinds = {
                "silent (no bytes)": None,
                "partial head": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: ",
                "idle kept-alive after one request": HEALTH,
            }
            for kind, payload in kinds.items():
                t0 = time.monotonic()
                socks, started = open_sockets(port, PER_KIND, payload)
                closed = wait_closed(socks, started, t0 + TIMEOUT + MARGIN + 5)
                for s in socks:
                    s.close()
                assert len(closed) == PER_KIND, (
                    f"{kind}: {PER_KIND - len(closed)} of {PER_KIND} still open after "
                    f"{TIMEOUT + MARGIN + 5:.1f} s")
                times = list(closed.values())
                assert max(times) <= TIMEOUT + MARGIN, f"{kind}: {figures_of(times)}"
                assert min(times) >= TIMEOUT - 0.2, f"{kind} closed early: {figures_of(times)}"
                results[kind] = times
            assert ws.connected and not ws.disconnected.is_set(), "the websocket stayed"
            assert poll.connected and not poll.disconnected.is_set(), "the long-poll stayed"
            # Both idle far longer than the timeout by now, and still served.
            clients.append(hears_arrival([ws], srv.url, tokens, world.node_b1, "b1"))
            assert probe.gauge("v6_socketio_connected_sockets") >= 3
        finally:
            probe.stop()
            for r in clients:
                r.disconnect()
        assert not probe.failures, probe.failures[:5]
        assert probe.ok >= 10, probe.ok
        srv.assert_alive()
    lines = [f"\n[limits] http_header_read_timeout={TIMEOUT:.0f} s, {PER_KIND} connections each, "
             f"closed by the server after (bound {TIMEOUT + MARGIN:.1f} s):"]
    lines += [f"  {kind}: {figures_of(t)}" for kind, t in results.items()]
    lines.append(f"  /health on one kept-alive connection: {probe.ok} answers, 0 failures; the "
                 "websocket and the long-polling node stayed connected and received")
    figures("\n".join(lines))


def test_max_connections_refuses_beyond_the_cap(world, db, tokens, jwt_secret, tmp_path, figures):
    srv = ServerProcess(tmp_path, db, jwt_secret, name=f"limits-cap-{db.backend}",
                        socketio_extra={"max_connections": CAP})
    clients: list[Recorder] = []
    held: list[socket.socket] = []
    with serving(srv):
        port = srv.port
        ws = connect_node(srv.url, tokens, world.node_a1, ["websocket"], "a1 websocket")
        clients.append(ws)
        probe = HealthProbe(port)
        try:
            wait_until(lambda: probe.gauge("v6_socketio_http_connections") == 2, DEFAULT_TIMEOUT,
                       what="two connections: the websocket and the probe")
            probe.start()
            held, _ = open_sockets(port, CAP - 2, None)
            wait_until(lambda: probe.gauge("v6_socketio_http_connections") == CAP,
                       DEFAULT_TIMEOUT, what=f"{CAP} connections open")
            # At the cap: the kept-alive /health goes on answering.
            at_cap = probe.ok
            time.sleep(1.0)
            health_at_cap = probe.ok - at_cap
            assert health_at_cap >= 3, health_at_cap
            refused_times = []
            for _ in range(20):
                t0 = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(HEALTH)
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                refused_times.append((time.monotonic() - t0) * 1000)
                assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), data
                assert b"\r\nconnection: close\r\n" in data.lower(), data
                assert data.endswith(REFUSAL_BODY), data
            samples = parse_prometheus(probe.request("/metrics").decode())
            refused = next(v for n, _, v in samples if n == "v6_socketio_connections_refused_total")
            assert refused == 20
            assert probe.gauge("v6_socketio_http_connections") == CAP
            assert ws.connected and not ws.disconnected.is_set()
            # Room again: the node connected before still receives, new requests are served.
            for s in held[:10]:
                s.close()
            del held[:10]
            wait_until(lambda: probe.gauge("v6_socketio_http_connections") == CAP - 10,
                       DEFAULT_TIMEOUT, what="closed connections counted out")
            clients.append(hears_arrival([ws], srv.url, tokens, world.node_b1, "b1"))
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(HEALTH)
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            probe.stop()
            for s in held:
                with contextlib.suppress(OSError):
                    s.close()
            for r in clients:
                r.disconnect()
        assert not probe.failures, probe.failures[:5]
        log = re.sub(r"\x1b\[[0-9;]*m", "", srv.log_path.read_text(errors="replace"))
        warnings = [ln for ln in log.splitlines() if "connections refused" in ln]
        assert len(warnings) == 1, warnings
        assert "refused=1" in warnings[0], warnings[0]
        srv.assert_alive()
    figures(f"\n[limits] max_connections={CAP}: with {CAP} open, 20 more got the 503 refusal "
            f"(connect to close: min {min(refused_times):.1f} ms, max {max(refused_times):.1f} ms), "
            f"counted 20, one log line; /health on its kept-alive connection answered "
            f"{probe.ok} times ({health_at_cap} at the cap), 0 failures; the "
            "websocket node kept receiving; after 10 closed, new connections served")
