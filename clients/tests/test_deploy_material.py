"""The deployment material (deploy/, Dockerfile, .dockerignore) against the code.

Nothing here uses the ``server``/``db`` fixtures, so the module runs once, not
once per database backend.  What each test guards:

* the nginx template renders the way the nginx image's envsubst renders it,
  and ``nginx -t`` accepts the result;
* deploy/compose.yaml has the expected services, mounts only files that
  exist, fills every placeholder of the nginx template, pins each instance
  by its instance name to its own upstream address, and gives the
  v6-socketio services only environment variables and flags that
  ``v6-socketio serve`` accepts, with values it accepts;
* the shared vantage6 configuration file is accepted by the binary's loader
  and by vantage6's own validator, and agrees with the compose services;
* the Dockerfile's command, port and healthcheck fit the binary, and
  .dockerignore keeps what the build needs;
* the systemd unit's ExecStart is accepted by the binary and the unit passes
  ``systemd-analyze verify``.
* every manifest of deploy/kubernetes/ validates offline against the
  Kubernetes 1.30 OpenAPI schemas (kubernetes-validate), the base and the
  Secret overlay render with ``kubectl kustomize``, and the Deployment's arguments, environment, ConfigMap file,
  port, probe paths, grace period, labels and securityContext fit the
  binary, the Dockerfile and the Service; the routing examples send
  /socket.io/ to the Service.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
from pathlib import Path

import pytest
import yaml

from skip_policy import skip_missing
from support import REPO, free_port, server_binary, stop_process, wait_listening

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SHARED_CONFIG = DEPLOY / "config" / "vantage6-server.yaml"
NGINX_TEMPLATE = DEPLOY / "nginx" / "vantage6.conf.template"
UNIT = DEPLOY / "systemd" / "v6-socketio@.service"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

V6_SOCKETIO_SERVICES = ["v6-socketio-1", "v6-socketio-2"]
EXPECTED_SERVICES = {"postgres", "rabbitmq", "vantage6-server", "nginx", *V6_SOCKETIO_SERVICES}
VANTAGE6_IMAGE = "harbor2.vantage6.ai/infrastructure/server:4.15.2"
# The command `v6 server start` (vantage6 4.15.2's CLI) runs in that image.
VANTAGE6_UWSGI = (
    "uwsgi --http :5000 --gevent 1000 --http-websockets --http-chunked-input "
    "--http-keepalive --post-buffering 0 --master --callable app --disable-logging "
    "--wsgi-file /vantage6/vantage6-server/vantage6/server/wsgi.py --pyargv /mnt/config.yaml"
)


# ---------------------------------------------------------------------------
# the binary and what it accepts
# ---------------------------------------------------------------------------
def clean_env(extra: dict | None = None) -> dict:
    """This process's environment without V6_SOCKETIO_* (so nothing leaks in), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("V6_SOCKETIO_")}
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def binary() -> Path:
    path = server_binary()
    if not path.exists():
        pytest.fail(f"server binary {path} does not exist: run `cargo build` or set V6_SOCKETIO_BIN")
    return path


class ServeOptions:
    """The flags and environment variables of `v6-socketio serve`, read from its --help."""

    def __init__(self, help_text: str):
        self.text = help_text
        self.flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))
        self.short_flags = set(re.findall(r"(?<![\w-])(-[a-zA-Z])\b", help_text))
        self.env = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", help_text))


@pytest.fixture(scope="module")
def serve_options(binary) -> ServeOptions:
    out = subprocess.run(
        [str(binary), "serve", "--help"], capture_output=True, text=True, timeout=30, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    options = ServeOptions(out.stdout)
    # The parsing above must have found the options every deployment relies on.
    assert {"--config", "--port", "--ip", "--log-format"} <= options.flags, out.stdout
    assert {"V6_SOCKETIO_CONFIG", "V6_SOCKETIO_PORT"} <= options.env, out.stdout
    return options


def assert_serve_args_known(args: list[str], options: ServeOptions, where: str):
    """``args`` (after the binary) is `serve` followed by flags `serve --help` lists."""
    assert args and args[0] == "serve", f"{where}: expected the serve subcommand, got {args}"
    for arg in args[1:]:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert flag in options.flags, f"{where}: `{flag}` is not a flag of `v6-socketio serve`"
        elif re.fullmatch(r"-[a-zA-Z]", arg):
            assert arg in options.short_flags, f"{where}: `{arg}` is not a flag of `v6-socketio serve`"


def run_until_connect(binary: Path, args: list[str], env: dict | None = None, timeout: float = 25):
    """Runs `v6-socketio ARGS` and tells how far it got.

    Returns ("connect", line) when it failed at the database or broker
    connection, i.e. after the whole configuration was accepted;
    ("running", "") when it was still running after ``timeout`` (also past the
    configuration); ("config", stderr) for any other exit.
    """
    proc = subprocess.Popen(
        [str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env({"RUST_LOG": "warn", **(env or {})}), cwd=REPO,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return "running", ""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if proc.returncode == 1 and re.match(r"error: (database|RabbitMQ) ", last):
        return "connect", last
    return "config", f"exit {proc.returncode}: {err.strip()}"


def assert_config_accepted(binary: Path, args: list[str], env: dict | None, where: str):
    stage, detail = run_until_connect(binary, args, env)
    assert stage in ("connect", "running"), (
        f"{where}: `v6-socketio {' '.join(args)}` did not get past its configuration: {detail}"
    )


def broken_copy(tmp_path: Path) -> Path:
    """The shared configuration with a key our section does not know."""
    data = yaml.safe_load(SHARED_CONFIG.read_text())
    data.setdefault("v6_socketio", {})["no_such_setting"] = 1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose.yaml has no services"
    return data


@pytest.fixture(scope="module")
def shared_config() -> dict:
    return yaml.safe_load(SHARED_CONFIG.read_text())


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, short and long syntax."""
    mounts = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2:
                mounts.append((parts[0], parts[1]))
        else:
            mounts.append((v.get("source", ""), v["target"]))
    return mounts


def host_path(source: str) -> Path | None:
    """The host path of a bind mount source (None for a named volume)."""
    if source.startswith((".", "/", "~")):
        return (COMPOSE.parent / source).resolve()
    return None


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def service_command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def container_to_host_args(args: list[str], service: dict) -> list[str]:
    """``args`` with container paths of the service's bind mounts replaced by host paths."""
    mapping = {target: str(host_path(src)) for src, target in volume_mounts(service) if host_path(src)}
    return [mapping.get(a, a) for a in args]


def placeholders(template: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", template)}


def nginx_variables(text: str) -> set[str]:
    """nginx's own $variables (not ${PLACEHOLDERS})."""
    return set(re.findall(r"\$([a-z_][a-z0-9_]*)", text))


# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------
def render_template(**values) -> str:
    return string.Template(NGINX_TEMPLATE.read_text()).safe_substitute(values)


def test_nginx_template_renders_and_nginx_accepts_it(tmp_path):
    template = NGINX_TEMPLATE.read_text()
    assert placeholders(template) == {
        "NGINX_LISTEN", "NGINX_RESOLVER", "V6_SOCKETIO_SERVERS", "V6_SOCKETIO_PINS",
        "VANTAGE6_API_SERVERS", "MAX_BODY_SIZE",
    }, "the template's placeholders changed: update compose.yaml, the e2e harness and the README"
    rendered = render_template(
        NGINX_LISTEN=f"127.0.0.1:{free_port()}",
        NGINX_RESOLVER="127.0.0.1",
        V6_SOCKETIO_SERVERS="server 127.0.0.1:7602; server 127.0.0.1:7603;",
        V6_SOCKETIO_PINS="host-a:7602 127.0.0.1:7602;\n    host-a:7603 127.0.0.1:7603;",
        VANTAGE6_API_SERVERS="server 127.0.0.1:5000;",
        MAX_BODY_SIZE="100m",
    )
    assert not placeholders(rendered), f"placeholders left unfilled: {placeholders(rendered)}"
    # nginx's own variables survive the substitution, as with envsubst.
    for var in ("http_authorization", "http_upgrade", "v6_connection_upgrade", "host",
                "cookie_v6_socketio_instance", "arg_sid"):
        assert f"${var}" in rendered, f"${var} lost in rendering"
    # Session affinity: new sessions hashed on Authorization, the requests of
    # a session (with ?sid=) by the cookie the instances set (src/affinity.rs).
    assert "hash $http_authorization consistent;" in rendered, "session affinity is gone"
    cookie = re.search(r'pub const COOKIE_NAME: &str = "([a-z0-9_]+)";',
                       (REPO / "src" / "affinity.rs").read_text()).group(1)
    assert f"$cookie_{cookie} " in rendered, f"the template does not route by the cookie {cookie}"

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        skip_missing("nginx",
                     "nginx is not installed: the rendered template was not checked with `nginx -t`")
    (tmp_path / "vantage6.conf").write_text(rendered)
    temp_dirs = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\n"
        "events {}\n"
        "http {\n"
        f"    access_log off;\n{temp_dirs}\n"
        f"    include {tmp_path / 'vantage6.conf'};\n"
        "}\n"
    )
    out = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
         "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, f"nginx -t rejected the rendered template:\n{out.stderr}\n{rendered}"


def test_compose_nginx_fills_every_placeholder_and_nothing_else(compose):
    nginx = compose["services"]["nginx"]
    env = service_env(nginx)
    template = NGINX_TEMPLATE.read_text()
    missing = placeholders(template) - env.keys()
    assert not missing, f"compose's nginx service leaves {sorted(missing)} unfilled"
    # envsubst replaces every defined variable: none may shadow an nginx $variable.
    clash = {v for v in nginx_variables(template) if v in env}
    assert not clash, f"environment variables {sorted(clash)} would be substituted for nginx variables"
    # The official image renders /etc/nginx/templates/NAME.template to /etc/nginx/conf.d/NAME.
    mounts = dict((target, src) for src, target in volume_mounts(nginx))
    templates = [t for t in mounts if t.startswith("/etc/nginx/templates/") and t.endswith(".template")]
    assert templates, "the template is not mounted into /etc/nginx/templates/"
    assert any(host_path(mounts[t]) == NGINX_TEMPLATE.resolve() for t in templates), mounts


def test_compose_upstreams_are_the_compose_services(compose, shared_config):
    services = compose["services"]
    env = service_env(services["nginx"])

    def servers(value: str) -> list[tuple[str, int]]:
        found = re.findall(r"server\s+([A-Za-z0-9_.-]+):(\d+)[^;]*;", value)
        assert found, f"no `server host:port;` entries in {value!r}"
        return [(h, int(p)) for h, p in found]

    socketio = servers(env["V6_SOCKETIO_SERVERS"])
    assert sorted(h for h, _ in socketio) == sorted(V6_SOCKETIO_SERVICES)
    for host, port in socketio:
        own = service_env(services[host]).get("V6_SOCKETIO_PORT")
        expected = int(own) if own else int(shared_config.get("v6_socketio", {}).get("port", 7602))
        assert port == expected, f"nginx sends {host} traffic to port {port}, it listens on {expected}"
    api = servers(env["VANTAGE6_API_SERVERS"])
    uwsgi_port = int(re.search(r"--http :(\d+)", " ".join(service_command(services["vantage6-server"]))).group(1))
    assert api == [("vantage6-server", uwsgi_port)]


def test_compose_pins_each_instance_by_its_name_to_its_own_address(compose, shared_config):
    """V6_SOCKETIO_PINS maps each cookie value (an instance's instance_name)
    to that instance's entry of V6_SOCKETIO_SERVERS, and nothing else."""
    services = compose["services"]
    env = service_env(services["nginx"])
    servers = re.findall(r"server\s+([A-Za-z0-9_.-]+:\d+)[^;]*;", env["V6_SOCKETIO_SERVERS"])
    pins = [line.strip() for line in env["V6_SOCKETIO_PINS"].split(";") if line.strip()]
    pinned = {}
    for pin in pins:
        fields = pin.split()
        assert len(fields) == 2, f"V6_SOCKETIO_PINS entry {pin!r} is not `INSTANCE_NAME host:port;`"
        name, addr = fields
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", name), f"{name!r} cannot be an instance name"
        assert name not in pinned, f"{name} is pinned twice"
        pinned[name] = addr
    own_default = shared_config.get("v6_socketio", {}).get("instance_name")
    names = {}
    for service in V6_SOCKETIO_SERVICES:
        name = service_env(services[service]).get("V6_SOCKETIO_INSTANCE_NAME", own_default)
        assert name, f"{service} has no instance name: nginx cannot pin its sessions"
        assert name not in names, f"{service} and {names.get(name)} share the instance name {name}"
        names[name] = service
    assert pinned.keys() == names.keys(), (
        f"pin names {sorted(pinned)} are not the instance names {sorted(names)} of the v6-socketio services"
    )
    for name, addr in pinned.items():
        assert addr in servers, f"{name} is pinned to {addr}, which is not an upstream server {servers}"
        assert addr.split(":")[0] == names[name], f"{name} ({names[name]}) is pinned to another instance: {addr}"


# ---------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------
def test_compose_has_the_expected_services(compose):
    services = compose["services"]
    assert EXPECTED_SERVICES <= services.keys(), f"missing: {sorted(EXPECTED_SERVICES - services.keys())}"
    v6 = services["vantage6-server"]
    assert v6["image"] == VANTAGE6_IMAGE
    assert service_command(v6) == VANTAGE6_UWSGI.split()
    for name in V6_SOCKETIO_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} is not built from the Dockerfile"
        context = (COMPOSE.parent / (build if isinstance(build, str) else build["context"])).resolve()
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (context / dockerfile).resolve() == DOCKERFILE.resolve(), f"{name} builds {context / dockerfile}"


def test_compose_mounts_only_existing_files_and_one_shared_config(compose):
    for name, service in compose["services"].items():
        for src, target in volume_mounts(service):
            path = host_path(src)
            if path is None:
                assert src in (compose.get("volumes") or {}), f"{name}: undeclared volume {src}"
                continue
            assert path.exists(), f"{name} mounts {src}, which does not exist ({path})"
            assert REPO.resolve() in path.parents, f"{name} mounts {src}, outside the repository"
    # The vantage6 server and every v6-socketio instance read the same file.
    for name in ["vantage6-server", *V6_SOCKETIO_SERVICES]:
        mounts = {target: host_path(src) for src, target in volume_mounts(compose["services"][name])}
        assert mounts.get("/mnt/config.yaml") == SHARED_CONFIG.resolve(), f"{name}: {mounts}"


@pytest.mark.parametrize("name", V6_SOCKETIO_SERVICES)
def test_compose_v6_socketio_settings_are_accepted(compose, binary, serve_options, name, tmp_path):
    service = compose["services"][name]
    env = service_env(service)
    for key in env:
        assert key in serve_options.env or key == "RUST_LOG", (
            f"{name}: `v6-socketio serve` does not read the environment variable {key}"
        )
    args = service_command(service)
    assert_serve_args_known(args, serve_options, f"compose service {name}")
    # Its command and environment, with its mounted files at their host paths:
    # the binary must get as far as connecting to the (here unreachable) database.
    host_args = container_to_host_args(args, service)
    assert str(SHARED_CONFIG.resolve()) in host_args, f"{name} does not read the shared config: {args}"
    assert_config_accepted(binary, host_args, env, f"compose service {name}")
    # ... and the same run with a configuration the binary rejects is told apart.
    bad_args = [str(broken_copy(tmp_path)) if a == str(SHARED_CONFIG.resolve()) else a for a in host_args]
    stage, _ = run_until_connect(binary, bad_args, env)
    assert stage == "config"


def test_compose_file_is_valid_for_docker_compose():
    """`docker compose config` (or the Python docker-compose), when one is installed."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            continue
        out = subprocess.run(
            [*cmd, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"`{' '.join(cmd)} config` rejects compose.yaml:\n{out.stderr}"
        return
    skip_missing("docker-compose", "neither `docker compose` nor `docker-compose` works here: "
                 "compose.yaml was only parsed as YAML")


# ---------------------------------------------------------------------------
# the shared vantage6 configuration
# ---------------------------------------------------------------------------
def test_shared_config_is_accepted_by_the_binary(binary, tmp_path):
    assert_config_accepted(
        binary, ["serve", "--config", str(SHARED_CONFIG), "--ip", "127.0.0.1", "--port", "0"], None,
        "deploy/config/vantage6-server.yaml",
    )
    stage, detail = run_until_connect(binary, ["serve", "--config", str(broken_copy(tmp_path))])
    assert stage == "config" and "no_such_setting" in detail, detail


def test_shared_config_is_accepted_by_vantage6():
    """vantage6 4.15.2's own validator (what `run_server` loads the file with)."""
    from vantage6.cli.configuration_manager import ServerConfigurationManager

    manager = ServerConfigurationManager.from_file(str(SHARED_CONFIG))  # raises when invalid
    assert not manager.is_empty


def test_shared_config_matches_the_compose_services(compose, shared_config):
    services = compose["services"]
    assert shared_config.get("jwt_secret_key"), "jwt_secret_key must be set for both servers"
    assert shared_config.get("api_path") == "/api"

    from urllib.parse import unquote, urlsplit

    db = urlsplit(shared_config["uri"])
    pg = service_env(services["postgres"])
    assert db.scheme.split("+")[0] in ("postgresql", "postgres")
    assert (db.hostname, db.port or 5432) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    )

    mq = urlsplit(shared_config["rabbitmq"]["uri"])
    rabbit = service_env(services["rabbitmq"])
    assert mq.scheme == "amqp" and (mq.hostname, mq.port or 5672) == ("rabbitmq", 5672)
    assert (mq.username, mq.password, unquote(mq.path.lstrip("/")) or "/") == (
        rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"],
        rabbit.get("RABBITMQ_DEFAULT_VHOST", "/"),
    )
    # vantage6 4.15.2 pins python-socketio 5.15.0: the legacy message format.
    own = shared_config.get("v6_socketio", {})
    assert own.get("message_queue_format", "legacy") == "legacy"
    for name in V6_SOCKETIO_SERVICES:
        assert service_env(services[name]).get("V6_SOCKETIO_MESSAGE_QUEUE_FORMAT", "legacy") == "legacy"


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        instr, _, args = current.partition(" ")
        lines.append((instr.upper(), args.strip()))
        current = ""
    return lines


def instruction(name: str) -> list[str]:
    return [args for instr, args in dockerfile_instructions() if instr == name]


def default_port() -> int:
    m = re.search(r"pub const DEFAULT_PORT: u16 = (\d+);", (REPO / "src" / "config.rs").read_text())
    assert m, "DEFAULT_PORT not found in src/config.rs"
    return int(m.group(1))


def test_dockerfile_builds_and_runs_the_binary(serve_options):
    froms = instruction("FROM")
    assert len(froms) == 2, froms
    assert re.match(r"rust:\S*bookworm\S* AS \w+", froms[0], re.I), froms[0]
    assert froms[1].startswith("debian:bookworm-slim"), froms[1]
    runs = " ".join(instruction("RUN"))
    assert "cargo build --release --locked -p v6-socketio" in runs
    user = instruction("USER")
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    assert [int(p.split("/")[0]) for p in instruction("EXPOSE")] == [default_port()]
    entrypoint = json.loads(instruction("ENTRYPOINT")[-1])
    copied = [args.split()[-1] for args in instruction("COPY") if args.startswith("--from=")]
    assert entrypoint[0] in copied, f"ENTRYPOINT {entrypoint[0]} is not the binary copied in: {copied}"
    cmd = json.loads(instruction("CMD")[-1])
    assert_serve_args_known(entrypoint[1:] + cmd, serve_options, "Dockerfile CMD")


@contextlib.contextmanager
def running_demo(binary: Path, tmp_path: Path, port: int):
    """`v6-socketio demo` listening on `port` for the block; stopped after it."""
    proc = subprocess.Popen(
        [str(binary), "demo", "--dir", str(tmp_path / "demo"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env({"RUST_LOG": "warn"}),
    )
    try:
        wait_listening(proc, port)
        yield proc
    finally:
        stop_process(proc)


def test_dockerfile_healthcheck_tells_up_from_down(binary, tmp_path):
    """The HEALTHCHECK command, run here against a `demo` instance, then a closed port."""
    args = instruction("HEALTHCHECK")[-1]
    cmd = json.loads(args[args.index("CMD") + 3:].strip())
    assert cmd[0] == "bash", "the slim image has bash, no curl/wget: the check must use bash"
    port = free_port()
    with running_demo(binary, tmp_path, port):
        up = subprocess.run(cmd, env=clean_env({"V6_SOCKETIO_PORT": str(port)}),
                            capture_output=True, text=True, timeout=10)
        assert up.returncode == 0, f"healthcheck failed against a healthy instance: {up.stderr}"
    down = subprocess.run(cmd, env=clean_env({"V6_SOCKETIO_PORT": str(port)}),
                          capture_output=True, text=True, timeout=10)
    assert down.returncode != 0, "healthcheck passed with nothing listening"


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per .dockerignore line, in Docker's matching rules."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def docker_context_files() -> list[str]:
    """Files of the working tree that `docker build .` sends, by .dockerignore."""
    patterns = dockerignore_patterns()

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        result = False
        for negate, rx in patterns:
            # a pattern excluding a directory excludes everything below it
            if any(rx.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
                result = not negate
        return result

    files = []
    for root, dirs, names in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not excluded(rel_root + d)]
        files += [rel_root + n for n in names if not excluded(rel_root + n)]
    return files


def test_dockerignore_keeps_the_workspace_and_drops_the_rest(tmp_path):
    files = set(docker_context_files())
    # every workspace member's manifest and sources (cargo reads them all), the load generator's too
    for needed in ["Cargo.toml", "Cargo.lock", "src/main.rs", "adapter/Cargo.toml", "adapter/src/lib.rs",
                   "clients/loadgen/Cargo.toml", "clients/loadgen/src/main.rs"]:
        assert needed in files, f".dockerignore drops {needed}"
    for dropped in ["target", ".git", "clients", "demo-data"]:
        sent = [f for f in files if (f == dropped or f.startswith(dropped + "/"))
                and not f.startswith("clients/loadgen/")]
        assert not sent, f"{dropped} is sent: {sent[:5]}"
    cargo = shutil.which("cargo")
    if cargo is None:
        skip_missing("cargo", "cargo is not installed: "
                     "the build context was not checked with `cargo tree --locked`")
    host = re.search(r"^host: (\S+)$", subprocess.run(
        ["rustc", "-vV"], capture_output=True, text=True, timeout=60).stdout, re.M).group(1)
    context = tmp_path / "context"
    for rel in files:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    # What `cargo build --release --locked -p v6-socketio` resolves, without
    # downloading (the crates of this platform are in the local cache once the
    # workspace was built) and without building.
    out = subprocess.run(
        [cargo, "tree", "--locked", "--offline", "-p", "v6-socketio", "-e", "normal",
         "--target", host, "--depth", "1"],
        cwd=context, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, f"the Docker build context is not a complete, locked workspace:\n{out.stderr}"
    assert out.stdout.startswith("v6-socketio ") and "socketioxide-amqp" in out.stdout, out.stdout


# ---------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------
def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?", value):
        total += float(number) * {"ms": 0.001, "s": 1, "": 1, "min": 60, "m": 60, "h": 3600}[unit or ""]
    return total


def drain_timeout() -> float:
    m = re.search(r"const DRAIN_TIMEOUT: Duration = Duration::from_secs\((\d+)\);",
                  (REPO / "src" / "server.rs").read_text())
    assert m, "DRAIN_TIMEOUT not found in src/server.rs"
    return float(m.group(1))


def test_systemd_exec_start_is_accepted(binary, serve_options):
    settings = unit_settings()
    (exec_start,) = settings["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/v6-socketio", argv
    assert_serve_args_known(argv[1:], serve_options, "ExecStart")
    assert "%i" in argv and argv[argv.index("%i") - 1] == "--port", "the instance name must be the port"
    # Every instance is called <host>:<port>, the key of its nginx pin.
    assert "--instance-name" in argv and argv[argv.index("--instance-name") + 1] == "%H:%i", argv
    # The same arguments with this repository's config and a free port
    # (systemd's specifiers: %i the unit's instance, %H the host name).
    args = [a.replace("%i", "0").replace("%H", socket.gethostname()) for a in argv[1:]]
    args[args.index("--config") + 1] = str(SHARED_CONFIG)
    assert_config_accepted(binary, args, None, "systemd ExecStart")
    for line in settings.get("Environment", []):
        for assignment in shlex.split(line):
            key = assignment.split("=", 1)[0]
            assert key in serve_options.env or key == "RUST_LOG", f"unit sets unknown {key}"


def test_systemd_unit_restarts_and_stops_gracefully(compose):
    settings = unit_settings()
    assert settings["Restart"] == ["always"]
    assert seconds(settings["RestartSec"][0]) <= 10
    assert settings.get("StartLimitIntervalSec") == ["0"], "a long broker outage must not stop the retries"
    assert settings.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    drain = drain_timeout()
    assert seconds(settings["TimeoutStopSec"][0]) > drain + 5, "TimeoutStopSec must cover the graceful drain"
    for name in V6_SOCKETIO_SERVICES:
        grace = compose["services"][name].get("stop_grace_period", "10s")
        assert seconds(grace) > drain + 5, f"{name}: stop_grace_period must cover the graceful drain"
    assert int(settings["LimitNOFILE"][0].split(":")[0]) >= 65536
    user = settings.get("User", ["root"])[0]
    assert user not in ("root", "0") and settings.get("DynamicUser") != ["yes"]
    assert settings["NoNewPrivileges"] == ["yes"] and settings["ProtectSystem"] == ["strict"]


def test_systemd_unit_verifies(binary, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_missing("systemd-analyze", "systemd-analyze is not installed: the unit was not verified")
    # An instance of the template, with the binary at a path that exists here.
    unit = tmp_path / "v6-socketio@7602.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/v6-socketio", str(binary)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [
        line for line in (out.stdout + out.stderr).splitlines()
        if "v6-socketio" in line and re.search(r"Unknown|Failed|[Ii]nvalid|not executable|bad", line)
    ]
    assert out.returncode == 0 and not problems, f"systemd-analyze verify:\n{out.stdout}{out.stderr}"


# ---------------------------------------------------------------------------
# Kubernetes (deploy/kubernetes/)
# ---------------------------------------------------------------------------
K8S_ROOT = DEPLOY / "kubernetes"
K8S = K8S_ROOT / "base"
K8S_ROUTING = K8S_ROOT / "routing"
K8S_SECRET_OVERLAY = K8S_ROOT / "secret-config"
# The Kubernetes version whose OpenAPI schemas the manifests are checked
# against (kubernetes-validate ships them; nothing is downloaded).
K8S_VERSION = "1.30"
# What vantage6's Helm chart (5.x) names a release's HQ Service and its port
# in the examples (Service <release>, port hq.port).
HQ_SERVICE = ("vantage6-hq", 7601)
INSTANCE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def k8s_documents(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no manifest"
    return docs


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def k8s_base(kustomization) -> dict[str, dict]:
    """The base's resources by kind (one of each)."""
    found: dict[str, dict] = {}
    for name in kustomization["resources"]:
        for doc in k8s_documents(K8S / name):
            assert doc["kind"] not in found, f"two {doc['kind']} in the base"
            found[doc["kind"]] = doc
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= found.keys(), sorted(found)
    return found


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def the_container(deployment: dict) -> dict:
    (container,) = pod_spec(deployment)["containers"]
    return container


def container_env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def port_number(container: dict, port) -> int:
    """A probe's or Service's port (number or container port name) as a number."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in by_name, f"port {port!r} names no container port: {by_name}"
    return by_name[port]


def validate_k8s(doc: dict, where: str):
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where}: {doc.get('kind')} {doc['metadata'].get('name')} is not valid "
                    f"Kubernetes {K8S_VERSION}: {e}")


def test_kustomization_lists_every_base_manifest(kustomization):
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present, f"kustomization.yaml lists {sorted(listed)}, the folder holds {sorted(present)}"
    assert kustomization["kind"] == "Kustomization"
    images = {i["name"] for i in kustomization.get("images", [])}
    deployment = next(d for n in listed for d in k8s_documents(K8S / n) if d["kind"] == "Deployment")
    assert the_container(deployment)["image"] in images, "kustomization.yaml does not set the image"


def test_kubernetes_manifests_validate_offline():
    """Every manifest, base and routing examples, against the OpenAPI schemas
    of Kubernetes K8S_VERSION. The Gateway API's HTTPRoute is a CRD the
    schemas do not have: its fields are checked in the routing test below."""
    import kubernetes_validate

    checked = 0
    for path in sorted([*K8S.glob("*.yaml"), *K8S_ROUTING.glob("*.yaml")]):
        if path.name == "kustomization.yaml":
            continue
        for doc in k8s_documents(path):
            if doc["apiVersion"].startswith("gateway.networking.k8s.io/"):
                continue
            validate_k8s(doc, str(path.relative_to(REPO)))
            checked += 1
    assert checked >= 5, f"only {checked} manifests validated"
    # ... and the validator does reject a broken manifest (a typo'd field, a string port).
    broken = yaml.safe_load((K8S / "service.yaml").read_text())
    broken["spec"]["ports"][0]["port"] = "7602"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = yaml.safe_load((K8S / "deployment.yaml").read_text())
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_kustomize_renders_the_base_and_the_result_validates():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        skip_missing("kubectl", "kubectl is not installed: "
                     "the kustomization was not rendered (its files were validated)")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize failed:\n{out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    for doc in docs:
        validate_k8s(doc, "kubectl kustomize deploy/kubernetes/base")
        assert doc["metadata"]["namespace"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert the_container(deployment)["image"].startswith("registry.example.org/"), "the image was not set"


def test_kubernetes_labels_select_the_pods(k8s_base):
    deployment, service, pdb = k8s_base["Deployment"], k8s_base["Service"], k8s_base["PodDisruptionBudget"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.get("app.kubernetes.io/name") == "v6-socketio"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the Deployment does not select its own pods"
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no pod"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "the PDB selects no pod"
    for doc in k8s_base.values():
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/component"):
            assert doc["metadata"]["labels"].get(key) == pod_labels[key], f"{doc['kind']}: label {key}"
    assert deployment["spec"]["replicas"] == 2
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1


def test_kubernetes_service_affinity_and_port(k8s_base, shared_config):
    service, deployment = k8s_base["Service"], k8s_base["Deployment"]
    container = the_container(deployment)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    timeout = service["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
    assert timeout > 60, "the affinity must outlast a node's ping timeout"
    (port,) = service["spec"]["ports"]
    assert port["name"] and port["port"] == default_port()
    listen = int(container_env(container)["V6_SOCKETIO_PORT"]["value"])
    assert port_number(container, port["targetPort"]) == listen, "the Service sends to another port"


def test_kubernetes_container_runs_the_binary_as_configured(k8s_base, binary, serve_options, tmp_path):
    """Its arguments and environment with the ConfigMap's file: the binary
    gets past its configuration (to the unreachable database)."""
    deployment, configmap = k8s_base["Deployment"], k8s_base["ConfigMap"]
    container = the_container(deployment)
    assert "command" not in container, "the image's entrypoint is the binary: set args only"
    args = [str(a) for a in container["args"]]
    assert_serve_args_known(args, serve_options, "Deployment args")
    env = container_env(container)
    for name in env:
        assert name in serve_options.env or name == "RUST_LOG", f"the binary does not read {name}"
    # The config file is the ConfigMap's key, at its mount path.
    config_arg = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount_dir = str(Path(config_arg).parent)
    assert mount_dir in mounts and mounts[mount_dir]["readOnly"], f"{config_arg} is not a read-only mount"
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mounts[mount_dir]["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    key = Path(config_arg).name
    assert key in configmap["data"], f"the ConfigMap has no {key}"
    # The port the container declares is the port the binary listens on.
    (declared,) = container["ports"]
    assert declared["containerPort"] == int(env["V6_SOCKETIO_PORT"]["value"])
    config = tmp_path / key
    config.write_text(configmap["data"][key])
    run_env = {name: e["value"] for name, e in env.items() if "value" in e}
    run_env["V6_SOCKETIO_INSTANCE_NAME"] = "v6-socketio-7d9f8c6b5-x2x7q"
    run_env["V6_SOCKETIO_PORT"] = "0"
    assert_config_accepted(binary, ["serve", "--config", str(config), "--ip", "127.0.0.1"], run_env,
                           "deploy/kubernetes ConfigMap + Deployment")
    # The same run with an unknown v6_socketio key is told apart.
    data = yaml.safe_load(configmap["data"][key])
    data["v6_socketio"]["no_such_setting"] = 1
    config.write_text(yaml.safe_dump(data))
    stage, detail = run_until_connect(binary, ["serve", "--config", str(config)], run_env)
    assert stage == "config" and "no_such_setting" in detail, detail


def test_kubernetes_configmap_is_an_hq_configuration(k8s_base):
    """The keys vantage6's Helm chart renders for HQ 5.x, plus our section."""
    data = yaml.safe_load(k8s_base["ConfigMap"]["data"]["config.yaml"])
    for key in ("uri", "jwt_secret_key", "api_path", "logging", "hq_url"):
        assert key in data, f"an HQ configuration has {key}"
    assert data["rabbitmq"]["uri"].startswith("amqp")
    assert data["uri"].startswith("postgresql")
    # HQ 5.x runs python-socketio 5.16.2, which puts the list of emit arguments on the queue.
    assert data["v6_socketio"]["message_queue_format"] == "args"
    # per-pod settings come from the Deployment, not the shared file
    assert "instance_name" not in data["v6_socketio"]


def test_kubernetes_probes_exist_on_the_binary(k8s_base, binary, tmp_path):
    """Each probe's path, asked of a running `demo` instance, answers 200; a
    path the binary does not serve answers otherwise."""
    import urllib.error
    import urllib.request

    container = the_container(k8s_base["Deployment"])
    probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    listen = int(container_env(container)["V6_SOCKETIO_PORT"]["value"])
    for kind, probe in probes.items():
        assert port_number(container, probe["httpGet"]["port"]) == listen, f"{kind} asks another port"
    port = free_port()

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    with running_demo(binary, tmp_path, port):
        for kind, probe in probes.items():
            assert status(probe["httpGet"]["path"]) == 200, f"{kind} {probe['httpGet']['path']} is not 200"
        assert status("/no-such-probe") != 200


def test_kubernetes_grace_period_covers_the_graceful_stop(k8s_base):
    spec = pod_spec(k8s_base["Deployment"])
    container = the_container(k8s_base["Deployment"])
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert Path(command[0]).name == "sleep", command
        pause = float(command[1])
    assert 1 <= pause <= 15, "a short pause, for the endpoint removal to spread before SIGTERM"
    # Kubernetes counts the preStop hook in the grace period.
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > pause + drain_timeout() + 5, (
        f"{grace} s do not cover the {pause} s preStop, the {drain_timeout()} s drain and the queue deletion"
    )
    assert k8s_base["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_kubernetes_instance_name_is_the_pod_name(k8s_base):
    deployment = k8s_base["Deployment"]
    env = container_env(the_container(deployment))
    ref = env["V6_SOCKETIO_INSTANCE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ref == "metadata.name", "each pod needs its own instance name: the downward API's pod name"
    # A Deployment's pod is <deployment>-<10-char pod-template hash>-<5 chars>,
    # lower-case letters, digits and '-': always an instance name.
    longest = f"{deployment['metadata']['name']}-{'a' * 10}-{'b' * 5}"
    assert INSTANCE_NAME.fullmatch(longest) and len(longest) <= 63, longest
    assert not INSTANCE_NAME.fullmatch("v6 socketio"), "the pattern must refuse what the binary refuses"


def test_kubernetes_pod_security_matches_the_image(k8s_base):
    spec = pod_spec(k8s_base["Deployment"])
    container = the_container(k8s_base["Deployment"])
    uid = re.search(r"useradd [^&]*--uid (\d+)", " ".join(instruction("RUN"))).group(1)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(uid), "not the image's user"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_kubernetes_routing_examples_send_socketio_to_the_service(k8s_base):
    service = k8s_base["Service"]
    name = service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    path = yaml.safe_load(SHARED_CONFIG.read_text())["v6_socketio"]["path"]
    hq_config = yaml.safe_load(k8s_base["ConfigMap"]["data"]["config.yaml"])
    assert hq_config["v6_socketio"]["path"] == path == "/socket.io/"

    (ingress,) = k8s_documents(K8S_ROUTING / "ingress-nginx.yaml")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    cookie = notes["nginx.ingress.kubernetes.io/session-cookie-name"]
    ours = re.search(r'pub const COOKIE_NAME: &str = "([a-z0-9_]+)";',
                     (REPO / "src" / "affinity.rs").read_text()).group(1)
    # ingress-nginx writes its own value into its cookie: sharing our
    # cookie's name would make the two overwrite each other.
    assert cookie != ours, "ingress-nginx's affinity cookie must not be the instances' cookie"
    assert notes["nginx.ingress.kubernetes.io/session-cookie-path"] == path
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 60, "shorter than the ping timeout"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    backends = [(p["path"], p["backend"]["service"]) for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(p == path and s["name"] == name for p, s in backends), backends
    for _, s in backends:
        assert s["port"].get("name") == port["name"] or s["port"].get("number") == port["port"]

    (route,) = k8s_documents(K8S_ROUTING / "httproute.yaml")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["spec"]["parentRefs"] and route["spec"]["hostnames"]
    routes = {}
    for rule in route["spec"]["rules"]:
        (match,) = rule["matches"]
        assert match["path"]["type"] == "PathPrefix"
        (backend,) = rule["backendRefs"]
        routes[match["path"]["value"]] = (backend["name"], backend["port"])
        if backend["name"] == name:
            assert rule["timeouts"]["request"] == "0s", "websockets outlive any request timeout"
    assert routes == {path: (name, port["port"]), "/": HQ_SERVICE}, routes


def test_kustomize_secret_overlay_mounts_the_file_from_a_secret(tmp_path):
    """deploy/kubernetes/secret-config/ with a config.yaml (here the
    ConfigMap's file): no ConfigMap, a Secret holding the file byte for byte,
    mounted where the base mounted the ConfigMap; all valid."""
    import base64

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        skip_missing("kubectl", "kubectl is not installed: the Secret overlay was not rendered")
    tree = tmp_path / "kubernetes"
    shutil.copytree(K8S_ROOT, tree)
    overlay = tree / K8S_SECRET_OVERLAY.name
    assert not (overlay / "config.yaml").exists(), "a config.yaml is committed in the overlay"
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())
    (overlay / "config.yaml").write_text(configmap["data"]["config.yaml"])
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize failed:\n{out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "PodDisruptionBudget", "Secret", "Service"], kinds
    for doc in docs:
        validate_k8s(doc, "kubectl kustomize deploy/kubernetes/secret-config")
    secret = next(d for d in docs if d["kind"] == "Secret")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert secret["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert base64.b64decode(secret["data"]["config.yaml"]).decode() == configmap["data"]["config.yaml"]
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    base_volumes = {v["name"]: v for v in pod_spec(yaml.safe_load((K8S / "deployment.yaml").read_text()))["volumes"]}
    assert volumes.keys() == base_volumes.keys()
    config_volume = next(n for n, v in base_volumes.items() if "configMap" in v)
    assert volumes[config_volume]["secret"]["secretName"] == secret["metadata"]["name"], volumes
    # readable by the pod's group (fsGroup), not by others
    assert volumes[config_volume]["secret"]["defaultMode"] & 0o007 == 0
    assert volumes[config_volume]["secret"]["defaultMode"] & 0o040
