//! Assembles and runs one instance: database, token verifier, Socket.IO
//! layer with the `/tasks` namespace, HTTP routes, offline sweep, graceful
//! shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use socketioxide::{
    adapter::{Adapter, Emitter, LocalAdapter},
    layer::SocketIoLayer,
    SocketIo, SocketIoBuilder,
};
use socketioxide_amqp::{AdapterConfig, AmqpAdapter, AmqpAdapterCtr, AmqpConfig};
use tracing::{info, warn};

use crate::{
    affinity::AffinityCookieLayer,
    auth::{KeycloakVerifier, TokenVerifier, Verifier},
    broker_metrics::BrokerCollector,
    cluster,
    config::{Config, ConfigError},
    detached_head,
    generation::{self, Vantage6Generation},
    heap, http,
    keycloak::{KeycloakError, RealmKey, StartupRetry},
    listener::{self, Limits},
    metrics::Metrics,
    store::{Store, StoreError},
    sweeper,
    tasks_ns::{self, TasksContext},
};

/// Why the server could not start or stopped with an error. The message
/// names what failed; the cause is its [`source`](std::error::Error::source)
/// (print the chain, e.g. with anyhow's `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened or is not a vantage6 database.
    #[error("database {url}")]
    Database {
        /// The database, password hidden.
        url: String,
        /// What went wrong.
        source: StoreError,
    },
    /// RabbitMQ could not be reached or the adapter could not start. The
    /// adapter's message already ends with its causes, so it is shown, not
    /// chained.
    #[error("RabbitMQ {uri}: {error}")]
    Broker {
        /// The URI, password hidden.
        uri: String,
        /// What went wrong.
        error: socketioxide_amqp::Error,
    },
    /// The setting and the database disagree on the vantage6 generation, or
    /// the generation lacks what it needs.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// 5.x: the Keycloak realm key could not be obtained.
    #[error(transparent)]
    Keycloak(#[from] KeycloakError),
    /// The listener could not be bound.
    #[error("listener {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let db_err = |source| ServeError::Database {
        url: config.database.display_redacted(),
        source,
    };
    let store = Store::connect(&config.database).await.map_err(db_err)?;
    store.check_schema().await.map_err(db_err)?;
    let schema = generation::of_schema(store.has_keycloak_id_column().await.map_err(db_err)?);
    let generation = generation::resolve(&config, schema)?;
    if generation == Vantage6Generation::V5 {
        store.check_schema_v5().await.map_err(db_err)?;
    }
    let queue_format = config.message_queue_format_for(generation);
    info!(
        generation = %generation,
        setting = ?config.vantage6_generation,
        "serving vantage6 {generation} (database schema: {schema})"
    );
    let verifier = verifier_for(&config, generation).await?;
    let context = |metrics: &Metrics| {
        TasksContext::new(store.clone(), verifier.clone(), metrics.clone())
            .with_first_event_delay(config.first_event_delay)
            .with_event_budget(config.event_budget)
            .with_ping_write_interval(config.ping_write_interval)
            .with_generation(generation)
    };

    match config.rabbitmq_uri.clone() {
        None => {
            info!("no RabbitMQ configured: serving as a single instance");
            let metrics = Metrics::new();
            let ctx = context(&metrics);
            let (layer, io) = socketio_builder(&config, ctx.clone()).build_layer();
            tasks_ns::register::<LocalAdapter>(&io);
            let instance = Instance::new(layer, io, ctx, store, metrics, None);
            run(&config, instance, std::future::ready(())).await
        }
        Some(uri) => {
            let broker_err = |error| ServeError::Broker {
                uri: uri.to_string(),
                error,
            };
            let amqp = AmqpConfig::new(uri.clone());
            let first_pause = amqp.reconnect_min;
            let amqp = amqp.with_reconnect_backoff(first_pause, config.broker_reconnect_max);
            let ctr = AmqpAdapterCtr::connect_with_config(
                amqp,
                AdapterConfig::default().with_python_data_format(queue_format),
            )
            .await
            .map_err(broker_err)?;
            info!(uri = %uri, connected_to = %ctr.driver().current_uri(),
                vhost = ctr.driver().current_uri().vhost(), host_id = ctr.host_id(),
                reconnect_max = ?config.broker_reconnect_max,
                message_queue_format = %queue_format, "sharing rooms over RabbitMQ");
            let metrics = Metrics::with_collectors(vec![Box::new(BrokerCollector(ctr.clone()))]);
            let broker = ctr.clone();
            let broker_connected: BrokerConnected =
                Arc::new(move || broker.driver().is_connected());
            let ctx = context(&metrics);
            let (layer, io) = socketio_builder(&config, ctx.clone())
                .with_adapter::<AmqpAdapter<Emitter>>(ctr.clone())
                .build_layer();
            tasks_ns::register(&io).await.map_err(broker_err)?;
            // Announce our nodes; release a killed instance's (crate::cluster).
            let cluster = cluster::spawn(ctr.clone(), io.clone(), ctx.clone(), metrics.clone());
            // Last step of a graceful stop: delete our queue, close the connection.
            let close_broker = async move {
                for task in cluster {
                    task.abort();
                }
                ctr.close().await;
            };
            let instance = Instance::new(layer, io, ctx, store, metrics, Some(broker_connected));
            run(&config, instance, close_broker).await
        }
    }
}

/// The token verifier of `generation`: 4.x with `jwt_secret_key`; 5.x
/// with the realm key, fetched (or read) now.
pub async fn verifier_for(
    config: &Config,
    generation: Vantage6Generation,
) -> Result<Verifier, ServeError> {
    match generation {
        Vantage6Generation::V4 => Ok(TokenVerifier::new(&config.jwt_secret_key).into()),
        Vantage6Generation::V5 => {
            let (initial, refresh) = config
                .realm_key_sources()
                .ok_or_else(crate::config::realm_key_missing)?;
            info!(
                from = %initial,
                refresh_from = %refresh,
                refresh_interval = ?config.keycloak_key_refresh_interval,
                algorithms = ?config.jwt_decode_algorithms,
                leeway = ?config.jwt_decode_leeway,
                "vantage6 5.x tokens: Keycloak realm key"
            );
            let key = RealmKey::load(
                &initial,
                refresh,
                config.keycloak_key_refresh_interval,
                StartupRetry::default(),
            )
            .await?;
            Ok(KeycloakVerifier::new(
                Arc::new(key),
                config.jwt_decode_algorithms.clone(),
                config.jwt_decode_leeway,
            )
            .into())
        }
    }
}

/// The Socket.IO server as configured (path, timings, sizes) with the state
/// of the `/tasks` handlers; the caller picks the adapter, builds the layer
/// and registers the namespace.
pub fn socketio_builder(config: &Config, ctx: TasksContext) -> SocketIoBuilder {
    SocketIo::builder()
        .req_path(config.path.clone())
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_payload(config.max_payload)
        // The same limit over websocket: one Engine.IO packet is one message
        // there (tungstenite's own defaults are 64 MiB and 16 MiB).
        .ws_max_message_size(ws_limit(config.max_payload))
        .ws_max_frame_size(ws_limit(config.max_payload))
        .max_buffer_size(config.max_buffer_size)
        .ws_read_buffer_size(config.ws_read_buffer_size)
        .with_state(ctx)
}

/// `max_payload` as a websocket message and frame limit.
fn ws_limit(max_payload: u64) -> usize {
    usize::try_from(max_payload).unwrap_or(usize::MAX)
}

/// The whole HTTP service of an instance: the routes of [`http::router`],
/// the Socket.IO layer, and around it the affinity cookie (when
/// `affinity_cookie` is on), CORS and the origin check.
pub fn app<A: Adapter>(
    config: &Config,
    layer: SocketIoLayer<A>,
    metrics: Metrics,
    readiness: http::Readiness,
) -> axum::Router {
    let mut app = http::router(metrics, readiness)
        .layer(layer)
        // Outside the Socket.IO layer: the session keeps the request head it
        // sees (see detached_head).
        .layer(axum::middleware::map_request(detach));
    if config.affinity_cookie {
        // Outside the Socket.IO layer, which answers its requests itself;
        // inside CORS, so that preflight answers get no cookie.
        app = app.layer(AffinityCookieLayer::new(
            &config.path,
            &config.instance_name,
        ));
    }
    let app = app.layer(http::cors_layer(&config.cors_allowed_origins));
    http::with_origin_check(
        app,
        config.path.clone(),
        config.cors_allowed_origins.clone(),
    )
}

/// The largest request head accepted, all header lines together: what nginx in front of
/// vantage6 accepts by default (`large_client_header_buffers 4 8k`). hyper alone refuses more
/// than 100 headers, but accepts a single header of hundreds of KiB.
const MAX_HEADER_BYTES: usize = 32 * 1024;

async fn detach(req: axum::extract::Request) -> Result<axum::extract::Request, ::http::StatusCode> {
    let head: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if head > MAX_HEADER_BYTES {
        tracing::debug!(bytes = head, "request headers too large");
        return Err(::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    Ok(detached_head::detach_head(req))
}

/// What [`run`] serves: the Socket.IO layer and server over one adapter,
/// the handlers' context, and what the HTTP routes and the sweep read.
struct Instance<A: Adapter> {
    layer: SocketIoLayer<A>,
    io: SocketIo<A>,
    ctx: TasksContext,
    store: Store,
    metrics: Metrics,
    readiness: http::Readiness,
}

/// The broker's connection state, as [`http::Readiness`] reads it.
type BrokerConnected = Arc<dyn Fn() -> bool + Send + Sync>;

impl<A: Adapter> Instance<A> {
    /// `broker_connected`: `None` without a broker.
    fn new(
        layer: SocketIoLayer<A>,
        io: SocketIo<A>,
        ctx: TasksContext,
        store: Store,
        metrics: Metrics,
        broker_connected: Option<BrokerConnected>,
    ) -> Self {
        let readiness = http::Readiness {
            store: store.clone(),
            broker_connected,
        };
        Self {
            layer,
            io,
            ctx,
            store,
            metrics,
            readiness,
        }
    }
}

/// Mounts the Socket.IO layer on the HTTP router and serves until a signal;
/// `close_adapter` runs once every client's disconnect has been handled.
async fn run<A: Adapter>(
    config: &Config,
    instance: Instance<A>,
    close_adapter: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = instance.metrics;
    let app = app(config, instance.layer, metrics.clone(), instance.readiness);

    let sweep = sweeper::spawn(instance.store, metrics.clone(), config.sweep_interval);
    let trim = heap::spawn(config.heap_trim_threshold, metrics.clone());
    let tcp = listener::bind(config.listen).map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = tcp.local_addr().unwrap_or(config.listen);
    info!(
        %addr,
        path = %config.path,
        database = %config.database.display_redacted(),
        instance = %config.instance_name,
        affinity_cookie = config.affinity_cookie,
        "serving"
    );

    let limits = limits(config);
    // TCP_NODELAY and TCP_USER_TIMEOUT are set on every accepted socket there.
    listener::serve(
        tcp,
        app,
        limits,
        metrics,
        stop_signal(),
        drain(instance.io, instance.ctx, close_adapter),
    )
    .await;
    sweep.abort();
    if let Some(trim) = trim {
        trim.abort();
    }
    Ok(())
}

/// The listener's limits: `max_connections` as set, else from the
/// open-files limit, raised to its hard limit now.
fn limits(config: &Config) -> Limits {
    let open_files = listener::raise_open_files_limit();
    let max_connections = config
        .max_connections
        .unwrap_or_else(|| listener::default_max_connections(open_files));
    let usable = open_files.map(|n| n.saturating_sub(listener::FD_RESERVE));
    if usable.is_some_and(|usable| max_connections as u64 > usable) {
        warn!(
            max_connections,
            open_files_limit = open_files,
            reserve = listener::FD_RESERVE,
            "max_connections exceeds the open-files limit minus the reserve: \
             accepting may fail before the cap is reached"
        );
    }
    info!(
        max_connections,
        open_files_limit = open_files,
        header_read_timeout = ?config.http_header_read_timeout,
        "connection limits"
    );
    Limits {
        header_read_timeout: config.http_header_read_timeout,
        max_connections,
        tcp_user_timeout: config.tcp_user_timeout,
    }
}

/// How long a graceful stop waits for the clients' disconnects.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A graceful stop, once the listener is closed: disconnects every socket
/// and waits until their disconnects are handled (nodes marked offline,
/// `node-offline` sent, also to other instances), then closes the transports
/// and the adapter. The HTTP connections still open are ended after this.
async fn drain<A: Adapter>(
    io: SocketIo<A>,
    ctx: TasksContext,
    close_adapter: impl Future<Output = ()>,
) {
    // Our own disconnects first, while the namespace and the adapter work
    // (nodes marked offline, `node-offline` to every instance); then the
    // transports are closed, without a Socket.IO DISCONNECT, so that nodes
    // reconnect (through the proxy, to another instance): vantage6-node
    // 4.15.2 does not come back from a namespace DISCONNECT.
    let started = tokio::time::Instant::now();
    let told = ctx.end_sessions(&io);
    info!(
        sessions = told,
        "shutting down: ending the clients' sessions"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, ctx.sessions_ended())
        .await
        .is_err()
    {
        warn!(
            remaining = ctx.running_sessions(),
            "clients' disconnects not all handled within {DRAIN_TIMEOUT:?}"
        );
    }
    io.close().await;
    close_adapter.await;
    info!(took = ?started.elapsed(), sessions = told, "stopped: sessions ended, transports and broker closed");
}
