//! Assembles and runs one instance: database, token verifier, Socket.IO
//! layer with the `/tasks` namespace, HTTP routes, offline sweep, graceful
//! shutdown.

use std::time::Duration;

use socketioxide::{adapter::LocalAdapter, SocketIo};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{
    auth::TokenVerifier,
    config::Config,
    http,
    metrics::Metrics,
    store::{Store, StoreError},
    sweeper,
    tasks_ns::{self, TasksContext},
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened or is not a vantage6 database.
    #[error("database {url}: {source}")]
    Database {
        /// The database, password hidden.
        url: String,
        /// What went wrong.
        source: StoreError,
    },
    /// The listener could not be bound or failed.
    #[error("listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let store = Store::connect(&config.database)
        .await
        .map_err(|source| ServeError::Database {
            url: config.database.display_redacted(),
            source,
        })?;
    store
        .check_schema()
        .await
        .map_err(|source| ServeError::Database {
            url: config.database.display_redacted(),
            source,
        })?;
    if config.rabbitmq_uri.is_some() {
        warn!("a RabbitMQ URI is configured; this build serves a single instance without it");
    }
    let metrics = Metrics::new();
    let ctx = TasksContext::new(
        store.clone(),
        TokenVerifier::new(&config.jwt_secret_key),
        metrics.clone(),
    );

    let (layer, io) = SocketIo::builder()
        .req_path(config.path.clone())
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_payload(config.max_payload)
        .max_buffer_size(config.max_buffer_size)
        .with_state(ctx)
        .build_layer();
    tasks_ns::register::<LocalAdapter>(&io);

    let app = http::router(metrics.clone())
        .layer(layer)
        .layer(http::cors_layer(&config.cors_allowed_origins));
    let app = http::with_origin_check(
        app,
        config.path.clone(),
        config.cors_allowed_origins.clone(),
    );

    let sweep = sweeper::spawn(store, metrics, config.sweep_interval);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    info!(%addr, path = %config.path, database = %config.database.display_redacted(), "serving");

    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown(io))
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        });
    sweep.abort();
    result
}

/// Waits for SIGINT/SIGTERM, then disconnects every socket (running the
/// disconnect handlers, so nodes are marked offline) before the listener stops.
async fn shutdown<A: socketioxide::adapter::Adapter>(io: SocketIo<A>) {
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
    info!("shutting down: disconnecting clients");
    if tokio::time::timeout(Duration::from_secs(10), io.close())
        .await
        .is_err()
    {
        warn!("clients did not all disconnect within 10 s");
    }
}
