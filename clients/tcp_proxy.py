"""A loopback TCP proxy a test can cut and restore: what a database restart
or a network outage looks like to the processes behind it.

`stop()` closes the listener (new connections are refused) and cuts every
connection it carries; `start()` listens again on the same port. Threads,
standard library only; it binds 127.0.0.1 and connects to 127.0.0.1 only.
Shared by both suites (`tests/`, `e2e/`).
"""
from __future__ import annotations

import contextlib
import socket
import struct
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    def __init__(self, target_port: int, port: int | None = None):
        self.target = ("127.0.0.1", target_port)
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()

    # --- control ---------------------------------------------------------
    def start(self) -> "TcpProxy":
        with self._lock:
            if self._listener is not None:
                return self
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", self.port))
            ls.listen(128)
            self._listener = ls
        threading.Thread(target=self._accept_loop, args=(ls,), daemon=True,
                         name=f"proxy-accept-{self.port}").start()
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones at once (as when the
        database server goes away)."""
        with self._lock:
            ls, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if ls is not None:
            with contextlib.suppress(OSError):
                ls.shutdown(socket.SHUT_RDWR)
            ls.close()
        for c in conns:
            _abort(c)

    @property
    def running(self) -> bool:
        return self._listener is not None

    # --- plumbing --------------------------------------------------------
    def _accept_loop(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # listener closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                if self._listener is not ls:  # stopped meanwhile
                    _abort(client)
                    _abort(upstream)
                    return
                self._conns.update((client, upstream))
            pumps_left = [2]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, client, upstream, pumps_left),
                                 daemon=True).start()

    def _pump(self, src, dst, client, upstream, pumps_left) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the end of this direction on
        with self._lock:
            pumps_left[0] -= 1
            last = pumps_left[0] == 0
            if last:
                self._conns.discard(client)
                self._conns.discard(upstream)
        if last:
            client.close()
            upstream.close()


def _abort(s: socket.socket) -> None:
    """Cut the connection now. shutdown() first: a plain close() leaves the
    connection open while a pump thread is blocked in recv() on it; with
    SO_LINGER 0 the close that follows resets what is left."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
