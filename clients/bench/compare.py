"""The comparison (issue 11 point 3): every load-generator scenario against

  (a) two ``v6-socketio`` instances over RabbitMQ,
  (b) one ``v6-socketio`` instance with no broker,
  (c) two vantage6-server 4.15.2 instances under uWSGI with its docker image's command line,

on one machine, one PostgreSQL database (the fixture's) and one RabbitMQ virtual host; then a
Markdown table (every figure per deployment, the ratio to (c)) and an SVG chart of deliveries/s
and p99 against the offered rate, written next to ``results.jsonl``.

Run it through ``scripts/bench.sh`` (the Python 3.10 virtualenv clients/.venv-bench with
vantage6-server 4.15.2 and uWSGI). It starts PostgreSQL and RabbitMQ when they are installed but
not running, creates a database and a virtual host for the run, builds the release binaries,
seeds the fixtures, and stops (and drops) everything it started at the end, also on Ctrl-C or
failure.

    scripts/bench.sh                       # full sizes (about half an hour)
    scripts/bench.sh --quick               # small sizes, to try it out
    scripts/bench.sh --only a,c --scenarios fanout,restart --out /tmp/b
    scripts/bench.sh --from-results bench-results/<date>/results.jsonl   # report only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import stack  # noqa: E402
from stack import ROOT, Cleanup, log  # noqa: E402

SCENARIOS = ["fanout-one", "fanout-collabs", "relay", "connect", "capacity", "restart"]
ALIASES = {"fanout": ["fanout-one", "fanout-collabs"], "all": SCENARIOS}
NO_BROKER = "no broker to publish on"


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    fanout_nodes: int
    fanout_rates: list[int]
    relay_rates: list[int]
    duration_s: int
    capacity_connections: int
    restart_nodes: int
    #: `connect`: this many nodes (collaborations of idle_collaboration_size) connecting at once
    #: to a fresh deployment, until every one has `sync`
    connect_nodes: int
    #: vantage6 under uWSGI holds at most --gevent 1000 connections per instance (async cores,
    #: one per websocket) and connects about 20 nodes/s here: its capacity and restart run with
    #: at most this many (what two instances can take)
    vantage6_max_connections: int
    collaboration_size: tuple[int, int] = (5, 20)
    idle_collaboration_size: int = 10


FULL = Sizes(fanout_nodes=1000, fanout_rates=[10_000, 30_000, 100_000, 200_000, 300_000],
             relay_rates=[1_000, 10_000, 30_000], duration_s=10, capacity_connections=20_000,
             restart_nodes=5_000, connect_nodes=1_000, vantage6_max_connections=1_800)
QUICK = Sizes(fanout_nodes=100, fanout_rates=[1_000, 5_000], relay_rates=[500, 2_000], duration_s=3,
              capacity_connections=500, restart_nodes=300, connect_nodes=100, vantage6_max_connections=500)

#: sockets one load generator process may need at most: the open-files limit is per process
#: (20,000 hard here, not raisable), so capacity and restart spread larger fleets over processes
SOCKETS_PER_LOADGEN_PROCESS = 9_000
#: open files a server process keeps for what is not a connection (listeners, database, broker,
#: logs): a deployment holds at most (its servers' limit − this) connections per server
SERVER_FD_MARGIN = 200


def loadgen_processes(clients: int) -> int:
    """How many processes the load generator runs for ``clients`` websocket clients (one
    socket each) so that none needs more than SOCKETS_PER_LOADGEN_PROCESS."""
    return max(1, -(-clients // SOCKETS_PER_LOADGEN_PROCESS))


def open_files_limit(pid: int) -> int | None:
    """The (soft, i.e. effective) open-files limit of a running process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return None if soft == "unlimited" else int(soft)
    return None


def connection_cap(limits: list[int | None]) -> tuple[int, int] | None:
    """What the servers (their open-files limits; clients spread round-robin over them) can
    hold: ``(connections, the smallest limit)``, or None when no limit is known."""
    known = [n for n in limits if n is not None]
    if not known or len(known) != len(limits):
        return None
    limit = min(known)
    return max(0, limit - SERVER_FD_MARGIN) * len(limits), limit


def capped(wanted: int, cap: tuple[int, int] | None) -> tuple[int, str | None]:
    """``wanted`` connections within the cap, and the note saying so when it cut them."""
    if cap is None or wanted <= cap[0]:
        return wanted, None
    return cap[0], (f"capped at {cap[0]:,} connections (of {wanted:,}) by the servers' open-files "
                    f"limit {cap[1]:,} (− {SERVER_FD_MARGIN} per server process)")



# ---------------------------------------------------------------------------
# the results file
# ---------------------------------------------------------------------------
class Results:
    """results.jsonl, appended line by line (a run cut short keeps what it measured)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def add(self, line: dict) -> None:
        with self._lock, self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": f"{mem_kib / 2**20:.0f} GiB",
            "kernel": f"Linux {platform.release()}", "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}


def commit() -> str | None:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or None


# ---------------------------------------------------------------------------
# the load generator
# ---------------------------------------------------------------------------
@dataclass
class Run:
    """One load generator invocation and what its lines must cover."""

    scenario: str
    argv: list[str]
    label: str
    #: the measurements it owes (for the lines written in its place when it fails)
    expected: list[dict]
    timeout_s: float
    #: called (in the main thread) when the load generator prints READY on stderr
    on_ready: object = None
    extra: dict = field(default_factory=dict)


def run_loadgen(run: Run, results: Results, logdir: Path, cleanup: Cleanup) -> list[dict]:
    """Runs it, copying each JSON line of its stdout into the results (with the deployment's
    label); for each expected measurement it did not print, a line with the reason."""
    logfile = logdir / f"loadgen-{run.label}-{run.scenario}.log"
    log(f"{run.label} {run.scenario}: {' '.join(run.argv[1:])}")
    proc = subprocess.Popen(run.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    cleanup.push(f"loadgen {proc.pid}", lambda: _kill(proc))
    got: list[dict] = []
    ready = threading.Event()
    tail: list[str] = []

    def read_stdout():
        for text in proc.stdout:
            text = text.strip()
            if not text:
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                tail.append(f"stdout: {text}")
                continue
            for k, v in {"label": run.label, **run.extra}.items():
                line.setdefault(k, v)
            got.append(line)
            results.add(line)

    def read_stderr():
        with logfile.open("a") as f:
            for text in proc.stderr:
                f.write(text)
                f.flush()
                if text.strip() == "READY" or text.rstrip().endswith(" READY"):
                    ready.set()
                tail[:] = (tail + [text.strip()])[-5:]

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    deadline = time.monotonic() + run.timeout_s
    error = None
    try:
        if run.on_ready:
            while not ready.wait(0.5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
            if ready.is_set():
                try:
                    run.on_ready()
                except Exception as exc:
                    error = f"restarting the servers failed: {exc}"
                    _kill(proc)
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            error = f"timeout after {run.timeout_s:.0f} s"
            _kill(proc)
    finally:
        for t in readers:
            t.join(10)
    if error is None and proc.returncode != 0:
        error = f"loadgen exited {proc.returncode}: {tail[-1] if tail else ''}"
    for want in run.expected:
        if not any(all(line.get(k) == v for k, v in want.items()) for line in got):
            line = {**run.extra, **want, "label": run.label, "errors": [error or "no measurement printed"],
                    "source": "compare"}
            got.append(line)
            results.add(line)
    if error:
        log(f"{run.label} {run.scenario}: {error} (log: {logfile})")
    return got


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


# ---------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------
class Comparison:
    def __init__(self, a: argparse.Namespace, out: Path, cleanup: Cleanup):
        self.a, self.out, self.cleanup = a, out, cleanup
        self.sizes = QUICK if a.quick else FULL
        self.results = Results(out / "results.jsonl")
        self.logdir = out / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
        self.server_bin = target / "v6-socketio"
        # V6_BENCH_LOADGEN: another load generator binary (e.g. a stand-in while trying the script)
        self.loadgen_bin = Path(os.environ.get("V6_BENCH_LOADGEN", target / "v6-loadgen"))
        self.venv = Path(sys.prefix)

    # --- set-up ------------------------------------------------------------
    def build(self) -> None:
        if self.a.no_build:
            log("--no-build: using the release binaries as they are")
        else:
            log("cargo build --release -p v6-socketio -p v6-loadgen")
            subprocess.run(["cargo", "build", "--release", "-p", "v6-socketio", "-p", "v6-loadgen"], cwd=ROOT, check=True)
        for b in (self.server_bin, self.loadgen_bin):
            if not b.exists():
                raise RuntimeError(f"{b} does not exist (cargo build --release -p v6-socketio -p v6-loadgen)")

    def prepare(self) -> None:
        stack.ensure_postgres(self.cleanup)
        stack.ensure_rabbitmq(self.cleanup)
        run_id = stack.new_run_id()
        self.database_url = stack.create_database(self.cleanup, run_id)
        self.amqp_uri = stack.create_vhost(self.cleanup, run_id)
        self.secret = f"bench-{run_id}-{os.urandom(16).hex()}"
        s = self.sizes
        self.fixtures = {
            "one": self.seed("one", s.fanout_nodes, s.fanout_nodes, s.fanout_nodes),
            "collabs": self.seed("collabs", s.fanout_nodes, *s.collaboration_size),
            "idle": self.seed("idle", max(s.capacity_connections, s.restart_nodes), s.idle_collaboration_size,
                              s.idle_collaboration_size),
        }
        work = self.out / "work"
        work.mkdir(exist_ok=True)
        api_port = stack.free_port()
        self.config_broker = stack.write_config(work / "config-broker.yaml", database_url=self.database_url,
                                                secret=self.secret, amqp_uri=self.amqp_uri, api_port=api_port)
        self.config_alone = stack.write_config(work / "config-no-broker.yaml", database_url=self.database_url,
                                               secret=self.secret, amqp_uri=None, api_port=api_port)
        self.wsgi_file = stack.vantage6_wsgi_file(self.venv / "bin" / "python")
        self.work = work

    def seed(self, name: str, nodes: int, size: int, size_max: int) -> Path:
        path = self.out / "work" / f"fixture-{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("fixture.py")), "--database-url",
                        self.database_url, "--nodes", str(nodes), "--collaboration-size", str(size),
                        "--collaboration-size-max", str(size_max), "--runs-per-node", "1",
                        "--secret", self.secret, "--prefix", f"bench-{name}", "--out", str(path)], check=True)
        return path

    def deployment(self, key: str) -> stack.Deployment:
        w = self.work
        if key == "a":
            return stack.Deployment("a", [stack.SocketioServer(self.server_bin, self.config_broker, w, f"v6-socketio-a{i}")
                                          for i in range(2)], broker=True)
        if key == "b":
            return stack.Deployment("b", [stack.SocketioServer(self.server_bin, self.config_alone, w, "v6-socketio-b0")],
                                    broker=False)
        return stack.Deployment("c", [stack.Vantage6Server(self.venv, self.wsgi_file, self.config_broker, w, f"vantage6-c{i}")
                                      for i in range(2)], broker=True)

    # --- scenarios ---------------------------------------------------------
    def common(self, sub: str, dep: stack.Deployment, fixture: str) -> list[str]:
        argv = [str(self.loadgen_bin), sub, "--fixture", str(self.fixtures[fixture]), "--label", dep.key]
        for url in dep.urls:
            argv += ["--url", url]
        for pid in dep.pids():
            argv += ["--server-pid", str(pid)]
        return argv

    def connections_for(self, key: str, wanted: int) -> int:
        """``wanted`` connections, or for vantage6 (c) at most what its instances can take."""
        return wanted if key != "c" else min(wanted, self.sizes.vantage6_max_connections)

    @staticmethod
    def processes(clients: int) -> list[str]:
        p = loadgen_processes(clients)
        return ["--processes", str(p)] if p > 1 else []

    def sweep_timeout(self, rates: list[int]) -> float:
        return 180 + len(rates) * (self.sizes.duration_s + 30)

    def run_deployment(self, key: str, scenarios: list[str]) -> None:
        dep = self.deployment(key)
        self.cleanup.push(f"deployment {key}", dep.stop)
        dep.start()
        self.preflight(dep)
        s = self.sizes
        for scenario in scenarios:
            if not dep.alive():
                log(f"deployment {key} lost a server: restarting it\n{dep.describe()}")
                dep.restart()
            if scenario.startswith("fanout-"):
                topology = scenario.removeprefix("fanout-")
                want = [{"scenario": "fanout", "topology": topology, "offered_per_s": r} for r in s.fanout_rates]
                if not dep.broker:
                    for w in want:
                        self.results.add({**w, "label": key, "skipped": NO_BROKER, "source": "compare"})
                    continue
                argv = self.common("fanout", dep, topology) + [
                    "--nodes", str(s.fanout_nodes), "--topology", topology,
                    "--rates", ",".join(map(str, s.fanout_rates)), "--duration", str(s.duration_s),
                    "--amqp-uri", self.amqp_uri, "--message-queue-format", "legacy"]
                run_loadgen(Run(scenario, argv, key, want, self.sweep_timeout(s.fanout_rates),
                                extra={"topology": topology}),
                            self.results, self.logdir, self.cleanup)
            elif scenario == "relay":
                want = [{"scenario": "relay", "offered_per_s": r} for r in s.relay_rates]
                argv = self.common("relay", dep, "collabs") + [
                    "--nodes", str(s.fanout_nodes), "--rates", ",".join(map(str, s.relay_rates)),
                    "--duration", str(s.duration_s)]
                run_loadgen(Run(scenario, argv, key, want, self.sweep_timeout(s.relay_rates)),
                            self.results, self.logdir, self.cleanup)
            elif scenario in ("connect", "capacity"):
                # `connect` is the capacity scenario at the size of a typical deployment; its
                # lines say `variant: connect` so that the report keeps them apart
                dep.restart()  # a fresh instance
                wanted = s.connect_nodes if scenario == "connect" else s.capacity_connections
                n, note = capped(self.connections_for(key, wanted),
                                 connection_cap([open_files_limit(srv.proc.pid) for srv in dep.servers
                                                 if srv.proc is not None]))
                if note:
                    log(f"{key} {scenario}: {note}")
                extra = {"variant": "connect"} if scenario == "connect" else {}
                if note:
                    extra["note"] = note
                want = [{"scenario": "capacity", "phase": p} for p in ("fresh", "after_storm")]
                argv = self.common("capacity", dep, "idle") + ["--connections", str(n)] + self.processes(n)
                run_loadgen(Run(scenario, argv, key, want, 300 + n / 20, extra=extra),
                            self.results, self.logdir, self.cleanup)
            elif scenario == "restart":
                dep.restart()
                n = self.connections_for(key, s.restart_nodes)
                argv = self.common("restart", dep, "idle") + ["--connections", str(n)] + self.processes(n)

                def bounce(dep=dep):
                    # killed, not stopped: the figure is the reconnection, not a graceful stop
                    log(f"{key} restart: the load generator is READY; killing and restarting the servers")
                    dep.restart(kill=True)

                run_loadgen(Run(scenario, argv, key, [{"scenario": "restart"}], 300 + n / 10, on_ready=bounce),
                            self.results, self.logdir, self.cleanup)
        dep.stop()

    def preflight(self, dep: stack.Deployment) -> None:
        import preflight

        fixture = json.loads(self.fixtures["collabs"].read_text())
        emit = [str(self.server_bin), "emit", "--config", str(self.config_broker)] if dep.broker else None
        try:
            found = preflight.check(urls=dep.urls, fixture=fixture, emit_argv=emit)
        except Exception as exc:
            self.results.add({"scenario": "preflight", "label": dep.key, "errors": [str(exc)], "source": "compare"})
            raise RuntimeError(f"deployment {dep.key} failed its check: {exc}\n{dep.describe()}") from None
        self.results.add({**found, "label": dep.key, "source": "compare"})
        log(f"deployment {dep.key}: a websocket node got sync on every instance"
            + (", and new_task from the broker" if dep.broker else ""))


def scenario_list(text: str) -> list[str]:
    out: list[str] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        for s in ALIASES.get(name, [name]):
            if s not in SCENARIOS:
                raise argparse.ArgumentTypeError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS + list(ALIASES))})")
            if s not in out:
                out.append(s)
    return out


def deployment_list(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in report.DEPLOYMENTS]
    if bad or not keys:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated subset of a,b,c (got {text!r})")
    return [k for k in report.DEPLOYMENTS if k in keys]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small sizes, for trying it out ({QUICK.fanout_nodes} nodes, "
                   f"rates {QUICK.fanout_rates}, {QUICK.duration_s} s, {QUICK.capacity_connections} idle connections)")
    p.add_argument("--only", type=deployment_list, default=list(report.DEPLOYMENTS),
                   help="deployments to run, e.g. a,c (default a,b,c)")
    p.add_argument("--scenarios", type=scenario_list, default=list(SCENARIOS),
                   help=f"comma-separated: {', '.join(SCENARIOS)}, or fanout (both topologies), all")
    p.add_argument("--out", type=Path, help="directory of results.jsonl, report.md, chart.svg and logs "
                   "(default bench-results/<date-time>)")
    p.add_argument("--from-results", type=Path, metavar="FILE",
                   help="render the table and chart of this results file; runs nothing")
    p.add_argument("--no-build", action="store_true", help="use target/release as it is (no cargo build)")
    return p.parse_args(argv)


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _interrupted(*_):
    raise KeyboardInterrupt  # SIGTERM stops the run as Ctrl-C does, through the cleanup


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.from_results:
        text, md, chart = report.write(a.from_results, a.out)
        print(text)
        log(f"wrote {md} and {chart}")
        return 0
    out = a.out or ROOT / "bench-results" / time.strftime("%Y-%m-%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    _raise_open_files()
    cleanup = Cleanup()
    signal.signal(signal.SIGTERM, _interrupted)
    cmp = Comparison(a, out, cleanup)
    status = 0
    try:
        cmp.build()
        cmp.prepare()
        sizes = cmp.sizes
        cmp.results.add({"scenario": "meta", "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": commit(),
                         "machine": machine(), "quick": a.quick, "sizes": asdict(sizes),
                         "deployments": {k: report.DEPLOYMENTS[k] for k in a.only}, "scenarios": a.scenarios,
                         "command": "./scripts/bench.sh " + " ".join(argv if argv is not None else sys.argv[1:])})
        for key in a.only:
            try:
                cmp.run_deployment(key, a.scenarios)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the next deployment still runs
                log(f"deployment {key}: {exc}")
                cmp.results.add({"scenario": "deployment", "label": key, "errors": [str(exc)[:500]], "source": "compare"})
                status = 1
    except KeyboardInterrupt:
        log("interrupted: stopping everything this run started")
        status = 130
    finally:
        cleanup.run()
    if cmp.results.path.exists():
        text, md, chart = report.write(cmp.results.path)
        print(text)
        log(f"results {cmp.results.path}; report {md}; chart {chart}")
    return status


if __name__ == "__main__":
    sys.exit(main())
