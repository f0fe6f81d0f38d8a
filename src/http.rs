//! The HTTP side of the listener: `/health`, `/metrics`, CORS and the
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
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{config::CorsOrigins, metrics::Metrics};

/// `/health` and `/metrics`.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

async fn health() -> &'static str {
    "ok"
}

async fn render_metrics(State(metrics): State<Metrics>) -> Response {
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
