"""A child process of a test deployment whose combined output goes to a log file; shared by
the end-to-end suites (``e2e/``, ``e2e_v5/``). Needs ``requests`` (both virtualenvs have it)."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import requests


def _die_with_parent():
    """Child side of Popen: SIGTERM when the test process dies, so a killed
    pytest leaves no deployment behind (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class Process:
    """A child process whose combined output goes to ``<workdir>/<name>.log``.
    With `ready_url`, `start` returns once that URL answers 200 (within
    `ready_timeout` seconds)."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict | None = None, *,
                 ready_url: str | None = None, ready_timeout: float = 30):
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.ready_url = ready_url
        self.ready_timeout = ready_timeout
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )
        log.close()
        if self.ready_url:
            self.wait_http(self.ready_url, self.ready_timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:]) or "(no log)"

    def wait_http(self, url: str, timeout: float, ok=lambda r: r.status_code == 200):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if ok(requests.get(url, timeout=2)):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: {url} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15):
        if not self.alive():
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self):
        """SIGKILL: no graceful stop, no goodbye to the broker or the clients."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(5)
