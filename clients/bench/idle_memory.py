"""Marginal resident memory per idle /tasks connection, each scenario on a fresh server.

For every scenario this starts a fresh ``v6-socketio serve`` (SQLite database seeded once by
clients/bench/fixture.py, optionally RabbitMQ), runs clients/bench/idle_memory.js against it
(``--connections`` websockets, Engine.IO v4, ``40/tasks,`` sent and answered, held; VmRSS of the
server before and after, 2 s settle each) and stops it. Scenarios:

* ``unidentified``: no Authorization header (vantage6 connects and ignores them), connects paced
  (``--concurrency`` in flight);
* ``node``: identified vantage6 nodes (token minted from the fixture's secret), each waits for
  its ``sync``: the capacity scenario;
* ``unidentified-storm``, ``node-storm``: the same with every connect in flight at once.

Usage (clients/.venv has vantage6-server 4.15.2's models for the fixture)::

    clients/.venv/bin/python clients/bench/idle_memory.py --binary target/release/v6-socketio \\
        --connections 4000 [--rabbitmq amqp://guest:guest@127.0.0.1:5672/bench-mem]

Prints one JSON line per scenario and a Markdown table. Raises its own open-files limit (both
sides need a descriptor per connection). Figures are of one run on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from sio_testkit import ServerProcess  # noqa: E402

import fixture  # noqa: E402

SCENARIOS = {
    "unidentified": (False, False),
    "node": (True, False),
    "unidentified-storm": (False, True),
    "node-storm": (True, True),
}


class _Db:
    def __init__(self, uri: str):
        self.uri = uri


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run_scenario(name: str, args, workdir: Path, db_uri: str, fixture_path: Path) -> dict:
    identified, storm = SCENARIOS[name]
    extra = {"rabbitmq": {"uri": args.rabbitmq}} if args.rabbitmq else None
    server = ServerProcess(workdir / name, _Db(db_uri), args.secret, sweep_interval=65,
                           extra=extra, name=name, socketio_extra=args.setting,
                           env={"V6_SOCKETIO_BIN": str(args.binary), "RUST_LOG": "warn"})
    os.environ["V6_SOCKETIO_BIN"] = str(args.binary)
    server.start()
    try:
        cmd = ["node", str(HERE / "idle_memory.js"), "--url", server.url,
               "--pid", str(server.proc.pid), "--connections", str(args.connections),
               "--concurrency", str(args.connections if storm else args.concurrency)]
        if identified:
            cmd += ["--fixture", str(fixture_path)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode == 2 or not out.stdout.strip():
            raise RuntimeError(f"{name}: idle_memory.js failed:\n{out.stderr}\n{server.log_tail()}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["scenario"] = name
        result["broker"] = bool(args.rabbitmq)
        server.assert_alive()
        return result
    finally:
        server.stop()


def parse_setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", type=Path, required=True, help="the v6-socketio binary")
    p.add_argument("--connections", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=100, help="connects in flight (paced runs)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--rabbitmq", help="RabbitMQ URI (use a vhost of your own); default: no broker")
    p.add_argument("--collaboration-size", type=int, default=10)
    p.add_argument("--setting", action="append", type=parse_setting, default=[],
                   help="a v6_socketio setting for the server, key=value (repeatable)")
    args = p.parse_args(argv)
    args.setting = dict(args.setting)
    args.secret = "idle-memory-" + uuid.uuid4().hex
    raise_nofile(max(4 * args.connections, 8192))
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}")

    with tempfile.TemporaryDirectory(prefix="idle-memory-") as tmp:
        workdir = Path(tmp)
        db_uri = f"sqlite:///{workdir / 'bench.sqlite'}"
        fx = fixture.seed(db_uri, nodes=args.connections, collaboration_size=args.collaboration_size,
                          secret=args.secret)
        fixture_path = workdir / "fixture.json"
        fixture_path.write_text(json.dumps(fx))
        results = []
        for name in names:
            r = run_scenario(name, args, workdir, db_uri, fixture_path)
            print(json.dumps(r), flush=True)
            results.append(r)

    print("\n| scenario | broker | connections | failed | connect s | RSS before MiB "
          "| RSS after MiB | KiB/connection | RSS after close MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scenario']} | {'yes' if r['broker'] else 'no'} | {r['connections']} "
              f"| {r['failed']} | {r['connect_seconds']} | {r['rss_before_kib'] / 1024:.1f} "
              f"| {r['rss_after_kib'] / 1024:.1f} | {r['kib_per_connection']} "
              f"| {r['rss_closed_kib'] / 1024:.1f} |")


if __name__ == "__main__":
    main()
