"""Clients of the broker outage and fail-over tests: nodes that stream
``algorithm_status_change`` events with numbered statuses and note when each
arrives, and readers of an instance's ``/ready``, lost counter and log."""
from __future__ import annotations

import re
import threading
import time

from support import Recorder, http_get

EVENT = "algorithm_status_change"
RATE = 20  # events per second per stream


class TimedRecorder(Recorder):
    """A Recorder that also notes when each status change arrived."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.timed: list[tuple[float, str]] = []

    def _on_any(self, event, *args):
        if event == EVENT and args and isinstance(args[0], dict):
            self.timed.append((time.monotonic(), str(args[0].get("status"))))
        super()._on_any(event, *args)

    def received(self, prefix: str) -> dict[str, float]:
        """status -> first arrival, for the statuses starting with ``prefix``."""
        out: dict[str, float] = {}
        for t, status in list(self.timed):
            if status.startswith(prefix):
                out.setdefault(status, t)
        return out

    def duplicates(self, prefix: str) -> int:
        statuses = [s for _, s in list(self.timed) if s.startswith(prefix)]
        return len(statuses) - len(set(statuses))


class Stream(threading.Thread):
    """Emits ``algorithm_status_change`` with status ``<tag>-<n>`` at RATE per second."""

    def __init__(self, rec: TimedRecorder, tag: str, payload: dict):
        super().__init__(daemon=True)
        self.rec, self.tag, self.payload = rec, tag, payload
        self.sent: dict[str, float] = {}
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        n = 0
        try:
            while not self.stop_flag.is_set():
                status = f"{self.tag}-{n}"
                self.sent[status] = time.monotonic()
                self.rec.emit(EVENT, dict(self.payload, status=status))
                n += 1
                self.stop_flag.wait(1 / RATE)
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            self.error = exc


def lost_counter(server) -> int:
    status, _, body = http_get(server.url + "/metrics")
    assert status == 200
    text = body.decode() if isinstance(body, bytes) else body
    m = re.search(r'^v6_socketio_broker_publish_lost_total\{event="%s"\} (\d+)$' % EVENT, text, re.M)
    return int(m.group(1)) if m else 0


SUMMARY = re.compile(r"publishing to the broker works again.*?lost_events=(\d+) per_event=(\S*)")


def summaries(server, offset: int) -> list[tuple[int, str]]:
    text = server.log_path.read_bytes()[offset:].decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the text log's colours
    return [(int(m.group(1)), m.group(2)) for m in SUMMARY.finditer(text)]


def ready(server) -> tuple[int, str]:
    try:
        status, _, body = http_get(server.url + "/ready", timeout=2)
    except OSError as exc:
        return -1, str(exc)
    return status, body.decode() if isinstance(body, bytes) else str(body)
