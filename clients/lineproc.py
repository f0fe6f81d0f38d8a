"""Child processes that speak JSON lines, and waiting (polling, or on a condition).

Shared by the compatibility suite (clients/tests) and the end-to-end suite
(clients/e2e), which run in different virtualenvs: standard library only.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time

#: Longest wait for an expected event (V6_TEST_TIMEOUT, seconds).
DEFAULT_TIMEOUT = float(os.environ.get("V6_TEST_TIMEOUT", "8"))


def wait_until(predicate, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02, what: str = ""):
    """Polls `predicate` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def wait_on(cond: threading.Condition, check, timeout: float, describe):
    """Waits on `cond` until `check()` (called with `cond` held) returns
    something truthy, and returns it; after `timeout` seconds raises
    AssertionError with `describe()`."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            value = check()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(describe())
            cond.wait(min(remaining, 0.2))


class LineProcess:
    """A subprocess that prints JSON lines; collects them thread-safely."""

    def __init__(self, argv, cwd=None, env=None, stdin=True, label=""):
        self.label = label
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True, bufsize=1,
        )
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self):
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"raw": line}
            with self.cond:
                self.lines.append(obj)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def send(self, obj: dict):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def events(self, include_local=False) -> list[tuple[str, object]]:
        with self.cond:
            return [
                (o["event"], o.get("data")) for o in self.lines
                if "event" in o and (include_local or not o.get("local"))
                and o["event"] not in (() if include_local else ("connect", "disconnect", "upgrade", "connect_error"))
            ]

    def sent(self) -> list[tuple[str, object]]:
        with self.cond:
            return [(o["sent"], o.get("data")) for o in self.lines if "sent" in o]

    def wait_for(self, predicate, timeout: float = DEFAULT_TIMEOUT, what: str = ""):
        return wait_on(
            self.cond, lambda: predicate(list(self.lines)), timeout,
            lambda: f"{self.label}: timed out after {timeout}s waiting for {what}; "
            f"stdout: {self.lines}\nstderr tail:\n" + "\n".join(self.stderr[-30:]),
        )

    def wait_line(self, pred, timeout=DEFAULT_TIMEOUT, what=""):
        return self.wait_for(lambda ls: next((l for l in ls if pred(l)), None), timeout, what)

    def stop(self, timeout=5):
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(3)
        return self.proc.returncode
