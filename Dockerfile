# Container image of v6-socketio.
#
#   docker build -t v6-socketio .
#   docker run --rm -p 7602:7602 -v /path/to/vantage6-server.yaml:/mnt/config.yaml:ro v6-socketio
#
# The configuration file is the vantage6 4.x server file (plus an optional
# `v6_socketio:` section); every setting of that section can also be given as
# a V6_SOCKETIO_* environment variable or a flag after the image name, e.g.
#   docker run ... v6-socketio serve --config /mnt/config.yaml --log-format json
# deploy/compose.yaml runs two instances of this image behind nginx.

# ---- build -------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace (see .dockerignore): the server and the adapter crate.
COPY . .
RUN cargo build --release --locked -p v6-socketio \
 && install -m 0755 target/release/v6-socketio /usr/local/bin/v6-socketio

# ---- run ---------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 v6-socketio \
 && useradd --system --uid 10001 --gid v6-socketio --home-dir /var/lib/v6-socketio \
        --create-home --shell /usr/sbin/nologin v6-socketio
COPY --from=build /usr/local/bin/v6-socketio /usr/local/bin/v6-socketio

USER v6-socketio
# A relative SQLite path in `uri` (sqlite:///file.sqlite) is relative to this
# folder; mount the vantage6 database's folder here or use an absolute path.
WORKDIR /var/lib/v6-socketio
ENV RUST_LOG=info
EXPOSE 7602

# Liveness from /health with nothing but bash (no curl in the slim image). It
# asks the port of V6_SOCKETIO_PORT (7602 when unset); an instance whose port
# is set in the file's v6_socketio section or by --port needs
# V6_SOCKETIO_PORT set to the same value for this check.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${V6_SOCKETIO_PORT:-7602} && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && grep -q '^HTTP/1.1 200' <&3"]

# SIGTERM (docker stop) disconnects every client, waits up to 10 s for their
# disconnects to be handled and deletes the instance's RabbitMQ queue; give
# `docker stop` / compose's stop_grace_period at least 15 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/v6-socketio"]
CMD ["serve", "--config", "/mnt/config.yaml"]
