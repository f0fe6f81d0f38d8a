//! The HTTP side of the listener: `/health`, `/ready`, `/metrics`, CORS and the
//! origin check for the Socket.IO path. The Socket.IO service is mounted on
//! this router as a tower layer by [`crate::server`], so routes added here
//! never touch the socket code.

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use std::sync::Arc;

use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{config::CorsOrigins, metrics::Metrics, store::Store};

/// Whether the instance can do its work: the database answers and, when
/// one is configured, the broker connection is up.
#[derive(Clone)]
pub struct Readiness {
    /// The vantage6 database.
    pub store: Store,
    /// The broker's connection state; `None` without a broker.
    pub broker_connected: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// `/health` (the process serves), `/ready` (database and broker reachable:
/// 200, else 503 naming what is down) and `/metrics`.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { metrics, readiness })
}

async fn health() -> &'static str {
    "ok"
}

/// How long `/ready` waits for the database: a probe behind a dead
/// connection or an exhausted pool must answer, not hang until its own
/// timeout (the pool's is 10 s).
pub const READY_DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(700);

async fn ready(State(state): State<AppState>) -> Response {
    let mut down = Vec::new();
    match tokio::time::timeout(READY_DATABASE_TIMEOUT, state.readiness.store.writable()).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => down.push("database (read-only)"),
        Ok(Err(_)) => down.push("database"),
        Err(_) => down.push("database (no answer within 0.7 s)"),
    }
    if state
        .readiness
        .broker_connected
        .as_ref()
        .is_some_and(|connected| !connected())
    {
        down.push("broker");
    }
    if down.is_empty() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {} down", down.join(", ")),
        )
            .into_response()
    }
}

async fn render_metrics(State(AppState { metrics, .. }): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// CORS as Flask-SocketIO answers it: the request's origin is echoed (when
/// allowed) together with `Access-Control-Allow-Credentials: true`.
pub fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::mirror_request(),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
}

/// Adds the origin check to `router`: like python-engineio, a Socket.IO
/// request whose `Origin` is not allowed gets 400 instead of a session.
pub fn with_origin_check(router: Router, socket_path: String, origins: CorsOrigins) -> Router {
    let CorsOrigins::List(allowed) = origins else {
        return router;
    };
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let rejected = req.uri().path().starts_with(socket_path.as_str())
            && req
                .headers()
                .get(header::ORIGIN)
                .is_some_and(|o| !allowed.iter().any(|a| o.as_bytes() == a.as_bytes()));
        async move {
            if rejected {
                (StatusCode::BAD_REQUEST, "Not an accepted origin.").into_response()
            } else {
                next.run(req).await
            }
        }
    }))
}
