"""A client that reads nothing for a minute under a steady stream (issue 12, fault "slow client").

One ``v6-socketio serve`` instance on RabbitMQ; a collaboration of six fixture nodes
(clients/bench/fixture.py). Five are the load generator's (clients/loadgen, ``fanout``:
``new_task`` published through RabbitMQ to the collaboration, as vantage6's REST API does),
which count every delivery and its latency; the sixth is a raw websocket that connects,
is identified, gets its ``sync`` and then reads nothing (a receive buffer of 4 KiB, never
drained). The stream runs for 60 s at 10,000 deliveries/s to the five (2,000 ``new_task``/s,
so 2,000/s queue up for the silent one).

The rule (README, "Failure behaviour"): what a client does not read waits in its buffer, at
most ``max_buffer_size`` packets (4096); deliveries that find it full skip that client and
are counted (``v6_socketio_broadcast_full_buffers_total``, and
``v6_socketio_broker_delivery_full_buffers_total`` for emits from RabbitMQ); once the
client's receive window has stayed closed for ``tcp_user_timeout`` (30 s) the kernel drops
the connection and the session ends as for any lost transport: the node is marked offline
and announced. (engine.io's own ping cannot drop it: the writer task stays blocked in the
write, and the session's close waits for it; without the timeout such a client stayed
connected, its node online, for good.) Asserted:

* the five other nodes receive every event once, nothing lost (their latency is printed);
* the silent client is disconnected by the server, its node marked offline, within
  ``DROP_BOUND`` of when it stopped reading (the time is printed): ``tcp_user_timeout``
  after its window closed (a few seconds in), plus the kernel's window-probe backoff;
* the server's memory stays bounded: its RSS during the minute grows by less than 64 MiB over
  the value before the stream (printed), and it does not exit;
* the skipped deliveries are counted, and the log does not grow with them (at most one line
  about full buffers per 10 s).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mq_support
from compat_support import serving
from support import REPO, Ent, ServerProcess, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fixture  # noqa: E402

pytestmark = pytest.mark.broker
broker = pytest.fixture(scope="module")(mq_support.broker_fixture)

LOADGEN = Path(os.environ.get("V6_LOADGEN_BIN", REPO / "target" / "debug" / "v6-loadgen"))
DURATION = 60  # seconds of stream
RATE = 10_000  # deliveries per second to the five reading nodes
TCP_USER_TIMEOUT = 30.0  # the default
#: the window closes within seconds; the kernel aborts at the first window probe after the
#: timeout, and the probes back off exponentially (0.2 s doubling): at most ~2x the timeout
DROP_BOUND = 2 * TCP_USER_TIMEOUT
RSS_BOUND_KIB = 64 * 1024


def metric(server, name, **labels) -> float:
    return sum(v for n, lab, v in server.metrics()
               if n == name and all(lab.get(k) == w for k, w in labels.items()))


def skipped_broadcasts(server) -> float:
    """Deliveries skipped because the client's buffer was full: of the instance's own broadcasts
    and of the ones from RabbitMQ."""
    return (metric(server, "v6_socketio_broadcast_full_buffers_total")
            + metric(server, "v6_socketio_broker_delivery_full_buffers_total"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class SilentNode:
    """A raw websocket client that is identified as a node, then reads nothing."""

    def __init__(self, url: str, token: str):
        import websocket  # websocket-client

        self.ws = websocket.WebSocket(sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
        self.ws.settimeout(10)
        self.ws.connect(url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket",
                        header=[f"Authorization: Bearer {token}"])
        assert self.ws.recv().startswith("0"), "no Engine.IO OPEN"
        self.ws.send("40/tasks,")
        got_sync = False
        deadline = time.monotonic() + 10
        while not got_sync and time.monotonic() < deadline:
            frame = self.ws.recv()
            if frame == "2":
                self.ws.send("3")
            got_sync = frame.startswith('42/tasks,["sync"')
        assert got_sync, "the silent node got no sync"
        self.silent_since = time.monotonic()

    def closed_by_server(self) -> bool:
        """Drains what the server had sent: True when the stream ends in a close (EOF, a close
        frame or a reset)."""
        import websocket

        self.ws.settimeout(5)
        try:
            while True:
                op, _ = self.ws.recv_data(control_frame=True)
                if op == websocket.ABNF.OPCODE_CLOSE:
                    return True
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return True
        except websocket.WebSocketTimeoutException:
            return False

    def close(self):
        try:
            self.ws.close(timeout=1)
        except Exception:  # noqa: BLE001  (already closed by the server)
            pass


def test_a_client_that_reads_nothing_is_dropped_and_nobody_else_suffers(
        broker, db, jwt_secret, tokens, tmp_path, figures):
    if not LOADGEN.exists():
        pytest.fail(f"{LOADGEN} does not exist: run `cargo build --workspace`")
    seeded = fixture.seed(db.uri, nodes=6, collaboration_size=6, collaboration_size_max=6,
                          runs_per_node=1, secret=jwt_secret)
    path = tmp_path / "fixture.json"
    path.write_text(json.dumps(seeded))
    silent_node = seeded["nodes"][5]
    srv = ServerProcess(tmp_path, db, jwt_secret, sweep_interval=60,
                        extra={"rabbitmq": {"uri": broker}}, name=f"slow-{db.backend}")
    with serving(srv, stop=mq_support.stop_serve):
        silent = SilentNode(srv.url, tokens.access(Ent(silent_node["id"], silent_node["name"])))
        try:
            wait_until(lambda: db.auth_row(silent_node["id"])[0] == "online", 10,
                       what="the silent node online")
            rss_before = rss_kib(srv.proc.pid)
            full_before = skipped_broadcasts(srv)
            log_before = srv.log_path.stat().st_size
            samples: list[int] = []
            disconnected_at: list[float] = []
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append(rss_kib(srv.proc.pid))
                    if not disconnected_at and db.auth_row(silent_node["id"])[0] == "offline":
                        disconnected_at.append(time.monotonic())
                    stop.wait(1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            cmd = [str(LOADGEN), "--fixture", str(path), "--url", srv.url, "--amqp-uri", broker,
                   "--server-pid", str(srv.proc.pid), "--label", "slow-client", "--nodes", "5",
                   "fanout", "--rates", str(RATE), "--duration", str(DURATION),
                   "--topology", "one"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 120)
            stop.set()
            sampler.join(5)
            assert done.returncode == 0, f"loadgen exited {done.returncode}:\n{done.stderr[-4000:]}"
            (line,) = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
            srv.assert_alive()

            # the five reading nodes: every event, once
            assert line["nodes"] == 5 and line["expected"] > 0, line
            assert line["delivered"] == line["expected"], line
            assert line["lost"] == 0 and line["duplicated"] == 0, line
            assert line["errors"] == [], line

            # the silent one: dropped by the server, by the rule's bound
            assert disconnected_at, (
                "the silent node was never disconnected (still online); skipped deliveries "
                f"{skipped_broadcasts(srv) - full_before:.0f}, connected "
                f"{metric(srv, 'v6_socketio_connected_sockets'):.0f}, log:\n{srv.log_tail()}")
            dropped_after = disconnected_at[0] - silent.silent_since
            assert dropped_after <= DROP_BOUND, dropped_after
            assert silent.closed_by_server(), "the server did not close the silent connection"
            wait_until(lambda: metric(srv, "v6_socketio_connected_sockets") == 0, 10,
                       what="every session ended (connected gauge back to 0)")

            # bounded memory and log
            peak = max(samples)
            assert peak - rss_before < RSS_BOUND_KIB, (rss_before, peak)
            skipped = skipped_broadcasts(srv) - full_before
            assert skipped > 0, "no broadcast found the silent client's buffer full"
            log = srv.log_path.read_bytes()[log_before:].decode(errors="replace")
            full_lines = log.count("buffer was full")
            assert full_lines <= DURATION // 10 + 2, f"{full_lines} log lines about full buffers"
            lat = line["latency_ms"]
            figures(f"\n[slow client] {DURATION} s at {line['offered_per_s']} deliveries/s "
                    f"({line['expected']} expected, {line['delivered']} delivered, 0 lost; "
                    f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms); the client reading "
                    f"nothing dropped {dropped_after:.1f} s after it stopped reading (bound "
                    f"{DROP_BOUND:.0f} s), {skipped:.0f} deliveries skipped "
                    f"for it (counted, {full_lines} log lines); server RSS {rss_before / 1024:.1f}"
                    f" MiB before, peak {peak / 1024:.1f} MiB")
        finally:
            silent.close()
